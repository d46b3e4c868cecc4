"""Completing entries on Redis Cluster: the one-script completion split by hash slot, with its
guarantee kept.

A Lua script touches one slot, and an entry's effects live in several: its outputs and reply (one
slot, by the key rule, ``protocol.slots``), its model's statistics, a dead-letter or forward
stream, and the queue itself. So each entry completes in steps, one per slot, each applied at most
once however often the entry is delivered:

1. the steps outside the outputs' slot - statistics in the model's slot (with the check that the
   model version the job ran from cached metadata is still the stored one), a dead letter or
   forward in its stream's slot: ``complete_once.lua`` checks everything that could fail (key
   types, aiworker's prefix, the ACL, the model version), then sets a done marker (``Keys.done``,
   in that slot, expiring after ``marker_ttl``) and writes - or, when the marker is already set,
   writes nothing: another delivery did this step;
2. the step in the slot of the outputs and the reply, the same way: the requester hears back only
   once the rest is written (AI.INFO counts a call its requester has heard about);
3. last, in the queue's slot, ``complete.lua`` acknowledges and deletes the entry (XACK, XDEL).

A refusal writes nothing more and leaves the entry pending, to be completed again with the error as
its reply (as on a single Redis). The one difference: outputs refused in step 2 (WRONGTYPE, NOPERM)
come after step 1 counted the run, so AI.INFO shows a call without its error.

A forward's notice names the id its forwarded entry got: when the forward is a step in another
slot, that step's row (or, for a redelivery, its done marker) says the id, and it is written into
the notice before the last step runs.

A worker killed between two steps leaves the entry pending; it is reclaimed and run again, the
steps already done find their markers, the rest are applied: one reply, one set of outputs,
statistics counted once. Two deliveries finishing at once race for each marker (one SET inside a
script, so one wins). An entry whose keys all live in the queue's slot completes in one
``complete.lua`` call, as on a single Redis. Steps of many entries in one slot share one script
call, and each round's calls go to their nodes in one round trip per node, so a completion costs
at most three round trips.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from redis.exceptions import NoPermissionError

from aiworker.protocol import replies
from aiworker.protocol.keys import CONSUMER_GROUP, key_slot
from aiworker.protocol.text import text
from aiworker.storage import lua
from aiworker.storage.cluster import ClusterWire
from aiworker.worker.complete import (
    COMPLETE,
    Completer,
    Connection,
    Finished,
    Result,
    Writes,
    _result,
    encode,
    spliced,
)

log = logging.getLogger("aiworker.worker")
COMPLETE_ONCE = lua.load("complete_once")

Step = tuple[int, Writes]  # (index of the entry in the completion, what this step writes)


class ClusterCompleter(Completer):
    """A ``Completer`` whose completions are split by hash slot (see the module docstring)."""

    def __init__(self, *args: Any, marker_ttl: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marker_ttl = marker_ttl

    def _run(self, conn: Connection, queue: str, items: Sequence[Finished]) -> list[Result]:
        return self._split_run(cast(ClusterWire, conn), queue, items)

    def _split_run(self, conn: ClusterWire, queue: str, items: Sequence[Finished]) -> list[Result]:
        queue_slot = key_slot(queue)
        at_queue: list[tuple[int, Writes]] = []  # what complete.lua runs in the queue's slot
        steps: dict[int, list[Writes]] = {}
        for n, item in enumerate(items):
            writes = self.writes_of(item, queue)
            split = self._split(queue, queue_slot, writes, item.entry_id)
            if split is None:
                at_queue.append((n, writes))
            else:
                steps[n] = split
        rows: dict[int, list[Any]] = {n: [] for n in steps}  # entry -> its steps' rows, in order
        first = [(n, step) for n, split in steps.items() for step in split[:-1]]
        for n, row in self._round(conn, first):
            rows[n].append(row)
        refused = {n for n, found in rows.items() if any(row[0] == -1 for row in found)}
        for n, split in steps.items():  # a forward notice in another slot than its record
            if split[-1].splice and n not in refused:
                _announce(split[-1], rows[n])
        last = [(n, split[-1]) for n, split in steps.items() if n not in refused]
        for n, row in self._round(conn, last):
            rows[n].append(row)
            if row[0] == -1:
                refused.add(n)
        # last: acknowledge and delete (entries whose every key lives here complete here whole)
        at_queue += [(n, Writes(items[n].entry_id)) for n in steps if n not in refused]
        results: list[Result | None] = [None] * len(items)
        if at_queue:
            keys, body = encode([queue], [writes for _n, writes in at_queue])
            head = [CONSUMER_GROUP, *self._head()]
            [reply] = conn.evalsha_many([(COMPLETE, keys, [*head, 0, *body])], self.wait)
            if isinstance(reply, Exception):
                raise reply
            for (n, _writes), row in zip(at_queue, reply, strict=True):
                if n not in steps:
                    results[n] = _result(row)
        for n, found in rows.items():
            results[n] = _combined(found)
        assert all(result is not None for result in results)
        return [result for result in results if result is not None]

    def _split(
        self, queue: str, queue_slot: int, writes: Writes, ident: str
    ) -> list[Writes] | None:
        """``writes`` as one step per hash slot, each with its done marker (named by
        ``ident``), the step with the outputs and reply last; None when every key lives in the
        queue's slot (one complete.lua does it all)."""
        groups: dict[int, Writes] = {}

        def part(key: str) -> Writes:
            return groups.setdefault(key_slot(key), Writes(writes.entry_id))

        for output in writes.outputs:
            part(output[0]).outputs.append(output)
        if writes.reply:
            step = part(writes.reply)
            step.reply, step.payload, step.splice = writes.reply, writes.payload, writes.splice
        for record in writes.records:
            part(record.stream).records.append(record)
        for stats in writes.stats:
            part(stats[0]).stats.append(stats)
        for expect in writes.expect:  # a cached model version: checked in the model's slot
            part(expect[0]).expect.append(expect)
        if set(groups) <= {queue_slot}:
            return None
        split = list(groups.values())[::-1]  # outputs/reply were grouped first: they go last
        for step in split:
            step.marker = self.keys.done(queue, ident, step.keys()[0])
        return split

    def _round(self, conn: ClusterWire, steps: Sequence[Step]) -> list[tuple[int, list[Any]]]:
        """Run ``steps`` with complete_once.lua, one call per slot, in one round trip per node;
        (entry index, result row) per step."""
        by_slot: dict[int, list[Step]] = {}
        for step in steps:
            by_slot.setdefault(key_slot(step[1].keys()[0]), []).append(step)
        head = [self.marker_ttl, *self._head()]
        calls = []
        for group in by_slot.values():
            keys, body = encode([], [writes for _n, writes in group])
            calls.append((COMPLETE_ONCE, keys, [*head, 0, *body]))
        found: list[tuple[int, list[Any]]] = []
        for group, call, reply in zip(
            by_slot.values(), calls, conn.evalsha_many(calls, self.wait), strict=True
        ):
            if isinstance(reply, Exception):
                reply = self._denied(conn, call, reply)
            found += [(n, list(row)) for (n, _writes), row in zip(group, reply, strict=True)]
        return found

    def _denied(
        self, conn: ClusterWire, call: tuple[lua.LuaScript, list[str], list[Any]], error: Any
    ) -> Any:
        """The ACL denied a declared key, so Redis refused the whole script: run it once more
        with the keys as arguments, so that its own check names the key and the other entries
        complete (as ``Completer._script`` does)."""
        if not isinstance(error, NoPermissionError):
            raise error
        script, keys, args = call
        head, body = args[:4], args[5:]
        return conn.evalsha(script, keys[:1], [*head, len(keys) - 1, *keys[1:], *body])


def _announce(step: Writes, rows: list[list[Any]]) -> None:
    """Write into ``step``'s forward notice the id its entry's forward got in an earlier step
    (the row of that step says it, or the done marker of a delivery that did it before)."""
    if step.records:
        return  # the forward is in this step's slot: the script writes the id itself
    ids = [text(row[5]) for row in rows if len(row) > 5 and "-" in text(row[5])]
    notice = replies.decode_reply(step.payload)
    if ids or notice is None or notice.to is None:
        step.payload, step.splice = spliced(step.payload, step.splice, ids[-1] if ids else ""), 0
        return
    # the marker that held the id was lost (a failover's window): say so instead of a notice
    message = (
        f"the job was forwarded to {notice.to[0]}, but the id of its forwarded entry was lost with "
        "a Redis failover: it may still run there, and its reply cannot reach you"
    )
    log.warning("entry %s: %s", step.entry_id, message)
    failed = replies.Reply(replies.Status.ERROR, notice.queue, notice.id, message)
    step.payload, step.splice = failed.encode(), 0


def _combined(rows: list[list[Any]]) -> Result:
    """An entry's result from its steps' rows, in order: refused if one was; else applied (or a
    duplicate) as its last step - the one with the reply - was."""
    refused = next((_result(row) for row in rows if row[0] == -1), None)
    if refused is not None:
        return refused
    last = _result(rows[-1])
    reply = next((int(row[1]) for row in rows if int(row[1]) != 0), 0)
    counted = [int(row[2]) for row in rows if int(row[2]) != 0]
    return Result(
        applied=last.applied,
        duplicate=last.duplicate,
        reply=reply,
        stats=min(counted) if counted else 0,
    )
