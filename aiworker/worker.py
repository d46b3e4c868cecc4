"""The worker process: THREADS_PER_QUEUE consumer threads per device stream, one consumer group.

The threads of a device queue share a reader, a local run queue and the autobatcher
(``aiworker.dispatch``): entries are decoded, run by the Executor (batched when their model has
BATCHSIZE > 0), then each outcome is applied in one MULTI/EXEC: outputs written, stats counted, the
reply pushed (with a TTL), the entry acknowledged and deleted. A crash before EXEC leaves the entry
pending for another worker; nothing is ever half applied. Consumer names are ``host:pid:device:n``.
"""

from __future__ import annotations

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
from aiworker.connection import connect
from aiworker.dag import DagRunner
from aiworker.devices import parse_device
from aiworker.dispatch import Completion, QueueRuntime
from aiworker.errors import AIError
from aiworker.executor import Executor, Outcome, StatsRecord
from aiworker.jobs import ENQUEUED_FIELD, Job, decode_entry, entry_time_ms, reply_key_of
from aiworker.keys import CONSUMER_GROUP, Keys
from aiworker.model_cache import ModelCache
from aiworker.settings import Settings
from aiworker.storage import stats, tensor_io

log = logging.getLogger("aiworker.worker")
HEARTBEAT_SECONDS = 2.0


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
        self.r = r if r is not None else connect(settings.redis_url)
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
        self.cache = ModelCache(settings.model_cache_size)
        self.executor = Executor(
            self.r, self.keys, self.registry, self.cache, settings.max_tensor_bytes
        )
        self.runtimes = {device: QueueRuntime(self, device) for device in self.devices}
        self.executor.handlers["DAGEXECUTE"] = DagRunner(self.executor, self.runtimes.get).run
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jobs_done = 0
        self._counter_lock = threading.Lock()

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> Worker:
        self.registry.preload(self.settings.preload)
        for device in self.devices:
            ensure_group(self.r, self.keys.queue(device))
            for n in range(self.settings.threads_per_queue):
                consumer = f"{self.name}:{device}:{n}"
                thread = threading.Thread(
                    target=self._consume,
                    args=(device, consumer),
                    name=f"aiworker-{device}-{n}",
                    daemon=True,
                )
                self._threads.append(thread)
        heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="aiworker-heartbeat", daemon=True
        )
        self._threads.append(heartbeat)
        for thread in self._threads:
            thread.start()
        log.info(
            "worker %s serving %s x%d",
            self.name,
            ",".join(self.devices),
            self.settings.threads_per_queue,
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reading, let threads finish the job in hand (up to ``timeout``), deregister."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.zrem(self.keys.workers, self.name)
            pipe.delete(self.keys.worker(self.name))
            pipe.execute()
        except redis.RedisError:
            log.warning("could not deregister worker %s", self.name)
        self.cache.clear()

    def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully; returns the exit code."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
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
            if "NOGROUP" in str(exc):
                ensure_group(self.r, queue)
                return []
            log.exception("reading %s failed", queue)
            time.sleep(0.5)
            return []
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("connection lost while reading %s; retrying", queue)
            time.sleep(0.5)
            return []
        return [
            (_text(entry_id), fields)
            for _stream, entries in cast("list[Any]", response) or []
            for entry_id, fields in entries
        ]

    def held_entry_ids(self) -> list[str]:
        """Entries this process holds pending (queued locally, waiting for a batch, running)."""
        return [eid for runtime in self.runtimes.values() for eid in runtime.held_entry_ids()]

    def _handle(self, device: str, queue: str, entry_id: str, fields: Mapping[Any, Any]) -> None:
        started = time.time()
        try:
            job = decode_entry(entry_id, fields)
        except AIError as exc:
            self._finish(queue, entry_id, fields, reply_key_of(fields), Outcome.failed(str(exc)))
            return
        deadline = job.deadline_ms
        if deadline is not None and started * 1000 > deadline:
            outcome = Outcome("timedout")
        else:
            outcome = self.executor.execute(job, device)
        self._finish(queue, entry_id, fields, job.reply, outcome, job, started)

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
        """Apply the outcome atomically: outputs, stats, reply, ack and delete."""
        self.finish_many(queue, [Completion(entry_id, fields, reply_key, outcome, job, started)])

    def finish_many(self, queue: str, items: Sequence[Completion]) -> None:
        """Apply several outcomes (e.g. a batch's members) in one MULTI/EXEC. Statistics are
        summed per model first and entries acknowledged together: fewer commands per request."""
        pipe = self.r.pipeline(transaction=True)
        totals: dict[str, list[int]] = {}
        for item in items:
            self._queue_finish(pipe, item, totals)
        for key, (duration_us, samples, calls, errors) in totals.items():
            stats.record(
                pipe,
                self.keys,
                key,
                duration_us=duration_us,
                samples=samples,
                calls=calls,
                errors=errors,
            )
        entry_ids = [item.entry_id for item in items]
        pipe.xack(queue, CONSUMER_GROUP, *entry_ids)
        pipe.xdel(queue, *entry_ids)
        pipe.execute()
        with self._counter_lock:
            self._jobs_done += len(items)
        for item in items:
            if item.outcome.status == "error":
                log.info("job %s failed: %s", item.entry_id, item.outcome.error)

    def _queue_finish(
        self, pipe: redis.client.Pipeline, item: Completion, totals: dict[str, list[int]]
    ) -> None:
        """Queue one outcome's writes and reply; add its statistics to ``totals``."""
        entry_id, fields, reply_key, outcome, job, started = item
        if outcome.status == "forward":
            forwarded = {_text(k): v for k, v in fields.items()}
            if job is not None:  # TIMEOUT keeps counting from the first enqueue
                forwarded[ENQUEUED_FIELD] = str(job.enqueued_ms)
            pipe.xadd(outcome.forward_queue, forwarded)  # type: ignore[arg-type]
            return
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
            total = totals.setdefault(record.key, [0, 0, 0, 0])
            total[0] += record.duration_us
            total[1] += record.samples
            total[2] += record.calls
            total[3] += record.errors
        if reply_key:
            for name, array in outcome.temp_writes.items():
                tensor_io.queue_write(pipe, name, array)
                pipe.expire(name, self.settings.reply_ttl)
            pipe.lpush(reply_key, json.dumps(self._reply(entry_id, outcome, started)))
            pipe.expire(reply_key, self.settings.reply_ttl)

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

    # heartbeat ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "devices": self.devices,
            "threads_per_queue": self.settings.threads_per_queue,
            "models": self.cache.keys(),
            "backends": self.registry.loaded(),
            "jobs_done": self._jobs_done,
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
                pipe.execute()
            except redis.RedisError:
                log.warning("heartbeat failed")
            if self._stop.wait(HEARTBEAT_SECONDS):
                return


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
