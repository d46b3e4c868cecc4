"""Commands about the whole keyspace or every node, on every master of a real Redis Cluster.

The gateway is one node owning every slot to its clients, so a client cannot reach the other
masters itself: a keyless command that means "all keys" (DBSIZE, KEYS, SCAN, RANDOMKEY, FLUSHALL,
FLUSHDB) or "this node" for something every master must hold (SCRIPT LOAD, FUNCTION LOAD) goes to
every master, and their replies make the one reply a single node gives. ``plan`` says where each
goes and how the replies are merged; ``FanOut`` sends it and fills the command's one reply slot
once every master answered, so replies stay in order with the client's other commands.

WAIT and WAITAOF go to every master the client has a connection to (its writes may be on any of
them) and answer the least count. SCAN walks the masters one after the other: the cursor the
client sees holds the master's index in its low ``MASTER_BITS`` bits and that master's own
cursor above them (0, 0 is 0: a scan starts and ends at 0 as on one node).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

from redis._parsers.base import BaseParser

from aiworker.protocol.resp import BareErrorReply

from . import resp
from .resp import ErrorReply, Status
from .translate import error_reply
from .upstream import Slot, Upstream

Node = tuple[str, int]  # (as ``cluster.Node``)
Merge = Callable[[list[Any]], Any]  # the masters' decoded replies -> the client's reply value
Part = tuple[Node, list[bytes]]  # a master and the command it gets

OK = Status("OK")
# A cluster has at most about a thousand masters (Redis' advised limit): 10 bits index them.
MASTER_BITS = 10


def _error(exc: Exception) -> ErrorReply:
    """The error line Redis sent, again (redis-py keeps the codes it knows apart from the
    text); a lost connection's as the gateway words it."""
    code = getattr(exc, "status_code", None)
    if code in BaseParser.EXCEPTION_CLASSES:
        return BareErrorReply(f"{code} {exc}")
    if code:  # a code redis-py does not know stays in the text
        return BareErrorReply(str(exc))
    return error_reply(exc)


def _failed(replies: list[Any]) -> ErrorReply | None:
    """The first master's error, if one refused (NOPERM, a wrong argument ...)."""
    for reply in replies:
        if isinstance(reply, Exception):
            return _error(reply)
    return None


def _all_ok(replies: list[Any]) -> Any:
    return _failed(replies) or OK


def _same(replies: list[Any]) -> Any:
    """SCRIPT LOAD's SHA, FUNCTION LOAD's library name: the same from every master."""
    return _failed(replies) or replies[0]


def _sum(replies: list[Any]) -> Any:
    return _failed(replies) or sum(replies)


def _joined(replies: list[Any]) -> Any:
    return _failed(replies) or [item for reply in replies for item in reply]


def _any_key(replies: list[Any]) -> Any:
    """RANDOMKEY: one of the masters that have keys, picked at random (nil when none has)."""
    found = [reply for reply in replies if reply is not None]
    return _failed(replies) or (random.choice(found) if found else None)


def _least(replies: list[Any]) -> Any:
    """What holds on every master: WAIT's smallest count, SCRIPT EXISTS' and WAITAOF's
    smallest at each position (a script exists only where every master has it)."""
    failed = _failed(replies)
    if failed is not None:
        return failed
    if isinstance(replies[0], list):
        return [min(values) for values in zip(*replies, strict=True)]
    return min(replies)


def _killed(replies: list[Any]) -> Any:
    """SCRIPT KILL, FUNCTION KILL: OK from the master that ran one; else an error other than
    the idle masters' NOTBUSY if there is one (UNKILLABLE)."""
    if any(not isinstance(reply, Exception) for reply in replies):
        return OK
    errors = [_error(reply) for reply in replies]
    return next((e for e in errors if not e.startswith("NOTBUSY")), errors[0])


_EVERY_MASTER: dict[bytes, Merge] = {
    b"FLUSHALL": _all_ok,
    b"FLUSHDB": _all_ok,
    b"DBSIZE": _sum,
    b"KEYS": _joined,
    b"RANDOMKEY": _any_key,
}
_SUBCOMMANDS: dict[bytes, dict[bytes, Merge]] = {
    b"SCRIPT": {b"LOAD": _same, b"FLUSH": _all_ok, b"EXISTS": _least, b"KILL": _killed},
    b"FUNCTION": {
        b"LOAD": _same,
        b"DELETE": _all_ok,
        b"FLUSH": _all_ok,
        b"RESTORE": _all_ok,
        b"KILL": _killed,
    },
}
_WHERE_WRITTEN = {b"WAIT", b"WAITAOF"}
# The names the router looks up (one set lookup; the rest only for these).
FANNED_OUT = frozenset({*_EVERY_MASTER, *_SUBCOMMANDS, *_WHERE_WRITTEN, b"SCAN"})


def plan(
    args: list[bytes], masters: list[Node], used: list[Node]
) -> tuple[list[Part], Merge] | None:
    """Where a command of ``FANNED_OUT`` goes (``masters``: every master, the first one where
    keyless commands go; ``used``: those the client has a connection to) and how the replies
    are merged; None: it goes where keyless commands go, as any other (SCRIPT DEBUG ...)."""
    name = args[0].upper()
    merge = _EVERY_MASTER.get(name)
    if merge is None and name in _SUBCOMMANDS and len(args) > 1:
        merge = _SUBCOMMANDS[name].get(args[1].upper())
    if merge is not None:
        return [(node, args) for node in masters], merge
    if name in _WHERE_WRITTEN:
        return [(node, args) for node in used or masters[:1]], _least
    if name == b"SCAN" and len(args) > 1 and args[1].isdigit():
        return _scan(args, masters)
    return None  # (a SCAN cursor that is no number: the first master's error)


def _scan(args: list[bytes], masters: list[Node]) -> tuple[list[Part], Merge]:
    """One step of a SCAN walking the masters in turn (see the module docstring)."""
    cursor = int(args[1])
    # a cursor past the masters there are (some went since it was given): the last one's, which
    # ends its walk at 0 wherever it starts
    index = min(cursor & ((1 << MASTER_BITS) - 1), len(masters) - 1)
    command = [args[0], b"%d" % (cursor >> MASTER_BITS), *args[2:]]

    def merge(replies: list[Any]) -> Any:
        failed = _failed(replies)
        if failed is not None:
            return failed
        own, keys = replies[0]
        if int(own):
            after = int(own) << MASTER_BITS | index
        else:  # this master is done: the next one from its start, or the end
            after = index + 1 if index + 1 < len(masters) else 0
        return [b"%d" % after, keys]

    return [(masters[index], command)], merge


class FanOut:
    """A command sent to several masters, standing where its one connection would
    (``ClusterRouter.route``): the session sends it with its reply slot, and the slot is
    filled once every master answered, as one reply from Redis (``on_reply``)."""

    def __init__(
        self,
        parts: list[tuple[Upstream, list[bytes]]],
        merge: Merge,
        on_reply: Callable[[Upstream, Slot, bytes], None],
    ) -> None:
        self.parts = parts
        self.merge = merge
        self.on_reply = on_reply  # ``Session.on_reply``
        self.replies: list[Any] = [None] * len(parts)
        self.left = len(parts)
        self.resp3 = False

    def send(self, args: list[bytes], slot: Slot) -> None:
        """Send each master its command (``args``, the client's, as ``plan`` made it for it)."""
        for n, (upstream, command) in enumerate(self.parts):
            upstream.send(command, Slot(internal=partial(self._answered, n, upstream, slot)))

    def _answered(self, n: int, upstream: Upstream, slot: Slot, reply: Any) -> None:
        self.replies[n] = reply
        if n == 0:
            # the protocol at the command's place in the client's stream: a HELLO goes to the
            # first master, where it is answered in order with this (RANDOMKEY's nil is the
            # one reply here that differs between the two; the session's may have changed
            # since, when a HELLO after it was answered before the other masters answered)
            self.resp3 = upstream.resp3
        self.left -= 1
        if not self.left:
            self.on_reply(upstream, slot, resp.encode(self.merge(self.replies), self.resp3))
