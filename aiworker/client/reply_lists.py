"""How a client reads its reply lists so that no reply is lost when Redis stalls: a reply leaves
its list only after the client has read it. Pure code (commands to send, and what their replies
say), driven by every client's jobs (blocking, asyncio, Redis Cluster).

A BLPOP takes its reply off the list as Redis runs it. When Redis runs it late (a stall longer
than the client's socket timeout: a slow disk, a long script, ``CLIENT PAUSE``) the client has
given up on the connection by then, and the reply Redis pops goes to a closed socket: the job ran,
its entry is gone, and its answer is lost. So instead:

* a wait looks at the head of its list without taking it: ``BLMOVE key key LEFT LEFT`` moves the
  head to where it was (a no-op), blocking until there is one;
* a private list (one job's) is acknowledged an item at a time: each item read is removed by the
  next look (``LREM key 1 item``, which removes nothing when run twice), and the list itself is
  removed (``DEL``) once the wait is over, off the job's path: the blocking client sends it without
  waiting for the answer (``Wire.post``), the asyncio cluster client with the next job's round
  trip or on its own, the gateway after the job's reply (a lost one: the list expires after
  ``reply_ttl``, as every reply list does);
* a shared list (one reader for many jobs) is read in one round trip per batch - trim what was
  read last time, wait for a head, read the items after it (up to ``SharedListReader.batch`` in
  all) - and an answer lost on the way means the same items are read again: a reply read twice is
  dropped by the router (no job waits for it any more, or its job has it already).

``BLMOVE`` writes (a push), so a Redis at ``maxmemory`` that cannot evict refuses it (``OOM``),
while ``BLPOP``, ``LREM``, ``LTRIM`` and ``DEL`` only free memory and still run; and an ACL user
granted the requester rule of before (``+blpop``), or only part of this one, is refused one of
them (``NOPERM``). A wait that meets a refusal takes its replies with ``BLPOP`` alone, as before
(a shared reader for ``REFUSED_RETRY_S`` after Redis was full, for good after an ACL's refusal),
so its job is still answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoPermissionError, OutOfMemoryError

from aiworker.client import waiting

Command = tuple[Any, ...]

# How long a shared list's reader takes replies (BLPOP) after Redis refused BLMOVE as full (an ACL
# refusal lasts: it takes for as long as it reads).
REFUSED_RETRY_S = 1.0

log = logging.getLogger("aiworker.client")
_warned = False  # an ACL refusal is logged once per process


def peek(key: str, seconds: float | str) -> Command:
    """Wait up to ``seconds`` for the head of list ``key`` and read it, leaving it there."""
    return ("BLMOVE", key, key, "LEFT", "LEFT", seconds)


def take(key: str, seconds: float | str) -> Command:
    """Wait up to ``seconds`` for the head of list ``key`` and take it (see the module
    docstring: Redis full, or a rule without ``+blmove``)."""
    return ("BLPOP", key, seconds)


def refusal(replies: Sequence[Any]) -> Exception | None:
    """Redis' refusal of a way of reading among ``replies``: an ACL's (the requester rule before
    this way, or a part of it: warned once, see ``docs/security.md``) or a full Redis'."""
    for reply in replies:
        if isinstance(reply, NoPermissionError):
            global _warned
            if not _warned:
                _warned = True
                log.warning(
                    "Redis refused a command reading a reply list (%s): replies are taken with "
                    "BLPOP, which loses a reply when Redis runs it after the client gave up (a "
                    "stall); grant +blmove +lrem +lrange +ltrim (docs/security.md)",
                    reply,
                )
            return reply
        if isinstance(reply, OutOfMemoryError):
            return reply
    return None


def _head(reply: Any, taken: bool) -> Any:
    """A ``peek``'s (or ``take``'s) reply: the head (bytes), or None when none came; errors raise
    (an UNBLOCKED wait is one that timed out, see ``waiting.popped``)."""
    reply = waiting.popped(reply)
    if isinstance(reply, Exception):
        raise reply
    return reply[1] if taken and reply else reply


class PrivateList:
    """A private reply list as one wait reads it (see the module docstring)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._read: Any = None  # the item read last, to remove with the next look
        self._taking = False  # Redis refused a way of reading: BLPOP for the rest of the wait

    def look(self, seconds: float | str) -> list[Command]:
        """The commands of the next look at the list: the last item read removed, the head read."""
        if self._taking:
            return [take(self.key, seconds)]
        commands: list[Command] = [peek(self.key, seconds)]
        if self._read is not None:
            commands.insert(0, ("LREM", self.key, 1, self._read))
        return commands

    def looked(self, replies: Sequence[Any]) -> Any:
        """The item ``look``'s commands read (None: none came within the wait)."""
        if self._taking:
            return _head(replies[-1], taken=True)
        if refusal(replies) is not None:
            # the next looks take: the item read last, if the LREM was refused, comes again
            # (a notice read twice is dropped by the wait: it names the entry left behind)
            self._taking, self._read = True, None
            return None
        if len(replies) > 1:  # the LREM: an error raises, the item stays to be removed again
            if isinstance(replies[0], Exception):
                raise replies[0]
            self._read = None
        self._read = _head(replies[-1], taken=False)
        return self._read

    def done(self) -> Command:
        """The command that removes the list once the wait is over (a list of a reply or two:
        DEL frees it at once, and every requester rule grants it)."""
        return ("DEL", self.key)


class SharedListReader:
    """The one reader of a shared reply list (see the module docstring)."""

    def __init__(self, key: str, batch: int = 512) -> None:
        self.key = key
        self.batch = batch
        self._trim = 0  # items read last time, not yet trimmed
        self._taking_until = 0.0  # Redis refused a way of reading: BLPOP until then
        self._taking = False  # this round takes

    def round(self, seconds: float) -> list[Command]:
        """One round trip: trim what was read, wait for a head up to ``seconds``, read the items
        after it, up to a batch in all. (Redis runs a pipeline's commands after a blocking one
        once it is answered; the head is not sent twice.) Taking: a BLPOP alone."""
        self._taking = time.monotonic() < self._taking_until
        if self._taking:
            return [take(self.key, seconds)]
        commands: list[Command] = []
        if self._trim:
            commands.append(("LTRIM", self.key, self._trim, -1))
            self._trim = 0  # sent once: trimmed again, it would drop items nobody read
        return [*commands, peek(self.key, seconds), ("LRANGE", self.key, 1, self.batch - 1)]

    def read(self, replies: Sequence[Any]) -> list[bytes]:
        """The items ``round``'s commands read (an error reply raises)."""
        if self._taking:
            head = _head(replies[-1], taken=True)
            return [] if head is None else [head]
        refused = refusal(replies)
        if refused is not None:  # the next rounds take: items not trimmed come again (dropped)
            lasting = isinstance(refused, NoPermissionError)
            self._taking_until = float("inf") if lasting else time.monotonic() + REFUSED_RETRY_S
            return []
        if len(replies) > 2 and isinstance(replies[0], Exception):
            raise replies[0]
        head, after = _head(replies[-2], taken=False), replies[-1]
        if isinstance(after, Exception):
            raise after
        if head is None:  # what came after the wait ended is read by the next round
            return []
        items = [head, *after]
        self._trim = len(items)  # only this reader takes items off the list: they are these
        return items
