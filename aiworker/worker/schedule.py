"""One device queue's work inside a worker process: what its threads run, and in which order.

A consumer thread (``consume``) reads entries and hands them here. ``run_entries`` decodes them,
reads what every job needs in one round trip (``execution.state``), and then, on the same thread,
runs each job and completes it - or, for a model with BATCHSIZE > 0, puts the request in the
queue's batcher, where it waits for partners (RedisAI's autobatching rules). A free thread takes, in
order: a batch that is ready, requests whose TIMEOUT passed while they waited, a local task
(entries reclaimed from a dead worker, a job whose inputs did not fit its read); only then does it
read the stream again. There is no hand-off between threads on the common path: the thread that
read an entry runs and completes it.

DAGs run on the thread that took them (see ``execution.dag``). A DAG op on a batching model joins
this batcher through ``run_member`` and waits; while it waits its thread runs ready batches itself.
When every thread of the queue waits like that, nobody could read the partners a batch waits for,
so waiting batches are run as they are.

A device queue may be split into several streams (``queue_partitions``); one scheduler serves them
all (requests from different partitions batch together), and each entry completes on the stream it
came from. On Redis Cluster an entry written by hand that breaks the key rule (``protocol.slots``)
is answered with RedisAI's CROSSSLOT error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import redis

from aiworker.execution import limits, state
from aiworker.execution.batching import Batch, Batcher, Member, MemberResult, run_batch
from aiworker.execution.executor import Executor, ModelRun, Ready, member_outcome
from aiworker.execution.outcome import Outcome, error_text
from aiworker.parser.entry import decode_entry
from aiworker.protocol.entries import reply_format_of, reply_key_of
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import Job, ModelExecute
from aiworker.protocol.slots import check_slot
from aiworker.storage.wire import JobConnection, JobConnections
from aiworker.worker.complete import Completer, Finished
from aiworker.worker.running import RunningJobs

log = logging.getLogger("aiworker.worker")

Entry = tuple[str, Mapping[Any, Any]]
Task = Callable[[JobConnection], None]
# Longest a thread sleeps before looking again at a batcher that holds requests.
BATCH_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class _Waiting:
    """A stream entry waiting in the batcher."""

    job: Job
    fields: Mapping[Any, Any]
    started: float
    queue: str  # the stream it came from


class QueueScheduler:
    """The work of one device queue in one worker process (see the module docstring)."""

    def __init__(
        self,
        device: str,
        keys: Keys,
        executor: Executor,
        completer: Completer,
        wires: JobConnections,
        threads: int,
        partitions: int = 1,
        cluster: bool = False,
    ) -> None:
        self.device = device
        self.keys = keys
        self.queue = keys.queue(device)
        self.queues = keys.queues(device, partitions)  # the plain queue first
        self.cluster = cluster
        self.executor = executor
        self.completer = completer
        self.wires = wires
        self.threads = threads
        self.held = completer.held
        self._entry_limit = max(limits.MAX_ENTRY_BYTES, executor.limits.max_model_bytes)
        self.batching: Callable[[str], QueueScheduler | None] = lambda queue: None
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._tasks: deque[Task] = deque()
        self._batcher = Batcher()
        self._dag_waiters = 0
        # entry id -> (key, digest) of metadata its plan took from the cache (see MetaCache)
        self._expect: dict[str, list[tuple[str, bytes]]] = {}
        self.running = RunningJobs()

    # what a free thread does -------------------------------------------------------------------

    def take(self) -> Task | None:
        """Work ready in the process, without waiting: a batch, expired requests, a local task."""
        if not self._tasks and not self._batcher:  # the common case, without taking the lock
            return None
        with self._cond:
            now = time.monotonic()
            expired = self._batcher.expired(now)
            if expired:
                return lambda conn: self._finish_expired(conn, expired)
            batch = self._batcher.take(now, force=self.stopping.is_set())
            if batch is not None:
                return lambda conn: self._run_batch(conn, batch)
            if self._tasks:
                return self._tasks.popleft()
        return None

    def read_block_ms(self, block_ms: int) -> int:
        """How long a read may block: shorter while the batcher holds requests, whose
        MINBATCHTIMEOUT or TIMEOUT must not wait for the next entry to arrive."""
        if not self._batcher:
            return block_ms
        with self._cond:
            if not len(self._batcher):
                return block_ms
            wakeup = self._batcher.next_wakeup()
        wait = BATCH_POLL_SECONDS if wakeup is None else wakeup - time.monotonic()
        return max(1, min(block_ms, int(min(wait, BATCH_POLL_SECONDS) * 1000)))

    def idle(self) -> bool:
        """Nothing left in hand (used to end a graceful stop)."""
        with self._cond:
            return not self._tasks and not len(self._batcher) and not self.running

    def accept(self, entries: Sequence[Entry], queue: str | None = None) -> None:
        """Entries this process took from ``queue`` (default: the plain queue) outside the
        consumer threads (reclaimed from a dead consumer): a free thread runs them."""
        self._later(entries, queue or self.queue)

    def held_entry_ids(self) -> list[str]:
        with self._cond:
            ids = self._batcher.held_entry_ids()
            ids += self.running.entry_ids()
        return list(dict.fromkeys(ids))

    def running_since(self) -> list[tuple[list[str], float]]:
        """(entry ids, monotonic start) of what each thread is running now (for the watchdog)."""
        return self.running.since()

    # entries ---------------------------------------------------------------------------------

    def run_entries(
        self, conn: JobConnection, entries: Sequence[Entry], queue: str | None = None
    ) -> int:
        """Decode, read, and run or batch the entries a thread took from ``queue`` (default: the
        plain queue); returns how many more entries a batch of theirs could take right now (the
        caller may read that many).

        An entry this cannot finish (Redis lost) is let go: its lease lapses and it is reclaimed.
        """
        queue = queue or self.queue
        kept: set[str] = set()  # waiting in the batcher or read again later: still held
        try:
            return self._run_entries(conn, entries, kept, queue)
        except BaseException:
            self.held.discard_all(queue, [eid for eid, _ in entries if eid not in kept])
            for entry_id, _fields in entries:
                self._expect.pop(entry_id, None)
            raise

    def _run_entries(
        self, conn: JobConnection, entries: Sequence[Entry], kept: set[str], queue: str
    ) -> int:
        started = time.time()
        finished: list[Finished] = []
        jobs: list[tuple[Job, Mapping[Any, Any]]] = []
        for entry_id, fields in entries:
            try:
                # only a structured entry can be a MODELVERIFY with a model blob in it
                structured = b"job" in fields or "job" in fields
                size = limits.check_entry(fields, self._entry_limit if structured else 0)
                job = decode_entry(entry_id, fields, self.keys)
                limits.check_entry_for(job.request.op, size)
                if self.cluster:
                    check_slot(job.request, job.reply)
            except Exception as exc:  # any malformed entry: its requester is told, alone
                error = str(exc) if isinstance(exc, AIError) else f"malformed job entry: {exc!r}"
                reply = reply_key_of(fields, self.keys)
                fmt = reply_format_of(fields)
                finished.append(
                    Finished(
                        entry_id, Outcome.failed(error), None, reply, fmt, started, queue=queue
                    )
                )
                continue
            if job.deadline_ms is not None and started * 1000 > job.deadline_ms:
                finished.append(self._finished(job, fields, Outcome("timedout"), started, queue))
            else:
                jobs.append((job, fields))
        ready: list[tuple[Job, Mapping[Any, Any], Ready]] = []
        room = 0
        for (job, fields), planned in zip(jobs, self._plan(conn, jobs), strict=True):
            if planned is None:  # its tensors did not fit this read: read them on their own
                self._later([(job.entry_id, fields)], queue)
                kept.add(job.entry_id)
            elif isinstance(planned, Outcome):
                finished.append(self._finished(job, fields, planned, started, queue))
            elif isinstance(planned, ModelRun) and planned.meta.batchsize > 0:
                room = max(room, self._wait_for_batch(job, fields, planned, started, queue))
                kept.add(job.entry_id)
            else:
                ready.append((job, fields, planned))
        if finished:
            self._complete(conn, finished)
        for job, fields, planned in ready:
            self._run_ready(conn, job, fields, planned, started, queue)
        return room

    def _plan(
        self, conn: JobConnection, jobs: Sequence[tuple[Job, Mapping[Any, Any]]]
    ) -> list[Ready | Outcome | None]:
        """Read every job's state in one round trip and plan it (None: read it again alone)."""
        if not jobs:
            return []
        requests = [job.request for job, _ in jobs]
        try:
            snapshots = state.read(conn, requests, self.executor.limits, self.executor.metas)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # the entries stay pending and run again
        except Exception as exc:  # e.g. the worker's ACL denies one key: each job on its own
            if len(jobs) > 1:
                return [self._plan(conn, [one])[0] for one in jobs]
            return [Outcome.failed(_failure_text(exc))]
        plans: list[Ready | Outcome | None] = []
        for (job, _), snapshot in zip(jobs, snapshots, strict=True):
            if snapshot.deferred:  # alone, a job always fits its own read
                plans.append(None)
                continue
            try:
                planned = self.executor.plan(job, snapshot, self.device)
                self._expect[job.entry_id] = snapshot.expect
                plans.append(planned)
            except Exception as exc:  # a bug: this job's error, not its neighbours'
                log.exception("%s: planning %s failed", self.queue, job.entry_id)
                plans.append(Outcome.failed(_failure_text(exc)))
        return plans

    def _later(self, entries: Sequence[Entry], queue: str) -> None:
        def task(conn: JobConnection) -> None:
            self.run_entries(conn, entries, queue)

        with self._cond:
            self._tasks.append(task)
            self._cond.notify_all()

    def _finished(
        self, job: Job, fields: Mapping[Any, Any], outcome: Outcome, started: float, queue: str
    ) -> Finished:
        expect = self._expect.pop(job.entry_id, [])
        return Finished(
            job.entry_id, outcome, job, job.reply, job.fmt, started, fields, [], expect, queue
        )

    def _complete(self, conn: JobConnection, finished: Sequence[Finished]) -> None:
        """Complete entries, each on the stream it came from."""
        by_queue: dict[str, list[Finished]] = {}
        for item in finished:
            by_queue.setdefault(item.queue or self.queue, []).append(item)
        for queue, items in by_queue.items():
            try:
                results = self.completer.complete(conn, queue, items)
            except (redis.ConnectionError, redis.TimeoutError):
                raise  # not applied: the entries stay pending and run again
            except redis.RedisError:
                log.exception("%s: completing %s failed", queue, [f.entry_id for f in items])
                continue
            for item, result in zip(items, results, strict=True):
                if result.refused == "STALE":
                    # its model was stored anew while it ran: run it again
                    self.executor.metas.drop(result.key)
                    self._later([(item.entry_id, item.fields)], queue)

    def _run_ready(
        self,
        conn: JobConnection,
        job: Job,
        fields: Mapping[Any, Any],
        ready: Ready,
        started: float,
        queue: str,
    ) -> None:
        with self.running.track([job.entry_id]):
            self.completer.started(queue, job, started)
            try:
                outcome = self.executor.run(ready, self.wires.execute, self._batching_for, job.fmt)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception as exc:  # a bug: the requester still gets an answer
                log.exception("%s: %s %s failed", self.queue, job.request.op, job.entry_id)
                outcome = Outcome.failed(_failure_text(exc))
            self._complete(conn, [self._finished(job, fields, outcome, started, queue)])

    def _batching_for(self, queue_device: str) -> QueueScheduler | None:
        return self.batching(queue_device)

    # batching --------------------------------------------------------------------------------

    def _wait_for_batch(
        self, job: Job, fields: Mapping[Any, Any], ready: ModelRun, started: float, queue: str
    ) -> int:
        """Put a request in the batcher; returns how many more its batch could take now."""
        request = job.request
        assert isinstance(request, ModelExecute)
        member = Member(
            request.key,
            ready.meta,
            ready.inputs,
            context=_Waiting(job, fields, started, queue),
            entry_id=job.entry_id,
            deadline=_monotonic_deadline(job),
        )
        with self._cond:
            self._batcher.add(member)
            self._cond.notify_all()
            return max(0, ready.meta.batchsize - self._batcher.waiting(request.key))

    def _finish_expired(self, conn: JobConnection, members: list[Member]) -> None:
        finished = []
        for member in members:
            if isinstance(member.context, Future):
                member.context.set_result(MemberResult(None, "TIMEDOUT", counted=False))
            else:
                waiting: _Waiting = member.context
                outcome = Outcome("timedout")
                finished.append(self._finished_waiting(waiting, outcome))
        if finished:
            self._complete(conn, finished)

    def _finished_waiting(self, waiting: _Waiting, outcome: Outcome) -> Finished:
        return self._finished(waiting.job, waiting.fields, outcome, waiting.started, waiting.queue)

    def _run_batch(self, conn: JobConnection, batch: Batch) -> None:
        """Run one batch and complete its stream members together (one completion)."""
        ids = [m.entry_id for m in batch.members if m.entry_id]
        streams = [
            m.context.queue if isinstance(m.context, _Waiting) else self.queue
            for m in batch.members
            if m.entry_id
        ]
        finished: list[Finished] = []
        try:
            with self.running.track(ids):
                for member in batch.members:
                    if isinstance(member.context, _Waiting):
                        taken = member.context
                        self.completer.started(taken.queue, taken.job, taken.started)
                results = run_batch(self.executor.models, batch)
                for member, result in zip(batch.members, results, strict=True):
                    if isinstance(member.context, Future):
                        member.context.set_result(result)  # a DAG op: its DAG completes it
                        continue
                    waiting: _Waiting = member.context
                    request = waiting.job.request
                    assert isinstance(request, ModelExecute)
                    outcome = member_outcome(request, result, self.executor.limits, batch, member)
                    finished.append(self._finished_waiting(waiting, outcome))
                if finished:
                    self._complete(conn, finished)
        except BaseException as exc:
            # a waiting DAG must still hear back; stream entries are let go for a retry
            error = _failure_text(exc)
            for member in batch.members:
                if isinstance(member.context, Future) and not member.context.done():
                    member.context.set_result(MemberResult(None, error, counted=False))
            for stream, entry_id in zip(streams, ids, strict=True):
                self.held.discard(stream, entry_id)
            raise
        finally:
            with self._cond:
                self._batcher.finished(batch)
                self._cond.notify_all()

    def run_member(self, member: Member) -> MemberResult:
        """Batch a DAG's MODELEXECUTE op with this queue's other requests and wait for its
        result, running ready batches on this thread meanwhile."""
        future: Future[MemberResult] = Future()
        member.context = future
        with self._cond:
            self._batcher.add(member)
            self._dag_waiters += 1
            self._cond.notify_all()
        try:
            while not future.done():
                with self._cond:
                    if future.done():
                        break
                    # every thread waits in a DAG op: nobody reads the partners a batch waits for
                    force = self.stopping.is_set() or self._dag_waiters >= self.threads
                    batch = self._batcher.take(time.monotonic(), force=force)
                    if batch is None:
                        self._cond.wait(BATCH_POLL_SECONDS)
                        continue
                self._run_batch(self.wires.get(), batch)
        finally:
            with self._cond:
                self._dag_waiters -= 1
        return future.result()


def _failure_text(exc: BaseException) -> str:
    """A reply's text for an exception: RedisAI's message, or an internal error's type."""
    if isinstance(exc, (AIError, redis.ResponseError)):
        return error_text(exc)
    return f"internal error: {type(exc).__name__}: {error_text(exc)}"


def _monotonic_deadline(job: Job) -> float | None:
    """The job's TIMEOUT deadline (Redis wall clock, ms) on this process' monotonic clock."""
    deadline_ms = job.deadline_ms
    if deadline_ms is None:
        return None
    return time.monotonic() + (deadline_ms - time.time() * 1000) / 1000
