"""The worker process: THREADS_PER_QUEUE consumer threads per device stream, one consumer group.

The threads of a device queue share a reader, a local run queue and the autobatcher
(``aiworker.worker.schedule``): entries are decoded, run by the Executor (batched when their model has
BATCHSIZE > 0), then the outcomes are applied by one atomic completion script: each entry
acknowledged, its outputs written, stats counted, the reply pushed (with a TTL), the entry deleted.
A crash before it leaves the entry pending for another worker; nothing is ever half applied.
Consumer names are ``host:pid:device:n``.

Crash safety (``recovery.py``, ``completion.py``): every entry the process takes is registered in
``held`` with its consumer and its lease renewed while a queue runtime holds it; a reclaim thread
per device queue takes over entries of dead workers (through ``QueueRuntime.accept``) and
dead-letters those that keep failing; completion applies at most once per entry, so a redelivered
job that two workers finish replies once. A failing job, a malformed entry or a Redis hiccup never
ends a thread: the requester gets an error reply, or the entry stays pending for a retry.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, cast

import redis

from aiworker.backends.base import BackendOptions, Registry
from aiworker.devices import parse_device
from aiworker.execution.dag import DagRunner
from aiworker.execution.executor import Executor, Outcome, StatsRecord
from aiworker.execution.model_cache import ModelCache
from aiworker.protocol.entries import ENQUEUED_FIELD, entry_time_ms
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.requests import Job
from aiworker.settings import Settings
from aiworker.storage import redis_options, stats, tensor_io
from aiworker.storage.connection import connect
from aiworker.worker.complete import Commands, Completer, Result
from aiworker.worker.metrics import WorkerMetrics, failure_reason
from aiworker.worker.recovery import HeldEntries, Recovery
from aiworker.worker.schedule import Completion, QueueRuntime

log = logging.getLogger("aiworker.worker.process")
HEARTBEAT_SECONDS = 2.0
# Heartbeats older than this are dropped from the workers zset (their JSON keys expire anyway).
STALE_WORKER_S = 3600.0
# Pause after a Redis error that redis-py's own retries with backoff did not cure.
READ_ERROR_PAUSE_S = 1.0


def ensure_group(r: redis.Redis, queue: str) -> None:
    """Create the consumer group (and stream) if missing; from id 0 so earlier jobs are served."""
    try:
        r.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Worker:
    """Serves the device queues named in ``settings.devices`` until ``stop`` is called."""

    def __init__(self, settings: Settings, r: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.r = (
            r
            if r is not None
            else connect(settings.redis_url, **redis_options.worker_kwargs(settings))
        )
        # Blocking reads stay below the socket timeout (runtimes read settings.block_ms).
        settings = settings.replace(block_ms=redis_options.block_ms_for(self.r, settings.block_ms))
        self.settings = settings
        self.block_ms = settings.block_ms
        self.devices = [parse_device(d).queue for d in settings.devices]
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.registry = Registry(
            BackendOptions(
                inter_op_parallelism=settings.inter_op_parallelism,
                intra_op_parallelism=settings.intra_op_parallelism,
                model_execution_timeout_ms=settings.model_execution_timeout,
                backend_memory_limit_mb=settings.backend_memory_limit,
            )
        )
        self.cache = ModelCache(settings.model_cache_size, settings.model_cache_bytes)
        self.executor = Executor(
            self.r,
            self.keys,
            self.registry,
            self.cache,
            settings.max_tensor_bytes,
            settings.max_model_bytes,
        )
        self.runtimes = {device: QueueRuntime(self, device) for device in self.devices}
        self.executor.handlers["DAGEXECUTE"] = DagRunner(self.executor, self.runtimes.get).run
        self._stop = threading.Event()
        self._hurry = threading.Event()  # a second signal: cut the drain short
        self._threads: list[threading.Thread] = []
        self._jobs_done = 0
        self._jobs_failed = 0
        self._counter_lock = threading.Lock()
        self._started = time.time()
        self.metrics = WorkerMetrics()
        self.held = HeldEntries()
        self.completer = Completer(self.r)
        self.recovery = Recovery(
            self.r,
            settings,
            self.held,
            self.completer,
            self.metrics,
            self.name,
            accept=self._accept_reclaimed,
            still_held=self._runtime_held,
        )
        for device in self.devices:  # in flight: the entries held (queued, batching, running)
            self.metrics.in_flight.labels(device).set_function(
                functools.partial(self.held.count, self.keys.queue(device))
            )
        self._consumers: dict[str, list[str]] = {}
        self._lease_thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> Worker:
        self.registry.preload(self.settings.preload)
        for device in self.devices:
            ensure_group(self.r, self.keys.queue(device))
            consumers = self._consumers.setdefault(device, [])
            for n in range(self.settings.threads_per_queue):
                consumer = f"{self.name}:{device}:{n}"
                consumers.append(consumer)
                thread = threading.Thread(
                    target=self._consume,
                    args=(device, consumer),
                    name=f"aiworker-{device}-{n}",
                    daemon=True,
                )
                self._threads.append(thread)
            consumers.append(self.recovery.reclaim_consumer(device))
            self._threads.append(
                threading.Thread(
                    target=self.recovery.reclaim_loop,
                    args=(device, self._stop),
                    name=f"aiworker-{device}-reclaim",
                    daemon=True,
                )
            )
        heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="aiworker-heartbeat", daemon=True
        )
        self._threads.append(heartbeat)
        # Leases are renewed while draining too, so this thread is stopped only after the drain.
        self._lease_thread = threading.Thread(
            target=self.recovery.lease_loop, name="aiworker-leases", daemon=True
        )
        self._lease_thread.start()
        for thread in self._threads:
            thread.start()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        log.info(
            "worker %s serving %s x%d",
            self.name,
            ",".join(self.devices),
            self.settings.threads_per_queue,
        )
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading, finish the jobs in hand (up to ``timeout``, default ``drain_timeout``),
        hand back what is left, deregister."""
        self._stop.set()
        drain = self.settings.drain_timeout if timeout is None else timeout
        deadline = time.monotonic() + drain
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline and not self._hurry.is_set():
                thread.join(0.1)
        self.recovery.stop_leases()
        if self._lease_thread is not None:
            self._lease_thread.join(5.0)
        try:
            handed = self.recovery.hand_back()
            self._deregister()
            log.info("worker %s stopped (%d unfinished entries handed back)", self.name, handed)
        except redis.RedisError as exc:
            log.warning("worker %s: could not deregister: %s", self.name, exc)
        self.metrics.close()
        self.cache.clear()

    def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully; returns the exit code."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                log.info("signal %d again: handing back unfinished jobs now", signum)
                self._hurry.set()
                return
            log.info("signal %d: stopping", signum)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self._stop.wait(0.5):
            pass
        self.stop()
        return 0

    @property
    def jobs_done(self) -> int:
        return self._jobs_done

    # consuming -----------------------------------------------------------------------------

    def _consume(self, device: str, consumer: str) -> None:
        self.runtimes[device].serve(consumer, self._stop)

    def read_entries(
        self, queue: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, Mapping[Any, Any]]]:
        """New entries for ``consumer`` (up to ``count``, waiting up to ``block_ms``)."""
        try:
            response = self.r.xreadgroup(
                CONSUMER_GROUP, consumer, {queue: ">"}, count=count, block=block_ms
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without persistence)
                try:
                    ensure_group(self.r, queue)
                except redis.RedisError:
                    self._stop.wait(READ_ERROR_PAUSE_S)
                return []
            log.exception("reading %s failed", queue)
            self._stop.wait(READ_ERROR_PAUSE_S)
            return []
        except redis.RedisError as exc:  # redis-py already retried with backoff
            self.metrics.redis_errors.labels("read").inc()
            log.warning("connection lost while reading %s (%s); retrying", queue, exc)
            self._stop.wait(READ_ERROR_PAUSE_S)
            return []
        entries = [
            (_text(entry_id), fields)
            for _stream, stream_entries in cast("list[Any]", response) or []
            for entry_id, fields in stream_entries
        ]
        for entry_id, _fields in entries:  # leased from now on, until completed or let go
            self.held.add(queue, entry_id, consumer)
        return entries

    def held_entry_ids(self) -> list[str]:
        """Entries this process holds pending (queued locally, waiting for a batch, running)."""
        return [eid for runtime in self.runtimes.values() for eid in runtime.held_entry_ids()]

    def held_entries(self) -> list[tuple[str, str]]:
        """(queue, entry id) of every entry whose lease this process renews."""
        return self.held.pairs()

    def _accept_reclaimed(self, device: str, entries: list[tuple[str, Mapping[Any, Any]]]) -> None:
        """Entries claimed back from a dead consumer join this queue's runtime like read ones."""
        self.runtimes[device].accept(entries)

    def _runtime_held(self) -> set[tuple[str, str]]:
        return {
            (runtime.queue, entry_id)
            for runtime in self.runtimes.values()
            for entry_id in runtime.held_entry_ids()
        }

    def _finish(
        self,
        queue: str,
        entry_id: str,
        fields: Mapping[Any, Any],
        reply_key: str | None,
        outcome: Outcome,
        job: Job | None = None,
        started: float | None = None,
    ) -> None:
        """Apply one outcome at most once: outputs, stats, reply, ack and delete."""
        self.finish_many(queue, [Completion(entry_id, fields, reply_key, outcome, job, started)])

    def finish_many(self, queue: str, items: Sequence[Completion]) -> None:
        """Apply several outcomes (e.g. a batch's members) in one completion script; each entry's
        writes apply only if this delivery is the one that completes it (``completion.py``)."""
        try:
            results = self.completer.complete_many(
                queue, [(item.entry_id, self._commands(item)) for item in items]
            )
            if isinstance(results, Result):  # a command would fail: nothing applied; one by one
                results = [self._finish_one(queue, item, results) for item in items]
            for item, result in zip(items, results, strict=True):
                self._record(queue, item, result)
        finally:
            for item in items:
                self.held.discard(queue, item.entry_id)

    def _finish_one(self, queue: str, item: Completion, rejected: Result) -> Result:
        """Complete one entry after a rejection (the worker's ACL, a key of another type):
        an unusable reply key completes without a reply; anything else is answered with the
        reason; failing both, the entry is just taken off the queue."""
        result = self.completer.complete(queue, item.entry_id, self._commands(item))
        if not result.rejected:
            return result
        log.warning("job %s: %s", item.entry_id, result.reason, extra={"job_id": item.entry_id})
        if result.key == item.reply_key:
            item = item._replace(reply_key=None)
        else:
            outcome = Outcome.failed(result.reason, item.outcome.stats_key)
            item = item._replace(outcome=outcome)
        result = self.completer.complete(queue, item.entry_id, self._commands(item))
        if result.rejected:
            result = self.completer.complete(queue, item.entry_id, Commands())
        return result

    def _commands(self, item: Completion) -> Commands:
        """The writes, statistics and reply of one finished entry."""
        entry_id, fields, reply_key, outcome, job, started = item
        done = Commands()
        if outcome.status == "forward":
            forwarded = {_text(k): v for k, v in fields.items()}
            if job is not None:  # TIMEOUT keeps counting from the first enqueue
                forwarded[ENQUEUED_FIELD] = str(job.enqueued_ms)
            return done.xadd(outcome.forward_queue, forwarded)
        pipe = cast(Any, done)  # offers the pipeline methods these storage helpers queue on
        for name, array in outcome.writes.items():
            tensor_io.queue_write(pipe, name, array)
        records = list(outcome.more_stats)
        if outcome.stats_key:
            ok = outcome.status == "ok"
            records.append(
                StatsRecord(
                    outcome.stats_key,
                    duration_us=outcome.duration_us,
                    samples=outcome.samples if ok else 0,
                    errors=int(outcome.status == "error"),
                )
            )
        for record in records:
            stats.record(
                pipe,
                self.keys,
                record.key,
                duration_us=record.duration_us,
                samples=record.samples,
                calls=record.calls,
                errors=record.errors,
            )
        if reply_key:
            for name, array in outcome.temp_writes.items():
                tensor_io.queue_write(pipe, name, array)
                done.expire(name, self.settings.reply_ttl)
            done.lpush(reply_key, json.dumps(self._reply(entry_id, outcome, started)))
            done.expire(reply_key, self.settings.reply_ttl)
        return done

    def _record(self, queue: str, item: Completion, result: Result) -> None:
        """Counters, metrics and logs of a finished entry."""
        entry_id, _fields, _reply_key, outcome, job, started = item
        device = queue[len(self.keys.queue("")) :]
        extra = {"job_id": entry_id, "queue": queue}
        if result.duplicate:
            self.metrics.duplicates.labels(device).inc()
            log.info("job %s: completed by another delivery; result dropped", entry_id, extra=extra)
            return
        if not result.applied or outcome.status == "forward":
            return
        model = str(getattr(job.request, "key", "")) if job is not None else ""
        with self._counter_lock:
            self._jobs_done += 1
            self._jobs_failed += int(outcome.status != "ok")
        if outcome.status == "ok":
            if started is not None:
                self.metrics.queued(model, device, started - entry_time_ms(entry_id) / 1000)
            batch = outcome.reply_fields.get("batch", {}).get("requests", 1)
            self.metrics.success(model, device, outcome.duration_us / 1_000_000, batch)
            log.debug("job %s done", entry_id, extra=extra)
        else:
            reason = failure_reason(outcome.status, outcome.error, malformed=job is None)
            self.metrics.failure(model, device, reason)
            log.info(
                "job %s %s: %s",
                entry_id,
                outcome.status,
                outcome.error,
                extra={**extra, "reason": reason},
            )

    def _reply(self, entry_id: str, outcome: Outcome, started: float | None) -> dict[str, Any]:
        reply: dict[str, Any] = {"status": outcome.status, "id": entry_id, "worker": self.name}
        if outcome.status == "error":
            reply["error"] = outcome.error
        if started is not None:
            reply["queue_ms"] = max(0, int(started * 1000) - entry_time_ms(entry_id))
        if outcome.duration_us:
            reply["compute_ms"] = round(outcome.duration_us / 1000, 3)
        reply.update(outcome.reply_fields)
        return reply

    # heartbeat and deregistration ----------------------------------------------------------

    def problems(self) -> list[str]:
        """Why this worker is unhealthy (empty when healthy): threads that died."""
        if self._stop.is_set():
            return []
        return [f"thread {t.name} died" for t in self._threads if t.ident and not t.is_alive()]

    def status(self) -> dict[str, Any]:
        problems = self.problems()
        return {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "devices": self.devices,
            "threads_per_queue": self.settings.threads_per_queue,
            "models": self.cache.keys(),
            "backends": self.registry.loaded(),
            "jobs_done": self._jobs_done,
            "jobs_failed": self._jobs_failed,
            "in_flight": len(self.held),
            "started": self._started,
            "metrics_port": self.metrics.port,
            "healthy": not problems,
            "problems": problems,
            "time": time.time(),
        }

    def _heartbeat_loop(self) -> None:
        while True:
            try:
                now = time.time()
                pipe = self.r.pipeline(transaction=False)
                pipe.set(
                    self.keys.worker(self.name),
                    json.dumps(self.status()),
                    ex=int(HEARTBEAT_SECONDS * 5),
                )
                pipe.zadd(self.keys.workers, {self.name: now})
                pipe.zremrangebyscore(self.keys.workers, "-inf", now - STALE_WORKER_S)
                pipe.execute()
            except redis.RedisError:
                self.metrics.redis_errors.labels("heartbeat").inc()
                log.warning("heartbeat failed")
            if self._stop.wait(HEARTBEAT_SECONDS):
                return

    def _deregister(self) -> None:
        """Drop the heartbeat and every consumer of this process that has nothing pending."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self.keys.workers, self.name)
        pipe.delete(self.keys.worker(self.name))
        pipe.execute()
        for device, consumers in self._consumers.items():
            self.recovery.prune(self.keys.queue(device), names=consumers)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
