"""One device queue inside a worker process: its THREADS_PER_QUEUE threads, a shared reader, a local
run queue and the autobatcher.

Leader/follower: one thread at a time reads the stream (XREADGROUP with a COUNT, so requests queued
together are seen together); it decodes the entries, reads the inputs of every MODELEXECUTE among them
in one round trip, puts requests for models with BATCHSIZE > 0 into the batcher and everything else
on the local run queue, then wakes the other threads. A free thread takes, in order: a batch that is
ready, a local job, or the reader's role. So the threads never sit in XREADGROUP while work is
waiting in the process, and a request waiting for batch partners never blocks a thread.

DAG entries run on threads of their own: a DAG may wait for a batch that only this queue's threads
can complete. While it waits, a DAG's thread runs ready batches itself.

Entries held here (queued locally, waiting in the batcher, running) stay pending in the consumer group
until their completion transaction acknowledges them; ``held_entry_ids`` lists them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol, cast

import numpy as np
import redis

from aiworker.execution import limits
from aiworker.execution.batching import Batch, Batcher, Member, MemberResult, run_batch
from aiworker.execution.executor import Executor, Outcome, PreparedModelExecute
from aiworker.protocol import messages
from aiworker.protocol.entries import decode_entry, reply_key_of
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import Job, ModelExecute
from aiworker.settings import Settings
from aiworker.storage.model import META_FIELDS

log = logging.getLogger("aiworker.worker.schedule")

# Entries one XREADGROUP may take: enough to see a whole batch's worth of queued requests at once.
READ_COUNT = 64
# How often idle threads look at the stop flag (seconds).
POLL_SECONDS = 0.5
# Longest XREADGROUP block while the batcher holds requests: a batch that a DAG op (on its own
# thread) made ready, or that a finished batch unblocked, must not wait for the next entry.
BATCH_POLL_SECONDS = 0.05

Task = Callable[[], None]


class Completion(NamedTuple):
    """A finished entry, for the worker's completion transaction."""

    entry_id: str
    fields: Mapping[Any, Any]
    reply_key: str | None
    outcome: Outcome
    job: Job | None
    started: float | None


class Host(Protocol):
    """What a queue runtime needs from its worker process."""

    r: redis.Redis
    keys: Keys
    settings: Settings
    executor: Executor

    def read_entries(
        self, queue: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, Mapping[Any, Any]]]: ...

    def finish_many(self, queue: str, items: Sequence[Completion]) -> None: ...


@dataclass(frozen=True)
class _Entry:
    """A stream entry waiting in the batcher."""

    job: Job
    fields: Mapping[Any, Any]
    started: float


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _monotonic_deadline(job: Job) -> float | None:
    """The job's TIMEOUT deadline (Redis wall clock, ms) on this process' monotonic clock."""
    deadline_ms = job.deadline_ms
    if deadline_ms is None:
        return None
    return time.monotonic() + (deadline_ms - time.time() * 1000) / 1000


class ReusedThreads:
    """Daemon threads for DAGs, started on demand and then reused: a DAG may wait on a batch, so
    it gets a thread of its own, but starting one per DAG cost more than a small DAG itself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._work: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, work: Task) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that idle thread takes this work
        self._work.put(work)
        if start:
            threading.Thread(target=self._loop, name=self.name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            work = self._work.get()
            try:
                work()
            except Exception:  # the work logs its own failures; never lose the thread
                log.exception("%s: work failed", self.name)
            with self._lock:
                self._idle += 1


class QueueRuntime:
    """The threads of one device queue in one worker process (see the module docstring)."""

    def __init__(self, host: Host, device: str, read_count: int = READ_COUNT) -> None:
        self.host = host
        self.device = device
        self.queue = host.keys.queue(device)
        self.read_count = read_count
        self._cond = threading.Condition()
        self._tasks: deque[tuple[str, Task]] = deque()
        self._batcher = Batcher()
        self._reading = False
        self._running: dict[str, int] = {}  # entry id -> threads working on it
        self._stopping = threading.Event()
        self._dag_threads = ReusedThreads(f"aiworker-{device}-dag")

    # the consumer threads ------------------------------------------------------------------

    def serve(self, consumer: str, stop: threading.Event) -> None:
        """Body of one consumer thread: work until ``stop`` is set and nothing is left in hand."""
        while True:
            work = self._next_work(consumer, stop)
            if work is None:
                return
            try:
                work()
            except Exception:  # a bug or a lost connection: log it, keep serving
                log.exception("%s: work failed", self.queue)
                time.sleep(0.1)

    def _next_work(self, consumer: str, stop: threading.Event) -> Task | None:
        with self._cond:
            while True:
                if stop.is_set():
                    self._stopping.set()
                work = self._take_locked()
                if work is not None:
                    return work
                if self._stopping.is_set():
                    return None
                if not self._reading:
                    self._reading = True
                    return partial(self._read, consumer)
                self._cond.wait(self._wait_seconds())

    def _take_locked(self) -> Task | None:
        """A ready batch, expired batch members, or a local job (call with the lock held)."""
        now = time.monotonic()
        expired = self._batcher.expired(now)
        if expired:
            self._hold(m.entry_id for m in expired)
            return partial(self._finish_expired, expired)
        batch = self._batcher.take(now, force=self._stopping.is_set())
        if batch is not None:
            self._hold(m.entry_id for m in batch.members)
            return partial(self._run_batch, batch)
        if self._tasks:
            entry_id, task = self._tasks.popleft()
            self._hold([entry_id])
            return partial(self._run_task, entry_id, task)
        return None

    def _wait_seconds(self) -> float:
        wakeup = self._batcher.next_wakeup()
        if wakeup is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.001, wakeup - time.monotonic()))

    def _hold(self, entry_ids: Iterable[str | None]) -> None:
        for entry_id in entry_ids:
            if entry_id:
                self._running[entry_id] = self._running.get(entry_id, 0) + 1

    def _release(self, entry_ids: Iterable[str | None]) -> None:
        with self._cond:
            for entry_id in entry_ids:
                if not entry_id:
                    continue
                count = self._running.get(entry_id, 0) - 1
                if count > 0:
                    self._running[entry_id] = count
                else:
                    self._running.pop(entry_id, None)
            self._cond.notify_all()

    def held_entry_ids(self) -> list[str]:
        """Entries this queue holds pending: queued locally, waiting for a batch, or running."""
        with self._cond:
            ids = [entry_id for entry_id, _ in self._tasks]
            ids += self._batcher.held_entry_ids()
            ids += list(self._running)
        return list(dict.fromkeys(ids))

    # reading -------------------------------------------------------------------------------

    def _read(self, consumer: str) -> None:
        try:
            with self._cond:
                block_s = None
                if len(self._batcher):
                    block_s = min(BATCH_POLL_SECONDS, self._wait_seconds())
            block_ms = self.host.settings.block_ms
            if block_s is not None:
                block_ms = max(1, min(block_ms, int(block_s * 1000)))
            entries = self.host.read_entries(self.queue, consumer, self.read_count, block_ms)
        finally:
            with self._cond:
                self._reading = False
        if entries:
            self.accept(entries)

    def accept(self, entries: list[tuple[str, Mapping[Any, Any]]]) -> None:
        """Take entries this process now owns (read, or claimed back from a dead consumer): decode
        them, read their inputs, queue them here or in the batcher, start their DAGs."""
        tasks: list[tuple[str, Task]] = []
        members: list[Member] = []
        dags: list[tuple[Job, Mapping[Any, Any], float]] = []
        try:
            self._classify(entries, tasks, members, dags)
        finally:
            with self._cond:
                self._tasks.extend(tasks)
                for member in members:
                    self._batcher.add(member)
                self._cond.notify_all()
            for job, fields, started in dags:
                self._start_dag(job, fields, started)

    def _classify(
        self,
        entries: list[tuple[str, Mapping[Any, Any]]],
        tasks: list[tuple[str, Task]],
        members: list[Member],
        dags: list[tuple[Job, Mapping[Any, Any], float]],
    ) -> None:
        started = time.time()
        model_jobs: list[tuple[Job, Mapping[Any, Any]]] = []
        for entry_id, fields in entries:
            try:
                limits.check_entry(fields)
                job = decode_entry(entry_id, fields)
            except Exception as exc:  # any malformed entry: its requester is told
                reply_key = reply_key_of(fields)
                error = str(exc) if isinstance(exc, AIError) else f"malformed job entry: {exc!r}"
                outcome = Outcome.failed(error)
                tasks.append((entry_id, self._finisher(entry_id, fields, reply_key, outcome)))
                continue
            deadline = job.deadline_ms
            if deadline is not None and started * 1000 > deadline:
                tasks.append(
                    (entry_id, self._finisher_for(job, fields, Outcome("timedout"), started))
                )
            elif job.request.op == "MODELEXECUTE":
                model_jobs.append((job, fields))
            elif job.request.op == "DAGEXECUTE":
                dags.append((job, fields, started))
            else:
                tasks.append((entry_id, partial(self._execute, job, fields, started)))
        if not model_jobs:
            return
        for (job, fields), prepared in zip(model_jobs, self._prepare(model_jobs), strict=True):
            if isinstance(prepared, Outcome):
                tasks.append((job.entry_id, self._finisher_for(job, fields, prepared, started)))
            elif prepared.meta.batchsize > 0:
                member = Member(
                    prepared.request.key,
                    prepared.meta,
                    prepared.inputs,
                    context=_Entry(job, fields, started),
                    entry_id=job.entry_id,
                    deadline=_monotonic_deadline(job),
                )
                members.append(member)
            else:
                task = partial(self._run_prepared, job, fields, prepared, started)
                tasks.append((job.entry_id, task))

    def _prepare(
        self, model_jobs: list[tuple[Job, Mapping[Any, Any]]]
    ) -> list[PreparedModelExecute | Outcome]:
        """Model versions and inputs of every MODELEXECUTE read, in one round trip."""
        requests = [cast(ModelExecute, job.request) for job, _ in model_jobs]
        models = list(dict.fromkeys(r.key for r in requests))  # each model's metadata once
        pipe = self.host.r.pipeline(transaction=True)
        for key in models:
            pipe.hmget(key, list(META_FIELDS))
        for request in requests:
            for name in request.inputs:
                pipe.hgetall(name)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # the entries stay pending and run again
        except redis.ResponseError:  # EXECABORT: e.g. the worker's ACL denies one of the keys
            return [self._prepare_alone(request) for request in requests]
        metas = dict(zip(models, replies, strict=False))
        offset = len(models)
        results: list[PreparedModelExecute | Outcome] = []
        for request in requests:
            mine = [metas[request.key], *replies[offset : offset + len(request.inputs)]]
            offset += len(request.inputs)
            results.append(self._prepare_alone(request, mine))
        return results

    def _prepare_alone(
        self, request: ModelExecute, replies: list[Any] | None = None
    ) -> PreparedModelExecute | Outcome:
        """One request's preparation; any failure but a lost connection is its own error."""
        try:
            return self.host.executor.prepare_model_execute(request, self.device, replies)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except AIWorkerError as exc:
            return Outcome.failed(_error_text(exc))
        except redis.ResponseError as exc:  # NOPERM and the like: tell the requester
            return Outcome.failed(_error_text(exc))
        except Exception as exc:  # e.g. a corrupt model hash
            return Outcome.failed(f"internal error: {type(exc).__name__}: {_error_text(exc)}")

    # running -------------------------------------------------------------------------------

    def _finisher(
        self,
        entry_id: str,
        fields: Mapping[Any, Any],
        reply_key: str | None,
        outcome: Outcome,
        job: Job | None = None,
        started: float | None = None,
    ) -> Task:
        completion = Completion(entry_id, fields, reply_key, outcome, job, started)
        return partial(self.host.finish_many, self.queue, [completion])

    def _finisher_for(
        self, job: Job, fields: Mapping[Any, Any], outcome: Outcome, started: float
    ) -> Task:
        return self._finisher(job.entry_id, fields, job.reply, outcome, job, started)

    def _run_task(self, entry_id: str, task: Task) -> None:
        try:
            task()
        finally:
            self._release([entry_id])

    def _execute(self, job: Job, fields: Mapping[Any, Any], started: float) -> None:
        try:
            outcome = self.host.executor.execute(job, self.device)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # not the job's fault: it stays pending and runs again
        except redis.ResponseError as exc:  # e.g. NOPERM reading a key outside the worker's ACL
            outcome = Outcome.failed(_error_text(exc))
        except Exception as exc:  # a bug: the requester still gets an answer
            log.exception("%s: %s %s failed", self.queue, job.request.op, job.entry_id)
            outcome = Outcome.failed(f"internal error: {type(exc).__name__}: {_error_text(exc)}")
        self._finisher_for(job, fields, outcome, started)()

    def _run_prepared(
        self, job: Job, fields: Mapping[Any, Any], prepared: PreparedModelExecute, started: float
    ) -> None:
        try:
            outcome = self.host.executor.run_model_execute(prepared)
        except AIWorkerError as exc:  # the model failed to load
            outcome = Outcome.failed(_error_text(exc))
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # not the job's fault: it stays pending and runs again
        except Exception as exc:  # a corrupt model hash, a bug: the requester still hears back
            outcome = Outcome.failed(f"internal error: {type(exc).__name__}: {_error_text(exc)}")
        self._finisher_for(job, fields, outcome, started)()

    def _finish_expired(self, members: list[Member]) -> None:
        try:
            completions = []
            for member in members:
                if isinstance(member.context, Future):
                    member.context.set_result(MemberResult(None, "TIMEDOUT", counted=False))
                    continue
                entry: _Entry = member.context
                completions.append(
                    Completion(
                        entry.job.entry_id,
                        entry.fields,
                        entry.job.reply,
                        Outcome("timedout"),
                        entry.job,
                        entry.started,
                    )
                )
            if completions:
                self.host.finish_many(self.queue, completions)
        finally:
            self._release(m.entry_id for m in members if m.entry_id)

    def _run_batch(self, batch: Batch) -> None:
        """Run one batch and complete its members (stream entries in one transaction)."""
        try:
            results = run_batch(self.host.executor, batch)
            completions = []
            for member, result in zip(batch.members, results, strict=True):
                if isinstance(member.context, Future):
                    member.context.set_result(result)  # a DAG op: its DAG completes it
                    continue
                entry: _Entry = member.context
                outcome = _member_outcome(entry.job, member, result, batch)
                completions.append(
                    Completion(
                        entry.job.entry_id,
                        entry.fields,
                        entry.job.reply,
                        outcome,
                        entry.job,
                        entry.started,
                    )
                )
            if completions:
                self.host.finish_many(self.queue, completions)
        except Exception as exc:
            # a waiting DAG must still hear back; stream entries stay pending for a retry
            for member in batch.members:
                if isinstance(member.context, Future) and not member.context.done():
                    error = f"internal error: {type(exc).__name__}: {_error_text(exc)}"
                    member.context.set_result(MemberResult(None, error, counted=False))
            raise
        finally:
            with self._cond:
                self._batcher.finished(batch)
            self._release(m.entry_id for m in batch.members if m.entry_id)

    # DAGs ----------------------------------------------------------------------------------

    def _start_dag(self, job: Job, fields: Mapping[Any, Any], started: float) -> None:
        with self._cond:
            self._hold([job.entry_id])
        self._dag_threads.submit(partial(self._run_dag, job, fields, started))

    def _run_dag(self, job: Job, fields: Mapping[Any, Any], started: float) -> None:
        try:
            self._execute(job, fields, started)
        except Exception:
            log.exception("%s: DAG %s failed", self.queue, job.entry_id)
        finally:
            self._release([job.entry_id])

    def run_member(self, member: Member) -> MemberResult:
        """Batch a DAG's MODELEXECUTE op with this queue's other requests; wait for its result,
        running ready batches meanwhile (so a DAG never waits on busy threads)."""
        future: Future[MemberResult] = Future()
        member.context = future
        with self._cond:
            self._batcher.add(member)
            self._cond.notify_all()
        while True:
            work: Task | None = None
            with self._cond:
                if future.done():
                    break
                now = time.monotonic()
                batch = self._batcher.take(now, force=self._stopping.is_set())
                if batch is not None:
                    self._hold(m.entry_id for m in batch.members)
                    work = partial(self._run_batch, batch)
                else:
                    self._cond.wait(min(0.05, self._wait_seconds()))
            if work is not None:
                work()
        return future.result()


def _member_outcome(job: Job, member: Member, result: MemberResult, batch: Batch) -> Outcome:
    """The Outcome of a stream request that ran as part of a batch (the reply tells the batch's
    size and how many requests shared it)."""
    request = job.request
    assert isinstance(request, ModelExecute)
    stats_key = request.key if result.counted else None
    shared = {"batch": {"size": batch.total, "requests": len(batch.members)}}
    if result.outputs is None:
        outcome = Outcome.failed(result.error, stats_key)
        outcome.reply_fields = shared
        return outcome
    if len(result.outputs) != len(request.outputs):
        return Outcome.failed(messages.MODEL_OUTPUT_COUNT, stats_key)
    writes = dict(zip(request.outputs, result.outputs, strict=True))
    first = result.outputs[0] if result.outputs else None
    samples = member.size if first is None or np.ndim(first) == 0 else int(first.shape[0])
    return Outcome(
        "ok",
        writes=writes,
        stats_key=request.key,
        duration_us=result.duration_us,
        samples=samples,
        reply_fields=shared,
    )
