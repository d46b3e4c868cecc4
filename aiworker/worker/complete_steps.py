"""A completion's writes, one hash slot at a time: the one path that applies them, on a single
Redis (one slot) and on Redis Cluster alike.

A Lua script touches one slot, and an entry's effects may live in several: its outputs and reply
(one slot, by the key rule, ``protocol.slots``), its model's statistics, a dead-letter or forward
stream, and the queue itself. So the writes are grouped by slot (``JobConnection.slot``; always 0
on a single Redis). An entry whose keys all share the queue's slot - every entry on a single
Redis - completes in one ``complete.lua`` call there, which acknowledges it first (XACK is 1 for
exactly one delivery) and writes everything, atomically. Any other entry completes in steps, one
per slot, each applied at most once however often the entry is delivered:

0. when the worker cannot tell from its own clock that it still holds the entry (it took the
   entry more than half a visibility timeout ago: another worker may have reclaimed it),
   ``held_by.lua`` in the queue's slot checks that the entry is still pending for one of this
   worker's consumers and renews its lease; if not, nothing is written (a stalled worker must not
   write stale outputs over newer ones once the done markers below have expired);
1. the steps that may refuse the entry, outside the outputs' slot - the check that a model version
   the job ran from cached metadata is still the stored one (a single Redis caches metadata; a
   cluster's read fetches it every time, so its jobs carry no such check), a dead letter or
   forward in its stream's slot: ``complete_once.lua`` checks everything that could fail (key
   types, aiworker's prefix, the ACL, the model version), then sets a done marker
   (``Keys.done``, in that slot, named by the queue and the id Redis gave the entry - nothing a
   requester chose - and expiring after ``marker_ttl``) and writes; when the marker is already
   set, it writes nothing: another delivery did this step;
2. the statistics in the model's slot, and the step in the slot of the outputs and the reply, the
   same way, in one round trip: the statistics are sent to their node first (on their way before
   the reply is), and refuse nothing (a denied marker leaves the call uncounted, as a denied
   HINCRBY does);
3. in the queue's slot, ``complete.lua`` acknowledges and deletes the entry. It is sent in the
   round trip of step 2, after it (the nodes of step 2 are sent to first): a worker killed while
   it sends leaves the entry pending. With ``wait_replicas`` it is a round trip of its own, sent
   once step 2's writes reached the replicas; so it is while a step's slot is being resharded
   (a TRYAGAIN refusing the step must leave the entry pending, to run again).

A refusal in step 1 writes nothing more and leaves the entry pending, to be completed again with
the error as its reply. A refusal in step 2 (outputs of another type, NOPERM; Redis full, whose
error answer goes by ``ANSWER_ONCE``, allowed past ``maxmemory``) comes with the
entry acknowledged already, and the completion answers the error at once (a worker killed right
then leaves that requester without an answer; it is told to retry); outputs refused there come
with the run counted, so AI.INFO shows a call without its error. So does a master lost
during step 2's round trip: the entry may be acknowledged with its reply unwritten, as a master
lost before it replicated a reply loses it (README "Failover"; ``wait_replicas`` closes both).
A worker killed between two steps leaves the entry pending; it is reclaimed and run again, the
steps already done find their markers, the rest are applied. Steps of many entries in one slot
share one script call, entries of several streams (queue partitions) complete together, and each
round's calls go to their nodes in one round trip per node: a job completion split over slots
costs one round trip (two with a forward or a dead letter, one more with the check of step 0),
as on a single Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from aiworker.protocol import replies
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.text import text
from aiworker.storage import lua
from aiworker.storage.cluster import SlotMigrating
from aiworker.storage.plans import by_slot
from aiworker.storage.wire import JobConnection

log = logging.getLogger("aiworker.worker")
COMPLETE = lua.load("complete")
COMPLETE_ONCE = lua.load("complete_once")
# the same for steps that only answer an error (Redis full): allowed past ``maxmemory``, as the
# heartbeat is, so that the requester is answered when the entry was acknowledged already
ANSWER_ONCE = lua.load("complete_once", flags="allow-oom")
HELD_BY = lua.load("held_by")
# Rounds tried (each waiting out TRYAGAIN for up to ``cluster.TRYAGAIN_WAIT_S``) for entries
# acknowledged in the round trip whose steps a resharding refused.
ACKED_RETRIES = 6
# How long a node whose WAIT fell short of ``wait_replicas`` is asked only for the replicas it
# reached (``Replicas``).
SHORT_RECHECK_S = 5.0


@dataclass(frozen=True)
class Record:
    """A stream entry a completion appends (a forward to another queue, a dead letter)."""

    stream: str
    fields: Mapping[Any, Any]
    maxlen: int = 0


@dataclass
class Writes:
    """What completing one entry writes (``Completer.writes_of``), before it is encoded for the
    completion scripts (``encode``)."""

    entry_id: str
    reply: str | None = None
    payload: bytes = b""
    # > 0: the payload is a forward notice; the id the entry's last stream record gets goes after
    # this many of its bytes (replies.forward_notice)
    splice: int = 0
    outputs: list[tuple[str, int, Mapping[str, Any]]] = field(default_factory=list)
    # (statistics key, the model or script it counts for or "", amounts)
    stats: list[tuple[str, str, tuple[int, int, int, int]]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    expect: list[tuple[str, bytes]] = field(default_factory=list)
    marker: str | None = None  # complete_once.lua: the step's done marker, sent as the entry id
    # output key -> the stage key its fields are written to in the completion's MULTI
    stages: dict[str, str] = field(default_factory=dict)
    slot: int = 0  # a step's hash slot, and a key in it (routes its call)
    anchor: str = ""
    queue: str = ""  # the stream the entry was read from


def encode(head: list[str], entries: Sequence[Writes]) -> tuple[list[str], list[Any]]:
    """KEYS (``head`` first, then every key written, each once) and the entries' part of ARGV for
    complete.lua / complete_once.lua (see complete_parts.lua)."""
    keys = list(head)
    index = {key: n + 1 for n, key in enumerate(keys)}

    def ref(key: str) -> int:
        if key not in index:
            keys.append(key)
            index[key] = len(keys)
        return index[key]

    body: list[Any] = [len(entries)]
    for entry in entries:
        entry_id: Any = ref(entry.marker) if entry.marker else entry.entry_id
        reply_ref = ref(entry.reply) if entry.reply else 0
        body += [entry_id, reply_ref, entry.payload, entry.splice]
        body += [len(entry.outputs), len(entry.stats), len(entry.records), len(entry.expect)]
        for key, ttl, fields in entry.outputs:
            stage = entry.stages.get(key)
            if stage is not None:  # written by a plain HSET: only renamed into place here
                body += [ref(key), ttl, ref(stage), 0]
                continue
            body += [ref(key), ttl, 0, 2 * len(fields)]
            for name, value in fields.items():
                body += [name, value]
        for key, owner, values in entry.stats:
            body += [ref(key), ref(owner) if owner else 0, *values]
        for stream in entry.records:
            body += [ref(stream.stream), stream.maxlen, 2 * len(stream.fields)]
            for name, value in stream.fields.items():
                body += [name, value]
        for key, digest in entry.expect:
            body += [ref(key), digest]
    return keys, body


@dataclass(frozen=True)
class Result:
    """What completing one entry did."""

    applied: bool  # this delivery completed the entry: its writes happened
    duplicate: bool = False  # another delivery had completed it (or holds it): nothing written
    # "WRONGTYPE" | "NOPERM" | "PREFIX" | "STREAM" (answered with that error) | "STALE" (a model
    # it ran was stored anew meanwhile: the caller runs it again) | "OOM" (Redis full: answered
    # with its refusal): nothing written, still pending (acknowledged already, if completed in
    # steps)
    refused: str = ""
    key: str = ""  # the key refused
    reply: int = 0  # 1 pushed, 0 none, -1 dropped (the reply key is not a list, or denied)
    stats: int = 0  # 1 counted, 0 none, -1 counted after repairing its hash, -2 denied


def row_result(row: Sequence[Any]) -> Result:
    """A completion script's row for one entry: {code, reply, stats, reason, key, added} (added:
    the id a stream record got, if any)."""
    code, reply, stats, reason, key = row[:5]
    return Result(
        applied=code == 1,
        duplicate=code == 0,
        refused=text(reason) if code == -1 else "",
        key=text(key),
        reply=int(reply),
        stats=int(stats),
    )


Step = tuple[int, Writes]  # (index of the entry in the completion, what this step writes)
# A call Redis refused for want of memory wrote nothing (a script is refused before its first
# write, a transaction whole): the row of each entry it carried.
OOM_ROW = (-1, 0, 0, "OOM", "")


def _refused_for_oom(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.OutOfMemoryError)


class Steps:
    """Applies completions slot by slot (see the module docstring) for one worker process."""

    def __init__(
        self,
        keys: Keys,
        owner: str,
        marker_ttl: int,
        wait: tuple[int, int] | None = None,
    ) -> None:
        self.keys = keys
        self.owner = owner  # the prefix of this worker's consumer names (``host:pid:``)
        self.marker_ttl = marker_ttl
        self.wait = wait  # (replicas, timeout ms): WAIT after each step
        self.replicas = Replicas(wait[0] if wait else 0)

    def run(
        self,
        conn: JobConnection,
        writes: Sequence[Writes],
        head: list[Any],
        leased: Callable[[str, str], bool],
        answering: bool = False,
    ) -> list[Result]:
        """Apply ``writes`` (one per entry, each of its own stream: ``Writes.queue``); ``head``
        is ARGV[2..4] of the scripts (complete_parts.lua); ``leased(queue, entry_id)``: the
        worker's clock says it still holds the entry (asked only of entries completed in
        steps). ``answering``: the writes only answer an error (no outputs): their steps run
        past ``maxmemory``."""
        if conn.one_slot:  # a single Redis
            return self._whole(conn, writes, head)
        splits = [self._split(conn, entry) for entry in writes]
        if not any(splits):  # every key in its queue's slot
            return self._whole(conn, writes, head)
        results: list[Result | None] = [None] * len(writes)
        steps = {n: split for n, split in enumerate(splits) if split is not None}
        unsure = [n for n in steps if not leased(writes[n].queue, writes[n].entry_id)]
        if unsure:
            held = self._still_held(conn, [writes[n] for n in unsure])
            for n, mine in zip(unsure, held, strict=True):
                if not mine:  # completed, or reclaimed by another worker: not ours to write
                    results[n] = Result(applied=False, duplicate=True)
                    del steps[n]
        rows: dict[int, list[Any]] = {n: [] for n in steps}  # entry -> its steps' rows, in order
        first = [
            (n, step) for n, split in steps.items() for step in split[:-1] if _may_refuse(step)
        ]
        for (n, _step), row in zip(first, self._round(conn, first, head)[0], strict=True):
            rows[n].append(row)
        refused = {n for n, found in rows.items() if any(row[0] == -1 for row in found)}
        for n, split in steps.items():  # a forward notice in another slot than its record
            if split[-1].splice and n not in refused:
                _announce(split[-1], rows[n])
        # statistics alone cannot refuse an entry: counted in the round of the reply, sent first
        counts = [
            (n, step)
            for n, split in steps.items()
            if n not in refused
            for step in split[:-1]
            if not _may_refuse(step)
        ]
        last = counts + [(n, split[-1]) for n, split in steps.items() if n not in refused]
        # the acknowledgements, one call per queue (entries whose every key lives in their
        # queue's slot complete there whole), in the round of the last steps unless each step
        # must reach replicas first
        at_queue = [
            (n, Writes(entry.entry_id, queue=entry.queue) if n in steps else entry)
            for n, entry in enumerate(writes)
            if results[n] is None and n not in refused
        ]
        groups, acks = self._acks([entry for _n, entry in at_queue], head)
        step_script = ANSWER_ONCE if answering else COMPLETE_ONCE
        found, acked = self._last_round(conn, last, head, acks, step_script)
        for position, ((n, _step), row) in enumerate(zip(last, found, strict=True)):
            if position < len(counts) and row[0] == -1:  # not counted (its marker was denied)
                log.warning("entry %s: statistics not counted: %s", writes[n].entry_id, row[3])
                row = [1, 0, -2, "", ""]
            rows[n].append(row)
        for group, reply in zip(groups, acked, strict=True):
            if _refused_for_oom(reply):  # whole entries: nothing written or acknowledged
                reply = [OOM_ROW] * len(group)
            for i, row in zip(group, reply, strict=True):
                n = at_queue[i][0]
                if n not in steps:
                    results[n] = row_result(row)
        for n, found_rows in rows.items():
            results[n] = _combined(found_rows)
        return [result if result is not None else Result(applied=False) for result in results]

    def _last_round(
        self,
        conn: JobConnection,
        last: Sequence[Step],
        head: list[Any],
        acks: Sequence[lua.Call],
        script: lua.LuaScript,
    ) -> tuple[list[list[Any]], list[Any]]:
        """The last steps and the acknowledgements: in one round trip, or the acknowledgements
        after the steps (``wait_replicas``; a step in a slot being resharded, whose TRYAGAIN
        must leave its entry pending)."""
        if self.wait is not None or any(conn.migrating(step.slot) for _n, step in last):
            found, _none = self._round(conn, last, head, script=script)
            return found, self._round(conn, [], head, acks)[1]
        try:
            return self._round(conn, last, head, acks, script)
        except SlotMigrating:
            # a resharding met first here, after the acknowledgements ran: those entries are
            # this worker's alone to finish (done markers keep the steps once-only, and an
            # entry acknowledged already is not acknowledged twice)
            for _ in range(ACKED_RETRIES - 1):
                try:
                    return self._round(conn, last, head, acks, script)
                except SlotMigrating as exc:
                    log.warning("completing %d entries: %s", len(last), exc)
            return self._round(conn, last, head, acks, script)

    def _whole(
        self, conn: JobConnection, writes: Sequence[Writes], head: list[Any]
    ) -> list[Result]:
        """Entries whose keys all live in their queue's slot: one complete.lua call per queue,
        which acknowledges each entry first and writes all of it, atomically; every queue in
        one round trip (per node)."""
        groups, calls = self._acks(writes, head)
        replies = lua.run(conn, calls)
        if self.wait is not None:
            self._wait_replicas(conn, [call.route for call in calls])
        results: list[Result] = [Result(applied=False)] * len(writes)
        for group, reply in zip(groups, replies, strict=True):
            if _refused_for_oom(reply):  # this queue's entries only: the others' went through
                reply = [OOM_ROW] * len(group)
            elif isinstance(reply, Exception):
                raise reply
            for n, row in zip(group, reply, strict=True):
                results[n] = row_result(row)
        return results

    def _acks(
        self, writes: Sequence[Writes], head: list[Any]
    ) -> tuple[list[list[int]], list[lua.Call]]:
        """complete.lua for ``writes``, one call per queue: the positions each call serves."""
        groups = _by_queue(writes)
        calls = []
        for queue, group in groups.items():
            entries = [writes[n] for n in group]
            keys, body = encode([queue], entries)
            args = [CONSUMER_GROUP, *head, *body]
            calls.append(lua.Call(COMPLETE, keys, args, stages=_stages(entries)))
        return list(groups.values()), calls

    def _split(self, conn: JobConnection, writes: Writes) -> list[Writes] | None:
        """``writes`` as one step per hash slot, each with its done marker, the step with the
        outputs and reply last; None when every key lives in the queue's slot."""
        queue, entry_id, slot = writes.queue, writes.entry_id, conn.slot
        groups: dict[int, Writes] = {}

        def part(key: str) -> Writes:
            at = slot(key)
            found = groups.get(at)
            if found is None:
                marker = self.keys.done(queue, entry_id, key)
                found = groups[at] = Writes(
                    entry_id, marker=marker, slot=at, anchor=key, queue=queue
                )
            return found

        for output in writes.outputs:
            step = part(output[0])
            step.outputs.append(output)
            if output[0] in writes.stages:
                step.stages[output[0]] = writes.stages[output[0]]
        if writes.reply:
            step = part(writes.reply)
            step.reply, step.payload, step.splice = writes.reply, writes.payload, writes.splice
        for stats in writes.stats:
            part(stats[0]).stats.append(stats)
        for record in writes.records:
            part(record.stream).records.append(record)
        for expect in writes.expect:  # a cached model version: checked in the model's slot
            part(expect[0]).expect.append(expect)
        if not groups or (len(groups) == 1 and slot(queue) in groups):
            return None  # every key in the queue's slot
        return list(groups.values())[::-1]  # outputs/reply were grouped first: they go last

    def _still_held(self, conn: JobConnection, writes: Sequence[Writes]) -> list[bool]:
        """Whether each entry is still pending for one of this worker's consumers (one
        held_by.lua call per queue, one round trip)."""
        groups = _by_queue(writes)
        calls = [
            lua.Call(
                HELD_BY, [queue], [CONSUMER_GROUP, self.owner, *(writes[n].entry_id for n in group)]
            )
            for queue, group in groups.items()
        ]
        held = [False] * len(writes)
        for group, reply in zip(groups.values(), lua.run(conn, calls), strict=True):
            if isinstance(reply, Exception):
                raise reply
            for n, found in zip(group, reply, strict=True):
                held[n] = int(found) == 1
        return held

    def _round(
        self,
        conn: JobConnection,
        steps: Sequence[Step],
        head: list[Any],
        acks: Sequence[lua.Call] = (),
        script: lua.LuaScript = COMPLETE_ONCE,
    ) -> tuple[list[list[Any]], list[Any]]:
        """Run ``steps`` with ``script`` (complete_once.lua), one call per slot, then ``acks`` (complete.lua
        in each queue's slot), all in one round trip per node (each node gets its calls in that
        order, and the nodes of the steps are sent to first); the result row of each step, in
        order, and the acknowledgements' replies."""
        groups = by_slot([step.slot for _n, step in steps], int) if steps else []  # slots known
        calls = []
        for group in groups:
            entries = [steps[i][1] for i in group]
            keys, body = encode([], entries)
            args = [self.marker_ttl, *head, *body]
            calls.append(lua.Call(script, keys, args, entries[0].anchor, _stages(entries)))
        calls += acks
        if not calls:
            return [], []
        replies = lua.run(conn, calls)
        if self.wait is not None:
            self._wait_replicas(conn, [call.route for call in calls])
        for reply in replies:
            if isinstance(reply, Exception) and not _refused_for_oom(reply):
                raise reply
        rows: list[list[Any]] = [[] for _step in steps]
        for group, reply in zip(groups, replies, strict=False):
            if _refused_for_oom(reply):
                reply = [OOM_ROW] * len(group)
            for i, row in zip(group, reply, strict=True):
                rows[i] = list(row)
        return rows, replies[len(groups) :]

    def _wait_replicas(self, conn: JobConnection, keys: Sequence[Any]) -> None:
        """WAIT on the connection of each key's node, so that the step's writes reach
        ``wait_replicas`` replicas (or the timeout passes) before the next step."""
        assert self.wait is not None
        timeout = self.wait[1]
        routes = [keys[group[0]] for group in by_slot(keys, conn.slot)]
        nodes = [conn.node(route) for route in routes]
        asked = [self.replicas.asked(node) for node in nodes]
        replies = conn.pipeline([("WAIT", n, timeout) for n in asked], routes)
        for node, n, reply in zip(nodes, asked, replies, strict=True):
            if isinstance(reply, int):
                self.replicas.reached(node, n, reply)


class Replicas:
    """How many replicas a step's WAIT asks each node for: ``wanted``, but for a while only as
    many as its last WAIT reached when that fell short. A master a failover promoted has no
    replica until its old master rejoins (if ever): WAIT would spend its whole timeout on every
    completion there (three worker threads that completed hundreds of jobs a second completed
    about three), for replicas that do not exist; asked again every ``SHORT_RECHECK_S``."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self._short: dict[Any, tuple[int, float]] = {}  # node -> (replicas reached, until)

    def asked(self, node: Any) -> int:
        short = self._short.get(node)
        if short is None or time.monotonic() >= short[1]:
            return self.wanted
        return short[0]

    def reached(self, node: Any, asked: int, count: int) -> None:
        """WAIT for ``asked`` replicas on ``node`` answered ``count``."""
        if count >= self.wanted:
            self._short.pop(node, None)
        elif asked == self.wanted:  # fell short of the full count: ask for what it reached
            self._short[node] = (count, time.monotonic() + SHORT_RECHECK_S)


def _by_queue(writes: Sequence[Writes]) -> dict[str, list[int]]:
    """The positions of ``writes`` by the stream of their entry, streams in order of appearance."""
    groups: dict[str, list[int]] = {}
    for n, entry in enumerate(writes):
        groups.setdefault(entry.queue, []).append(n)
    return groups


def _may_refuse(step: Writes) -> bool:
    """Whether a step before the last may refuse its entry: it checks a model version, or
    appends a stream record (another type of key, or denied); statistics are counted anyway."""
    return bool(step.expect or step.records)


def _stages(entries: Sequence[Writes]) -> list[tuple[str, Mapping[str, Any]]]:
    """(stage key, fields) of the outputs of ``entries`` written to stage keys."""
    return [
        (entry.stages[key], fields)
        for entry in entries
        for key, _ttl, fields in entry.outputs
        if key in entry.stages
    ]


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


def spliced(payload: bytes, at: int, entry_id: str) -> bytes:
    """A forward notice with the forwarded entry's id written in (as complete_parts.lua does)."""
    return payload[:at] + entry_id.encode() + payload[at:]


def lease_is_fresh(since: float | None, lease_s: float) -> bool:
    """Whether an entry taken at ``since`` (monotonic) is surely still this worker's: less than
    half a visibility timeout ago, nobody else may have reclaimed it."""
    return since is not None and time.monotonic() - since < lease_s / 2


def _combined(rows: list[list[Any]]) -> Result:
    """An entry's result from its steps' rows, in order: refused if one was; else applied (or a
    duplicate) as its last step - the one with the reply - was."""
    refused = next((row_result(row) for row in rows if row[0] == -1), None)
    if refused is not None:
        return refused
    last = row_result(rows[-1])
    reply = next((int(row[1]) for row in rows if int(row[1]) != 0), 0)
    counted = [int(row[2]) for row in rows if int(row[2]) != 0]
    return Result(
        applied=last.applied,
        duplicate=last.duplicate,
        reply=reply,
        stats=min(counted) if counted else 0,
    )
