"""Completing stream entries: the one step that writes a job's effects, applied at most once.

Delivery is at-least-once, so one entry can be in two workers' hands at the same time (one that
stalled past the visibility timeout and the one that reclaimed it). Both may finish; only one may
apply, or the requester gets two replies and statistics count twice. ``complete.lua`` therefore
acknowledges each entry first (XACK is 1 for exactly one completion of an entry) and writes the
entry's outputs, statistics, reply and stream records only then - all in one script, atomic.

A script is not rolled back when a command fails halfway, so the script checks everything that can
fail before its first write: the type of every key (an output may only create or replace a
tensor, never another value or one of aiworker's own keys: RedisAI's WRONGTYPE rule), the worker
user's ACL, and statistics hashes that would make HINCRBY fail. An entry whose outputs are refused
is left pending and completed again here with the error as its reply. A reply key holding something
else than a list gets nothing (counted and logged); an expiry is set only on a reply list the
completion created.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from aiworker.execution.outcome import DROPPED, FORWARD, Outcome, StatsRecord
from aiworker.protocol import replies
from aiworker.protocol import tensor as codec
from aiworker.protocol.entries import ENQUEUED_FIELD, FORWARDED_FIELDS, entry_time_ms
from aiworker.protocol.errors import WRONGTYPE
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.requests import Job
from aiworker.protocol.text import text
from aiworker.storage import lua, tensor_io
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import WorkerMetrics, failure_reason

log = logging.getLogger("aiworker.worker")
COMPLETE = lua.load("complete")


class Connection(Protocol):
    """What a completion runs on: a worker thread's ``Wire`` (or anything with ``evalsha``)."""

    def execute(self, *command: Any) -> Any: ...

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]: ...

    def evalsha(self, script: lua.LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Record:
    """A stream entry a completion appends (a forward to another queue, a dead letter)."""

    stream: str
    fields: Mapping[Any, Any]
    maxlen: int = 0


@dataclass
class Finished:
    """An entry ready to complete: what its job produced, and where the reply goes."""

    entry_id: str
    outcome: Outcome
    job: Job | None = None  # None: the entry could not be decoded
    reply: str | None = None
    fmt: str = replies.JSON
    started: float | None = None  # when this worker took the entry (time.time())
    fields: Mapping[Any, Any] = field(default_factory=dict)  # the entry's own (for forwards)
    records: list[Record] = field(default_factory=list)
    # (key, digest) of models/scripts the job ran from cached metadata: checked at completion
    expect: list[tuple[str, bytes]] = field(default_factory=list)
    queue: str = ""  # the stream it was read from ("": the device's plain queue)


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
    stats: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    expect: list[tuple[str, bytes]] = field(default_factory=list)
    marker: str | None = None  # complete_once.lua: the step's done marker, sent as the entry id
    # output key -> the stage key its fields were written to in the completion's MULTI
    stages: dict[str, str] = field(default_factory=dict)

    def keys(self) -> list[str]:
        """Every key written or checked, the reply included (not the marker)."""
        found = [key for key, _ttl, _fields in self.outputs]
        found += [self.reply] if self.reply else []
        found += [key for key, _values in self.stats]
        found += [record.stream for record in self.records]
        return found + [key for key, _digest in self.expect]


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
        for key, values in entry.stats:
            body += [ref(key), *values]
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
    duplicate: bool = False  # another delivery had completed it: nothing written
    # "WRONGTYPE" | "NOPERM" | "PREFIX" (answered with that error) | "STALE" (a model it ran was
    # stored anew meanwhile: the caller runs it again): nothing written, still pending
    refused: str = ""
    key: str = ""  # the key refused
    reply: int = 0  # 1 pushed, 0 none, -1 dropped (the reply key is not a list, or denied)
    stats: int = 0  # 1 counted, 0 none, -1 counted after repairing its hash, -2 denied


def refusal_message(reason: str, key: str) -> str:
    if reason == "NOPERM":
        return f"NOPERM this worker may not write key '{key}'"
    if reason == "PREFIX":
        return f"WRONGTYPE '{key}' is one of aiworker's own keys: a job may not write it"
    if reason == "STAGE":
        return f"internal error: the data of output '{key}' was not staged"
    return WRONGTYPE


class Completer:
    """Completes the entries of one worker process (and counts them)."""

    def __init__(
        self,
        keys: Keys,
        worker_name: str,
        reply_ttl: int,
        metrics: WorkerMetrics,
        held: HeldEntries,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.keys = keys
        self.worker_name = worker_name
        self.reply_ttl = reply_ttl
        self.metrics = metrics
        self.held = held
        # check each command against the worker user's ACL inside the script; off only while the
        # user may run anything on any key (``unrestricted``, re-checked with every heartbeat)
        self.check_acl = True
        # WAIT <replicas> <timeout> after each completion step (``wait_replicas``)
        self.wait = (wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None
        self.jobs_done = 0
        self.jobs_failed = 0
        self._lock = threading.Lock()

    def complete(self, conn: Connection, queue: str, items: Sequence[Finished]) -> list[Result]:
        """Apply each entry's effects if this delivery is the one that completes it."""
        results: list[Result] = []
        try:
            results = self._run(conn, queue, items)
            done = list(items)
            again = {
                n: self._refused(items[n], r)
                for n, r in enumerate(results)
                if r.refused and r.refused != "STALE"
            }
            if again:  # complete those again, answering the refusal instead
                retried = self._run(conn, queue, list(again.values()))
                for (n, item), result in zip(again.items(), retried, strict=True):
                    if result.refused:  # cannot even answer: just take it off the queue
                        bare = Finished(item.entry_id, item.outcome, item.job, fields=item.fields)
                        result = self._run(conn, queue, [bare])[0]
                    done[n], results[n] = item, result
            for item, result in zip(done, results, strict=True):
                self._record(queue, item, result)
            return results
        finally:
            rerun = {
                i.entry_id for i, r in zip(items, results, strict=False) if r.refused == "STALE"
            }
            for item in items:
                if item.entry_id not in rerun:  # a stale entry runs again: still held
                    self.held.discard(queue, item.entry_id)

    def _refused(self, item: Finished, result: Result) -> Finished:
        log.warning(
            "job %s: %s key '%s'; answered with an error",
            item.entry_id,
            result.refused,
            result.key,
            extra={"job_id": item.entry_id},
        )
        errors = [StatsRecord(r.key, errors=1) for r in item.outcome.stats]
        outcome = Outcome.failed(refusal_message(result.refused, result.key), errors)
        return Finished(
            item.entry_id, outcome, item.job, item.reply, item.fmt, item.started, item.fields
        )

    def _run(self, conn: Connection, queue: str, items: Sequence[Finished]) -> list[Result]:
        writes = [self.writes_of(item, queue) for item in items]
        stages = self._stage(writes)
        keys, body = encode([queue], writes)
        reply = self._script(conn, COMPLETE, keys, [CONSUMER_GROUP, *self._head()], body, stages)
        if self.wait is not None:  # on this thread's connection: WAIT counts its writes
            conn.execute("WAIT", *self.wait)
        return [_result(row) for row in reply]

    def _head(self) -> list[Any]:
        """ARGV[2..4] of the completion scripts (complete_parts.lua)."""
        return [self.keys.prefix, self.reply_ttl, int(self.check_acl)]

    def _arguments(self, queue: str, items: Sequence[Finished]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV (past the head) of complete.lua for ``items`` of ``queue`` (every
        output's fields as arguments)."""
        return encode([queue], [self.writes_of(item, queue) for item in items])

    def _stage(self, writes: Sequence[Writes]) -> list[tuple[str, Mapping[str, Any]]]:
        """Large outputs go to stage keys in plain HSETs (``tensor_io.staged_call``); the stage
        keys and their fields."""
        stages = []
        for entry in writes:
            for key, _ttl, fields in entry.outputs:
                if len(memoryview(fields["blob"])) > tensor_io.LUA_VALUE_BYTES:
                    entry.stages[key] = self.keys.temp(key, entry.entry_id)
                    stages.append((entry.stages[key], fields))
        return stages

    @staticmethod
    def _script(
        conn: Connection,
        script: lua.LuaScript,
        keys: list[str],
        head: list[Any],
        body: list[Any],
        stages: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> Any:
        def call(keys: list[str], args: list[Any]) -> Any:
            if stages:
                return tensor_io.staged_call(conn, script, keys, args, stages)
            return conn.evalsha(script, keys, args)

        try:
            return call(keys, [*head, 0, *body])
        except redis.exceptions.NoPermissionError:
            # The ACL denies a declared key, so Redis refused the whole script. Run it once more
            # with the keys as arguments (standalone Redis allows that): its own ACL check then
            # names the key, and the other entries complete.
            return call(keys[:1], [*head, len(keys) - 1, *keys[1:], *body])

    def writes_of(self, item: Finished, queue: str) -> Writes:
        """What completing ``item``, read from stream ``queue``, writes: outputs, reply, statistics,
        stream records, and the model/script versions it ran (checked, not written)."""
        outcome = item.outcome
        writes = Writes(item.entry_id, records=list(item.records), expect=list(item.expect))
        if outcome.status == FORWARD:
            writes.records.append(self._forward(item))
            if item.reply:
                to_queue = writes.records[-1].stream
                writes.payload, writes.splice = replies.forward_notice(
                    queue, item.entry_id, to_queue
                )
                writes.reply = item.reply
            return writes
        if outcome.status != DROPPED:
            writes.outputs = [(k, 0, codec.encode_fields(a)) for k, a in outcome.writes.items()]
            if item.reply:
                writes.outputs += [
                    (k, self.reply_ttl, codec.encode_fields(a))
                    for k, a in outcome.temp_writes.items()
                ]
                writes.payload = self._reply(item, queue).encode(item.fmt)
        writes.reply = item.reply
        writes.stats = [
            (self.keys.stats(r.key), (r.duration_us, r.samples, r.calls, r.errors))
            for r in outcome.stats
        ]
        return writes

    def _forward(self, item: Finished) -> Record:
        """The entry again, on the queue of the device its model lives on: its request, reply key
        and format only (whatever else it carried stays behind, so a forward stays small)."""
        fields = {
            name: value
            for name, value in ((text(k), v) for k, v in item.fields.items())
            if name in FORWARDED_FIELDS
        }
        if item.job is not None:  # TIMEOUT keeps counting from the first enqueue
            fields[ENQUEUED_FIELD] = str(item.job.enqueued_ms)
        return Record(self.keys.queue(item.outcome.forward_queue), fields)

    def _reply(self, item: Finished, queue: str) -> replies.Reply:
        """The reply about ``item``: it names the stream it was read from and the id Redis gave
        it, never anything the entry says about itself."""
        outcome = item.outcome
        queue_ms = None
        if item.started is not None:
            queue_ms = max(0, int(item.started * 1000) - _enqueued_ms(item))
        compute_ms = round(outcome.duration_us / 1000, 3) if outcome.duration_us else None
        return replies.build_reply(
            queue,
            item.entry_id,
            self.worker_name,
            outcome.status,
            outcome.error,
            queue_ms,
            compute_ms,
            outcome.reply_fields,
        )

    def _record(self, queue: str, item: Finished, result: Result) -> None:
        """Counters, metrics and logs of a completed entry."""
        device = self.keys.device_of(queue)
        extra = {"job_id": item.entry_id, "queue": queue}
        if result.duplicate:
            self.metrics.duplicates.labels(device).inc()
            log.info(
                "job %s: completed by another delivery; result dropped", item.entry_id, extra=extra
            )
            return
        outcome = item.outcome
        if not result.applied or outcome.status in (FORWARD, DROPPED):
            return
        if result.reply < 0:
            self.metrics.replies_dropped.labels(device).inc()
            log.warning(
                "job %s %s; its reply key '%s' is not a list this worker may push to: "
                "no reply written",
                item.entry_id,
                outcome.status,
                item.reply,
                extra=extra,
            )
        if result.stats < 0:
            log.warning(
                "job %s: statistics of %s %s",
                item.entry_id,
                [record.key for record in outcome.stats],
                "were not a hash of integers: repaired"
                if result.stats == -1
                else "not counted: this worker may not write them",
                extra=extra,
            )
        model = str(getattr(item.job.request, "key", "")) if item.job is not None else ""
        with self._lock:
            self.jobs_done += 1
            self.jobs_failed += int(outcome.status != "ok")
        if outcome.status == "ok":
            waited = None
            if item.started is not None:
                waited = item.started - _enqueued_ms(item) / 1000
            batch = outcome.reply_fields.get("batch", {}).get("requests", 1)
            self.metrics.success(model, device, outcome.duration_us / 1_000_000, batch, waited)
            return
        reason = failure_reason(outcome.status, outcome.error, malformed=item.job is None)
        self.metrics.failure(model, device, reason)
        log.info(
            "job %s %s: %s",
            item.entry_id,
            outcome.status,
            outcome.error,
            extra={**extra, "reason": reason},
        )


def spliced(payload: bytes, at: int, entry_id: str) -> bytes:
    """A forward notice with the forwarded entry's id written in (as complete_parts.lua does)."""
    return payload[:at] + entry_id.encode() + payload[at:]


def _enqueued_ms(item: Finished) -> int:
    """When the requester enqueued the job (before any forward to another device queue)."""
    return item.job.enqueued_ms if item.job is not None else entry_time_ms(item.entry_id)


def unrestricted(r: Any) -> bool:
    """Whether this connection's Redis user may run every command on every key (then the
    completion script skips its per-command ACL checks). False when that cannot be told."""
    try:
        user = r.acl_getuser(r.acl_whoami())
    except Exception:  # ACL not permitted to this user (a least-privilege worker), or no ACL
        return False
    if not user or user.get("selectors") or "~*" not in user.get("keys", []):
        return False
    return "+@all" in user.get("categories", []) and not any(
        str(c).startswith("-") for c in user.get("commands", [])
    )


def _result(row: Sequence[Any]) -> Result:
    code, reply, stats, reason, key = row[:5]  # row[5]: the id a stream record got (if any)
    return Result(
        applied=code == 1,
        duplicate=code == 0,
        refused=text(reason) if code == -1 else "",
        key=text(key),
        reply=int(reply),
        stats=int(stats),
    )
