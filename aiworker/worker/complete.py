"""Completing stream entries: the one step that writes a job's effects, applied at most once.

Delivery is at-least-once, so one entry can be in two workers' hands at the same time (one that
stalled past the visibility timeout and the one that reclaimed it). Both may finish; only one may
apply, or the requester gets two replies and statistics count twice. On a single Redis,
``complete.lua`` therefore acknowledges each entry first (XACK is 1 for exactly one completion of
an entry) and writes the entry's outputs, statistics, reply and stream records only then - all in
one script, atomic. Redis Cluster runs the same script in the queue's slot, with the writes that
live in other slots as steps before it (``complete_steps``: one code path, a single Redis being
its one-slot case).

A script is not rolled back when a command fails halfway, so the script checks everything that can
fail before its first write: the type of every key (an output may only create or replace a
tensor, never another value or one of aiworker's own keys: RedisAI's WRONGTYPE rule), the worker
user's ACL, and statistics hashes that would make HINCRBY fail. An entry whose outputs are refused
is left pending and completed again here with the error as its reply. A reply key holding something
else than a list gets nothing (reported to the hooks); an expiry is set only on a reply list the
completion created.

What a completion did is reported to the worker's hooks (``worker.hooks``: metrics and logs among
them); ``started`` reports a job the pipeline starts running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from aiworker.execution.outcome import DROPPED, FORWARD, Outcome, StatsRecord
from aiworker.protocol import messages, replies
from aiworker.protocol import tensor as codec
from aiworker.protocol.entries import ENQUEUED_FIELD, FORWARDED_FIELDS, entry_time_ms
from aiworker.protocol.errors import OOM, WRONGTYPE
from aiworker.protocol.keys import Keys, shares_slot
from aiworker.protocol.requests import Job
from aiworker.protocol.text import text
from aiworker.storage import tensor_io
from aiworker.storage.wire import JobConnection
from aiworker.worker.complete_steps import Record, Result, Steps, Writes, encode, lease_is_fresh
from aiworker.worker.hooks import Hooks, JobEvent
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import failure_reason

log = logging.getLogger("aiworker.worker")

__all__ = ["Completer", "Finished", "Record", "Result", "Writes", "unrestricted"]


@dataclass
class Finished:
    """An entry ready to complete: what its job produced, and where the reply goes."""

    entry_id: str
    outcome: Outcome
    job: Job | None = None  # None: the entry could not be decoded
    reply: str | None = None
    fmt: str = replies.JSON
    started: float | None = None  # when this worker took the entry (Redis's time)
    fields: Mapping[Any, Any] = field(default_factory=dict)  # the entry's own (for forwards)
    records: list[Record] = field(default_factory=list)
    # (key, digest) of models/scripts the job ran from cached metadata: checked at completion
    expect: list[tuple[str, bytes]] = field(default_factory=list)
    queue: str = ""  # the stream it was read from ("": the device's plain queue)


def refusal_message(reason: str, key: str) -> str:
    if reason == "NOPERM":
        return f"NOPERM this worker may not write key '{key}'"
    if reason == "PREFIX":
        return f"WRONGTYPE '{key}' is one of aiworker's own keys: a job may not write it"
    if reason == "STAGE":
        return f"internal error: the data of output '{key}' was not staged"
    if reason == "OOM":
        return OOM
    if reason == "STREAM":  # its last id is the largest there is: an XADD with that id made it
        return f"the stream '{key}' takes no more entries"
    return WRONGTYPE


class Completer:
    """Completes the entries of one worker process (and counts them)."""

    def __init__(
        self,
        keys: Keys,
        worker_name: str,
        reply_ttl: int,
        held: HeldEntries,
        hooks: Hooks | None = None,
        lease_s: float = 30.0,
        marker_ttl: int = 300,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        max_reply_bytes: int = tensor_io.REDIS_MAX_VALUE_BYTES,
        clock: Callable[..., float] = lambda stream=None: time.time(),
    ) -> None:
        self.keys = keys
        # Redis's wall clock as a job's ``started`` (``health.RedisClock.time``): ``clock(stream)``
        # is that of the node the stream is on
        self.clock = clock
        self.max_reply_bytes = max_reply_bytes  # what Redis accepts in one value
        self.worker_name = worker_name
        self.reply_ttl = reply_ttl
        self.held = held
        self.hooks = hooks if hooks is not None else Hooks()
        self.lease_s = lease_s  # the visibility timeout: how long an entry taken stays ours
        # check each command against the worker user's ACL inside the script; off only while the
        # user may run anything on any key (``unrestricted``, re-checked with every heartbeat)
        self.check_acl = True
        # done markers (Redis Cluster) outlive any redelivery of the entries they guard;
        # WAIT <replicas> <timeout> after each completion step (``wait_replicas``)
        wait = (wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None
        self.steps = Steps(keys, worker_name + ":", marker_ttl, wait)
        self.jobs_done = 0
        self.jobs_failed = 0
        self._lock = threading.Lock()

    def complete(self, conn: JobConnection, queue: str, items: Sequence[Finished]) -> list[Result]:
        """Apply each entry's effects if this delivery is the one that completes it. Each item
        is of the stream it names (``Finished.queue``), or of ``queue``; entries of several
        streams complete together, in one round trip per node."""
        for item in items:
            if not item.queue:
                item.queue = queue
        results: list[Result] = []
        items = list(items)
        try:
            try:
                results = self._run(conn, items)
            except redis.exceptions.OutOfMemoryError:  # before any entry's writes (a lease)
                results = [Result(applied=False, refused="OOM")] * len(items)
            full = [n for n, result in enumerate(results) if result.refused == "OOM"]
            if full:
                # Redis is full and refused these entries' writes (nothing of them was written):
                # answer Redis's refusal instead, as RedisAI's deny-oom commands did. The reply
                # still goes through - the script acknowledges first, and Redis lets a script
                # that has written go on (in steps, the answer's is flagged allow-oom) - so the
                # requester learns it now instead of after every redelivery, and the job does
                # not run again and again meanwhile.
                for n in full:
                    items[n] = self._unwritten(items[n])
                answered = self._run(conn, [items[n] for n in full], held=True, answering=True)
                for n, result in zip(full, answered, strict=True):
                    results[n] = result
            done = list(items)
            again = {
                n: self._refused(items[n], r)
                for n, r in enumerate(results)
                if r.refused and r.refused != "STALE"
            }
            if again:  # complete those again, answering the refusal instead (still ours:
                # the first run found them held, and may have acknowledged them already)
                retried = self._run(conn, list(again.values()), held=True)
                for (n, item), result in zip(again.items(), retried, strict=True):
                    if result.refused:  # cannot even answer: just take it off the queue
                        bare = Finished(
                            item.entry_id, item.outcome, item.job, fields=item.fields,
                            queue=item.queue,
                        )  # fmt: skip
                        result = self._run(conn, [bare], held=True)[0]
                    done[n], results[n] = item, result
            for item, result in zip(done, results, strict=True):
                self._report(item.queue, item, result)
            return results
        finally:
            rerun = {
                i.entry_id for i, r in zip(items, results, strict=False) if r.refused == "STALE"
            }
            for item in items:
                if item.entry_id not in rerun:  # a stale entry runs again: still held
                    self.held.discard(item.queue, item.entry_id)

    def _unwritten(self, item: Finished) -> Finished:
        """``item`` answered with Redis's out-of-memory refusal instead of its outputs."""
        log.warning(
            "job %s: Redis is out of memory (maxmemory); answered with its refusal",
            item.entry_id,
            extra={"job_id": item.entry_id},
        )
        errors = [StatsRecord(r.key, errors=1) for r in item.outcome.stats]
        return replace(item, outcome=Outcome.failed(OOM, errors), records=[], expect=[])

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
        return replace(item, outcome=outcome, records=[], expect=[])

    def _run(
        self,
        conn: JobConnection,
        items: Sequence[Finished],
        held: bool = False,
        answering: bool = False,
    ) -> list[Result]:
        writes = [self._writes_or_failure(item) for item in items]
        self._stage(writes)

        def leased(queue: str, entry_id: str) -> bool:
            return held or lease_is_fresh(self.held.since(queue, entry_id), self.lease_s)

        return self.steps.run(conn, writes, self._head(), leased, answering)

    def _writes_or_failure(self, item: Finished) -> Writes:
        """``writes_of`` the item, or, when its results cannot be encoded (an output or reply
        no check foresaw), of the item failed with that said: it is answered alone instead of
        leaving every entry completed with it unanswered until redelivered."""
        try:
            return self.writes_of(item, item.queue)
        except Exception as exc:  # nothing is sent yet: only this item's encoding failed
            log.exception(
                "job %s: its results could not be written", item.entry_id,
                extra={"job_id": item.entry_id},
            )  # fmt: skip
            errors = [StatsRecord(r.key, errors=1) for r in item.outcome.stats]
            reason = " ".join(str(exc).split()) or type(exc).__name__
            item.outcome = Outcome.failed(f"{messages.RESULTS_UNWRITABLE}: {reason}", errors)
            item.records, item.expect = [], []
            return self.writes_of(item, item.queue)

    def _arguments(self, queue: str, items: Sequence[Finished]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV (past the head) of complete.lua for ``items`` of ``queue`` (every
        output's fields as arguments)."""
        return encode([queue], [self.writes_of(item, queue) for item in items])

    def _stage(self, writes: Sequence[Writes]) -> None:
        """Outputs kept out of Lua (``tensor_io.kept_out_of_lua``: over ``LUA_VALUE_BYTES``, or
        beyond ``LUA_CALL_BYTES`` for the completion) go to stage keys in plain HSETs
        (``complete_steps``): their stage keys, in each output's own hash slot."""
        outputs = [
            (len(memoryview(fields["blob"])), (entry, key))
            for entry in writes
            for key, _ttl, fields in entry.outputs
        ]
        for entry, key in tensor_io.kept_out_of_lua(outputs):
            entry.stages[key] = self.keys.temp(key, entry.entry_id)

    def _head(self) -> list[Any]:
        """ARGV[2..4] of the completion scripts (complete_parts.lua)."""
        return [self.keys.prefix, self.reply_ttl, int(self.check_acl)]

    def writes_of(self, item: Finished, queue: str) -> Writes:
        """What completing ``item``, read from stream ``queue``, writes: outputs, reply, statistics,
        stream records, and the model/script versions it ran (checked, not written)."""
        outcome = item.outcome
        writes = Writes(
            item.entry_id, records=list(item.records), expect=list(item.expect), queue=queue
        )
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
            payload = self._reply(item, queue).encode(item.fmt) if item.reply else b""
            if len(payload) > self.max_reply_bytes:
                # Redis would drop the connection, and the job would run again until it was
                # dead-lettered with a false cause: it fails now, nothing written
                item.outcome = outcome = Outcome.failed(
                    _reply_too_big(len(payload), self), outcome.stats
                )
                payload = self._reply(item, queue).encode(item.fmt)
            writes.outputs = [(k, 0, codec.encode_fields(a)) for k, a in outcome.writes.items()]
            if item.reply:
                writes.outputs += [
                    (k, self.reply_ttl, codec.encode_fields(a))
                    for k, a in outcome.temp_writes.items()
                ]
                writes.payload = payload
        writes.reply = item.reply
        # with the model or script they count for, where a script may read it beside them: a
        # job that ran while its model was deleted must not leave a hash nothing deletes
        writes.stats = [
            (
                self.keys.stats(r.key),
                r.key if shares_slot(r.key) else "",
                (r.duration_us, r.samples, r.calls, r.errors),
            )
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
            queue_ms = max(0, int(item.started * 1000) - _enqueued_ms(item.job, item.entry_id))
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

    def started(self, queue: str, job: Job, taken: float | None) -> None:
        """Tell the hooks that this worker starts running ``job`` (taken from ``queue`` at
        ``taken``, unix seconds)."""
        if self.hooks.wants("job_started"):
            self.hooks.call("job_started", self._event(queue, job, job.entry_id, taken))

    def _report(self, queue: str, item: Finished, result: Result) -> None:
        """Count a completed entry and tell the hooks what its completion did."""
        outcome = item.outcome
        if result.duplicate:
            if self.hooks.wants("job_skipped"):
                event = self._event(queue, item.job, item.entry_id, item.started)
                self.hooks.call("job_skipped", event)
            return
        if not result.applied or outcome.status in (FORWARD, DROPPED):
            return
        ok = outcome.status == "ok"
        with self._lock:
            self.jobs_done += 1
            self.jobs_failed += int(not ok)
        name = "job_finished" if ok else "job_failed"
        if not self.hooks.wants(name):
            return
        event = self._event(
            queue,
            item.job,
            item.entry_id,
            item.started,
            finished=self.clock(queue),
            status=outcome.status,
            error=outcome.error,
            reason="" if ok else failure_reason(outcome.status, outcome.error, item.job is None),
            compute_s=outcome.duration_us / 1_000_000,
            batch=outcome.reply_fields.get("batch", {}).get("requests", 1),
            reply_key=item.reply,
            reply_dropped=result.reply < 0,
            stats=result.stats,
        )
        self.hooks.call(name, event)

    def _event(
        self, queue: str, job: Job | None, entry_id: str, started: float | None, **more: Any
    ) -> JobEvent:
        return JobEvent(
            entry_id,
            queue,
            self.keys.device_of(queue),
            str(getattr(job.request, "key", "")) if job is not None else "",
            job.request.op if job is not None else "",
            _enqueued_ms(job, entry_id) / 1000,
            started,
            **more,
        )


def _enqueued_ms(job: Job | None, entry_id: str) -> int:
    """When the requester enqueued the job (before any forward to another device queue)."""
    return job.enqueued_ms if job is not None else entry_time_ms(entry_id)


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


def _reply_too_big(size: int, completer: Completer) -> str:
    return (
        f"the reply would take {size:,} bytes, more than Redis accepts in one value "
        f"({completer.max_reply_bytes:,}, its proto-max-bulk-len): get fewer or smaller tensors "
        "in one request (a JSON reply leaves those over 64 KiB in keys)"
    )
