"""The worker process: its lifecycle (threads, signals, graceful stop), and nothing per job.

A job's path runs top to bottom through the stages below this module, as a pipeline per device
(``lane``): ``consume`` (a lane thread reads its stream) -> ``execution`` (the job's state read,
its ops batched and run on the device) -> ``complete`` (one atomic step writes its effects), the
stages overlapping for different jobs. Beside it, ``recovery`` reclaims entries of dead workers and
renews leases, and ``health`` publishes the heartbeat and watches for hung jobs. Consumer names are
``host:pid:device:n``.

On Redis Cluster (found once, at start: ``INFO cluster``) the same stages run unchanged: the job
path talks through a ``ClusterWire`` per thread instead of a ``Wire`` (``storage.cluster``), and
the completion applies each hash slot's writes in steps (``complete_steps``). A device queue may
be several streams (``queue_partitions``); the consumer threads share them out, recovery covers
them all, and the heartbeat lists them.

Hooks (``worker.hooks``) observe every job: the worker's metrics and job logs are two of them,
and ``Worker(settings, hooks=[...])`` adds a deployment's own.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

import redis
from redis.cluster import RedisCluster

from aiworker import malloc
from aiworker.backends import forward_threads
from aiworker.backends.base import BackendOptions, Registry
from aiworker.devices import parse_device
from aiworker.execution.executor import Executor
from aiworker.execution.limits import Limits
from aiworker.execution.model_cache import ModelCache
from aiworker.execution.models import Models
from aiworker.protocol.keys import Keys
from aiworker.settings import Settings
from aiworker.storage import health as health_store
from aiworker.storage import memory, plans, redis_options, server, tensor_io
from aiworker.storage.cluster import REDIS_FAILURES, job_connections
from aiworker.storage.connection import connect_any
from aiworker.worker.complete import Completer, unrestricted
from aiworker.worker.consume import ensure_group, reachable
from aiworker.worker.health import Heartbeat, RedisClock, Watchdog
from aiworker.worker.hooks import Hooks, LoggingHook
from aiworker.worker.lane import Lane, LaneOptions
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import MetricsHook, WorkerMetrics
from aiworker.worker.recovery import Recovery

log = logging.getLogger("aiworker.worker")
# Exit code of a worker that gave up its process because a job hung (EX_SOFTWARE).
EXIT_HUNG = 70
# Longest a stop waits, after the drain, for the lease thread and for deregistering each.
DEREGISTER_S = 2.0
# How long after its blocking read a thread of a stopping worker with nothing in hand is waited for.
IDLE_GRACE_S = 1.0

__all__ = ["Worker", "ensure_group"]


class Worker:
    """Serves the device queues named in ``settings.devices`` until ``stop`` is called;
    ``hooks`` observe its jobs (``worker.hooks``)."""

    def __init__(
        self, settings: Settings, r: redis.Redis | None = None, hooks: Iterable[Any] = ()
    ) -> None:
        self.keys = Keys(settings.prefix)
        self.r = (
            r
            if r is not None
            else connect_any(settings.redis_url, **redis_options.worker_kwargs(settings))
        )
        self.cluster = isinstance(self.r, RedisCluster)
        # Blocking reads stay below the socket timeout.
        settings = settings.replace(block_ms=redis_options.block_ms_for(self.r, settings.block_ms))
        self.settings = settings
        self.devices = [parse_device(d).queue for d in settings.devices]
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.registry = Registry(
            BackendOptions(
                inter_op_parallelism=settings.inter_op_parallelism,
                intra_op_parallelism=settings.intra_op_parallelism,
                model_execution_timeout_ms=settings.model_execution_timeout,
                backend_memory_limit_mb=settings.backend_memory_limit,
                allow_file_ops=settings.allow_file_ops,
                max_model_extract_bytes=settings.max_model_extract_bytes,
            )
        )
        self.limits = Limits(
            settings.max_tensor_bytes,
            settings.max_job_bytes,
            settings.max_model_bytes,
            settings.max_job_keys,
            tensor_io.max_value_bytes(self.r),
        )
        if 0 < self.limits.max_tensor_bytes < settings.max_tensor_bytes:
            log.warning(
                "max_tensor_bytes lowered to %d: Redis accepts no larger value (proto-max-bulk-len)",
                self.limits.max_tensor_bytes,
            )
        self.cache = ModelCache(settings.model_cache_size, settings.model_cache_bytes)
        self.models = Models(self.r, self.registry, self.cache, self.limits)
        self.metrics = WorkerMetrics()
        self.held = HeldEntries()
        self.wires = job_connections(self.r, redis_options.reconnect_retry())
        self.hooks = Hooks([LoggingHook(), MetricsHook(self.metrics), *hooks])
        self.clock = RedisClock()  # kept in step by the heartbeat
        self.completer = Completer(
            self.keys,
            self.name,
            settings.reply_ttl,
            self.held,
            self.hooks,
            lease_s=settings.visibility_timeout,
            # done markers outlive any redelivery of the entries they guard
            marker_ttl=max(settings.reply_ttl, int(10 * settings.visibility_timeout), 60),
            wait_replicas=settings.wait_replicas,
            wait_timeout_ms=settings.wait_replicas_timeout,
            max_reply_bytes=self.limits.max_value_bytes,
            clock=self.clock.time,
        )
        # scripts calling Redis do so on the calling thread's own connection
        self.executor = Executor(
            self.models, self.keys, self.limits, self.wires.execute, self.cluster, self.clock.time
        )
        self._stop = threading.Event()
        self._running = False  # lanes made from now on start at once
        self._lanes_lock = threading.Lock()
        self.lanes: dict[str, Lane] = {}
        for device in self.devices:
            self._lane(device, keys_read=self.keys.queues(device, settings.queue_partitions))
        self._peers: dict[str, int] = {}
        self.recovery = Recovery(
            self.r,
            self.wires,
            settings,
            self.held,
            self.completer,
            self.metrics,
            self.name,
            accept=lambda device, entries, queue: self.lanes[device].accept(entries, queue),
        )
        self.heartbeat = Heartbeat(
            self.r,
            self.keys,
            self.name,
            self.status,
            self.metrics,
            self._on_beat,
            settings.max_queue_length,
            self.clock,
        )
        self.watchdog = Watchdog(
            lambda: list(self.lanes.values()), settings.hung_job_timeout, self._give_up
        )
        for device, lane in self.lanes.items():  # in flight: entries held
            self.metrics.in_flight.labels(device).set_function(
                functools.partial(self._held_count, lane.queues)
            )
        self._hurry = threading.Event()  # a second signal, or a hung job: cut the drain short
        self._threads: list[threading.Thread] = []
        self._lease_thread: threading.Thread | None = None
        self._started = time.time()
        self.exit_code = 0

    def _lane(self, device: str, keys_read: list[str] | None = None) -> Lane:
        """The lane of ``device`` (made on first use: a DAG op on a device this process does not
        read gets a lane with run threads only)."""
        lane = self.lanes.get(device)
        if lane is not None:
            return lane
        with self._lanes_lock:
            if device not in self.lanes:
                settings = self.settings
                slots = settings.threads_per_queue
                options = LaneOptions(
                    slots=slots,
                    threads=slots + max(1, slots),
                    block_ms=settings.block_ms,
                    max_waiting=settings.max_batch_waiting,
                    max_waiting_bytes=settings.max_batch_waiting_bytes,
                )
                lane = Lane(
                    device,
                    self.keys,
                    self.executor,
                    self.completer,
                    self.wires,
                    self.held,
                    self.metrics,
                    options,
                    self._stop,
                    keys_read or [],
                    self.cluster,
                    self.name,
                )
                lane.lanes = self._lane
                lane.peers = lambda device=device: self._peers.get(device, 1)  # type: ignore[misc]
                lane.on_lost = self._vanished
                self.lanes[device] = lane
                if self._running:
                    lane.start()
            return self.lanes[device]

    @property
    def schedulers(self) -> dict[str, Lane]:
        """The lanes of the devices this process reads (older name)."""
        return {device: self.lanes[device] for device in self.devices}

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> Worker:
        if self.settings.metrics_port:  # first: a port in use fails before the worker registers
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        self.registry.preload(self.settings.preload)
        # a backend loaded later is published at once: AI.INFO lists those the workers loaded
        self.registry.on_new = self.heartbeat.beat_now
        server.require_supported(self.r)
        self._check_acl()
        # What is loaded now (frameworks, preloaded backends) lives as long as the process: keep
        # it out of the garbage collector's scans, which every job's allocations trigger.
        gc.collect()
        gc.freeze()
        self.clock.sync(self.r)  # entries' ids are Redis's time: know it before reading one
        self._warn_of_eviction()
        for device in self.devices:
            for queue in self.lanes[device].queues:
                self._ensure_group(queue)
            reclaim = functools.partial(self.recovery.reclaim_loop, device, self._stop)
            self._thread(reclaim, f"aiworker-{device}-reclaim")
        self._thread(functools.partial(self.heartbeat.loop, self._stop), "aiworker-heartbeat")
        if self.settings.hung_job_timeout > 0:
            self._thread(functools.partial(self.watchdog.loop, self._stop), "aiworker-watchdog")
        # Leases are renewed while draining too, so this thread is stopped only after the drain.
        self._lease_thread = threading.Thread(
            target=self.recovery.lease_loop, name="aiworker-leases", daemon=True
        )
        self._lease_thread.start()
        for thread in self._threads:
            thread.start()
        with self._lanes_lock:
            self._running = True
            for lane in self.lanes.values():
                lane.start()
        # seen live once ``start`` returns: clients (and a store's check by a live worker) must
        # not find no worker while the heartbeat thread's first beat is still on its way
        self.heartbeat.beat_now(wait=True)
        log.info(
            "worker %s serving %s x%d%s%s",
            self.name,
            ",".join(self.devices),
            self.settings.threads_per_queue,
            f" over {self.settings.queue_partitions} partitions"
            if self.settings.queue_partitions > 1
            else "",
            " on Redis Cluster" if self.cluster else "",
        )
        return self

    def _check_acl(self) -> None:
        self.completer.check_acl = not unrestricted(self.r)

    def _ensure_group(self, queue: str) -> None:
        """The queue's consumer group, made now if Redis accepts the write; a Redis too full for
        it does not stop the start: the reading threads make the group once Redis has room."""
        try:
            ensure_group(self.r, queue)
        except redis.exceptions.OutOfMemoryError as exc:
            log.warning(
                "%s: consumer group not created, Redis is out of memory (%s); "
                "it is created once Redis accepts writes again",
                queue,
                exc,
            )

    def _warn_of_eviction(self) -> None:
        """Say once, at start, when Redis may evict aiworker's keys (``storage.memory``)."""
        warning = memory.eviction_warning(self.r)
        if warning:
            log.warning("%s", warning)

    def _on_beat(self) -> None:
        """At heartbeat pace: the ACL check, and how many live workers serve each device (a
        lane reads ahead for batches no more than its share of the queue)."""
        self._check_acl()
        plan = health_store.live_workers_plan(self.keys, health_store.LIVE_FOR_S)
        statuses = plans.run(self.r, plan)
        self._peers = {
            device: max(1, sum(1 for s in statuses if device in s.get("devices", ())))
            for device in self.devices
        }

    def _vanished(self) -> None:
        """A stream vanished under a lane (FLUSHALL, FLUSHDB): the heartbeat went with it, so
        publish it again at once - clients look for it to know a worker serves their queue. (All
        lanes see the flush at once: ``beat_now`` publishes once for them.)"""
        self.heartbeat.beat_now()

    def _thread(self, target: Any, name: str) -> None:
        self._threads.append(threading.Thread(target=target, name=name, daemon=True))

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading, finish the jobs in hand (up to ``timeout``, default ``drain_timeout``),
        hand back what is left, deregister."""
        self._stop.set()
        for lane in list(self.lanes.values()):
            lane.wake()
        drain = self.settings.drain_timeout if timeout is None else timeout
        deadline = time.monotonic() + drain
        threads = self._threads + [t for lane in list(self.lanes.values()) for t in lane.threads]
        # A thread that only reads ends within a blocking read; past that, with nothing in hand
        # (no entry held: one read and still being prepared counts, as one running does), it is
        # stuck reconnecting to a Redis that went away: nothing is left to drain.
        idle_grace = self.settings.block_ms / 1000 + IDLE_GRACE_S
        idle_since: float | None = None
        for thread in threads:
            while thread.is_alive() and time.monotonic() < deadline and not self._hurry.is_set():
                now = time.monotonic()
                if self.held.pairs() or not all(lane.idle() for lane in self.lanes.values()):
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since > idle_grace:
                    break
                thread.join(0.1)
        self.recovery.stop_leases()
        if self._lease_thread is not None:
            self._lease_thread.join(DEREGISTER_S)
        # Handing back and deregistering is a courtesy (leases lapse, heartbeats expire): with
        # Redis down, its retries must not hold the stop past a supervisor's grace period.
        deregister = threading.Thread(target=self._deregister, name="aiworker-deregister")
        deregister.daemon = True
        deregister.start()
        deregister.join(DEREGISTER_S)
        if deregister.is_alive():
            log.warning(
                "worker %s: Redis did not answer within %g s: stopped without deregistering "
                "(its entries are reclaimed after visibility_timeout)",
                self.name,
                DEREGISTER_S,
            )
        self.metrics.close()
        self.models.close()
        if not self._hurry.is_set():  # stuck threads may still hold their connections
            self.wires.close()

    def _deregister(self) -> None:
        """Hand back what is still held, withdraw the heartbeat, delete this process' consumers."""
        try:
            handed = self.recovery.hand_back()
            self.heartbeat.withdraw()
            for device in self.devices:
                lane = self.lanes[device]
                names = [*lane.consumers, self.recovery.reclaim_consumer(device)]
                # a lost master's partition would hold up the others past DEREGISTER_S
                for queue in reachable(self.wires.get(), lane.queues):
                    self.recovery.prune(queue, names=names)
            log.info("worker %s stopped (%d unfinished entries handed back)", self.name, handed)
        except REDIS_FAILURES as exc:
            log.warning("worker %s: could not deregister: %s", self.name, exc)

    def _give_up(self, problem: str) -> None:
        """A job hung: report unhealthy, hand back the other entries, and end the process'
        service so that its supervisor replaces it (``run_forever`` exits with EXIT_HUNG)."""
        self.exit_code = EXIT_HUNG
        try:
            self.heartbeat.publish()
        except REDIS_FAILURES:
            log.warning("could not publish the unhealthy status")
        self._hurry.set()
        self._stop.set()

    def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT (or a hung job), stop; returns the exit code."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                log.info("signal %d again: handing back unfinished jobs now", signum)
                self._hurry.set()
                return
            log.info("signal %d: stopping", signum)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        malloc.keep_freed_memory()  # the process is the worker's now
        forward_threads.shorten_openmp_spin()  # before a backend loads OpenMP
        self.start()
        while not self._stop.wait(0.5):
            pass
        self.stop()
        if self.exit_code:  # threads stuck in a framework call would block the exit
            logging.shutdown()
            os._exit(self.exit_code)
        return 0

    # observing -----------------------------------------------------------------------------

    @property
    def jobs_done(self) -> int:
        return self.completer.jobs_done

    def held_entry_ids(self) -> list[str]:
        """Entries this process holds pending (waiting for a batch, running, being read)."""
        return [entry_id for _queue, entry_id in self.held.pairs()]

    def held_entries(self) -> list[tuple[str, str]]:
        """(queue, entry id) of every entry whose lease this process renews."""
        return self.held.pairs()

    def accept(
        self, device: str, entries: list[tuple[str, Mapping[Any, Any]]], queue: str | None = None
    ) -> None:
        self.lanes[device].accept(entries, queue)

    def _held_count(self, queues: list[str]) -> int:
        return sum(self.held.count(queue) for queue in queues)

    def problems(self) -> list[str]:
        """Why this worker is unhealthy (empty when healthy): dead threads, a hung job."""
        if self.watchdog.problem:
            return [self.watchdog.problem]
        if self._stop.is_set():
            return []
        threads = self._threads + [t for lane in list(self.lanes.values()) for t in lane.threads]
        return [f"thread {t.name} died" for t in threads if t.ident and not t.is_alive()]

    def status(self) -> dict[str, Any]:
        problems = self.problems()
        return {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "devices": self.devices,
            # the streams served per device (queue partitions): clients spread jobs over these
            "queues": {device: self.lanes[device].queues for device in self.devices},
            "threads_per_queue": self.settings.threads_per_queue,
            "models": self.cache.keys(),
            "backends": self.registry.loaded(),
            "jobs_done": self.completer.jobs_done,
            "jobs_failed": self.completer.jobs_failed,
            "in_flight": len(self.held),
            "started": self._started,
            "metrics_port": self.metrics.port,
            "healthy": not problems,
            "problems": problems,
            "time": time.time(),  # the registry keeps this host's clock (Heartbeat.publish)
        }
