"""Job queues seen from a client: adding an entry within the queue's length limit, and taking back
an entry that no worker has read.

A device queue may be bounded (the workers' ``max_queue_length``): its workers publish the limit
next to each stream they serve (``Keys.queue_limit``, with every heartbeat), and an entry is added
by ``queue_enqueue.lua``, which refuses it (``QUEUEFULL``) when the stream is full, in the same
atomic step as the XADD. A queue without a limit takes a plain XADD (a script costs Redis about
three times an XADD): an ``Enqueuer`` reads the limit along with an XADD, in the same round trip,
at most once a second, and uses the script while a limit is in force. So a limit an operator sets
applies to a running client within about a second.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.text import text
from aiworker.storage import lua
from aiworker.storage.plans import Plan

# How often a client reads a queue's limit again (with an XADD, in the same round trip).
LIMIT_READ_EVERY_S = 1.0
_WITHDRAW = lua.load("queue_withdraw")
_ENQUEUE = lua.load("queue_enqueue")
FULL = "QUEUEFULL"


def withdraw_plan(queue_key: str, entry_id: str) -> Plan[int]:
    """Remove the entry if no worker has read it, atomically (``queue_withdraw.lua``): 1 removed
    (it will never run), 0 a worker read it, -1 it is no longer in the stream."""
    reply = yield from _WITHDRAW.plan([queue_key], [entry_id, CONSUMER_GROUP])
    if isinstance(reply, Exception):
        raise reply
    return int(reply)


def enqueue_command(keys: Keys, stream: str, fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """The command that adds an entry within the queue's limit (EVAL: no NOSCRIPT to handle, and
    it can sit in a MULTI)."""
    flat = [item for pair in fields.items() for item in pair]
    return ("EVAL", _ENQUEUE.source, 2, stream, keys.queue_limit(stream), *flat)


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the enqueue script's refusal of a full queue."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(FULL)


def full_counts(exc: BaseException) -> tuple[int, int]:
    """(entries in the stream, limit) of a ``QUEUEFULL`` refusal."""
    words = str(exc).split()
    try:
        return int(words[1]), int(words[2])
    except (IndexError, ValueError):
        return 0, 0


class Enqueuer:
    """Adds entries for one client: a plain XADD while the stream's limit was 0 when last read,
    else the checking script. The limit is read again with an entry's XADD, in the same round
    trip, once ``LIMIT_READ_EVERY_S`` has passed (see the module docstring). Thread-safe enough:
    a race only reads a limit twice."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self._limits: dict[str, tuple[int, float]] = {}  # stream -> (limit, when read)

    def limited(self, stream: str) -> bool:
        """Whether the next entry for ``stream`` goes through the checking script (its limit is
        unknown yet, or in force)."""
        return self._limits.get(stream, (1, 0.0))[0] > 0

    def commands(self, stream: str, fields: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The commands for one entry: its XADD (or the script), and a read of the limit when it
        is due."""
        if self.limited(stream):
            add = enqueue_command(self.keys, stream, fields)
        else:
            add = ("XADD", stream, "*", *[item for pair in fields.items() for item in pair])
        _limit, read = self._limits.get(stream, (1, 0.0))
        if time.monotonic() - read < LIMIT_READ_EVERY_S:
            return [add]
        return [add, ("GET", self.keys.queue_limit(stream))]

    def entry_id(self, stream: str, replies: Sequence[Any]) -> str:
        """The id from the replies to ``commands`` (raising the XADD's error, a full queue's
        ``QUEUEFULL`` among them), noting the limit if it was read."""
        added = replies[0]
        if len(replies) > 1 and not isinstance(replies[1], Exception):
            try:
                limit = int(replies[1] or 0)
            except ValueError:
                limit = 1  # not a number a worker wrote: let the script judge
            self._limits[stream] = (limit, time.monotonic())
        if isinstance(added, Exception):
            raise added
        return text(added)
