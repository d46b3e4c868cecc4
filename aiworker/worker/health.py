"""A worker process's health: its heartbeat in Redis, and the watchdog for hung jobs.

The heartbeat (``Keys.worker(name)``, a JSON status that expires, and the ``workers`` sorted set,
in one hash slot) is what ``aiworker status``/``check`` and clients read to know which queues have
a live worker. The watchdog notices a job running past ``hung_job_timeout``: a job stuck in a
framework cannot be interrupted from Python, so the worker says it is unhealthy and gives up its
process (its other entries handed back first), and its supervisor starts a fresh one; the stuck
entry counts as a delivery and is dead-lettered after ``max_deliveries``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from redis.exceptions import NoPermissionError

from aiworker.protocol.keys import Keys
from aiworker.storage import lua, plans
from aiworker.storage.cluster import REDIS_FAILURES
from aiworker.worker.metrics import WorkerMetrics

log = logging.getLogger("aiworker.worker")
HEARTBEAT_SECONDS = 2.0
# Next try after a heartbeat that failed.
RETRY_SECONDS = 0.25
# Heartbeats older than this are dropped from the workers zset (their JSON keys expire anyway).
STALE_WORKER_S = 3600.0
WATCH_EVERY_S = 0.25
# The heartbeat's writes, allowed on a full Redis (see the scripts)
REGISTRY_SET = lua.load("registry_set")
REGISTRY_JOIN = lua.load("registry_join")


class RedisClock:
    """Redis's wall clock, read on this host. A job's TIMEOUT and queue time count from its
    entry's id, which Redis's clock wrote, and this host's clock may be off from it (seconds off:
    every job with a TIMEOUT timed out, or none did). Each heartbeat sends TIME; the offset is
    its answer less the midpoint of the round trip that brought it, taken from the quickest of
    the last few round trips (off by at most half of that one). Round trips and the offset are
    measured on this process's monotonic clock, so a step of this host's wall clock (NTP, an
    operator) moves neither. On Redis Cluster each master's clock wrote the ids of the streams
    it serves: TIME goes to every master, and ``time(key)`` is the clock of ``key``'s master.
    A user whose ACL denies TIME keeps this host's clock (the worker says so once); any other
    error (BUSY: a script runs) skips that round and keeps the offsets."""

    def __init__(self, samples: int = 8) -> None:
        self.denied = False
        self._keep = samples
        # by node name ("" on a single Redis): Redis's time less ``time.monotonic()``, and the
        # (round trip, offset) samples it comes from
        self._offsets: dict[str, float] = {}
        self._samples: dict[str, collections.deque[tuple[float, float]]] = {}
        self._default: str | None = None  # the node whose clock ``time()`` is
        self._cluster: Any = None  # the cluster client that maps a key to its master

    def observe(self, sent: float, reply: Sequence[Any], received: float, node: str = "") -> None:
        """A TIME ``reply`` (seconds, microseconds) from ``node`` asked at ``sent`` and read at
        ``received`` (this process's ``time.monotonic()``)."""
        redis_s = int(reply[0]) + int(reply[1]) / 1e6
        samples = self._samples.setdefault(node, collections.deque(maxlen=self._keep))
        samples.append((received - sent, redis_s - (sent + received) / 2))
        self._offsets[node] = min(samples)[1]
        if self._default is None:
            self._default = node

    def sync(self, r: Any, rounds: int = 3) -> None:
        """A few TIME round trips now (e.g. before a worker reads its first job), to each
        master of a cluster."""
        primaries = getattr(r, "get_primaries", None)
        nodes = [(node.name, node) for node in primaries()] if primaries else [("", None)]
        for _ in range(0 if self.denied else rounds):
            for name, node in nodes:
                sent = time.monotonic()
                try:
                    if node is None:
                        reply = r.execute_command("TIME")
                    else:
                        reply = r.execute_command("TIME", target_nodes=node)
                except redis.ResponseError as exc:
                    if not _refused(exc):  # e.g. BUSY: ask again at the next beat
                        log.debug("TIME failed (%s): the clock's offset is kept", exc)
                        return
                    self.denied = True  # NOPERM: a rule from before TIME was asked
                    log.warning("TIME refused (%s): TIMEOUTs count by this host's clock", exc)
                    return
                except redis.RedisError:
                    if node is None:
                        raise
                    continue  # a master lost (a failover): the others' beat goes on
                self.observe(sent, reply, time.monotonic(), name)
        if primaries:
            self._cluster = r

    @property
    def offset_s(self) -> float:
        """Redis's clock less this host's wall clock, now (0.0 while TIME was never read)."""
        if self._default is None:
            return 0.0
        return self._offsets[self._default] + time.monotonic() - time.time()

    def time(self, key: str | None = None) -> float:
        """Now, in seconds since the epoch, by Redis's clock (on Redis Cluster, that of the
        master serving ``key``, e.g. a stream's, when known)."""
        offset = self._offsets.get(self._default) if self._default is not None else None
        if key is not None and self._cluster is not None:
            # a slot without a master now (a failover): any master's clock
            with contextlib.suppress(Exception):
                offset = self._offsets.get(self._cluster.get_node_from_key(key).name, offset)
        if offset is None:
            return time.time()
        return time.monotonic() + offset


def _refused(exc: redis.ResponseError) -> bool:
    """Whether TIME is refused for good: denied by the user's ACL, or renamed away."""
    return isinstance(exc, NoPermissionError) or str(exc).lower().startswith("unknown command")


class Heartbeat:
    """Publishes ``status()`` every HEARTBEAT_SECONDS until stopped, with the length limit of
    each queue stream the worker serves (``max_queue_length``: clients' enqueue script reads it;
    0 publishes none), and keeps ``clock`` in step with Redis's."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        name: str,
        status: Callable[[], dict[str, Any]],
        metrics: WorkerMetrics,
        on_beat: Callable[[], None] = lambda: None,
        max_queue_length: int = 0,
        clock: RedisClock | None = None,
    ) -> None:
        self.r = r
        self.keys = keys
        self.name = name
        self.status = status
        self.metrics = metrics
        self.on_beat = on_beat  # periodic checks the process wants done at heartbeat pace
        self.max_queue_length = max_queue_length
        self.clock = clock or RedisClock()
        self._publishing = threading.Lock()

    def publish(self) -> None:
        self.clock.sync(self.r, rounds=1)  # a round trip of its own: a cluster pipeline has no TIME
        # The registry is read by clients, ``status`` and ``check``, each comparing it with its own
        # host's clock: it keeps this host's (a worker and a client on one host whose clock is
        # ahead of Redis's would else see each other dead).
        now = time.time()
        status = self.status()
        status["time"] = now
        expiry = int(HEARTBEAT_SECONDS * 15)
        encoded = json.dumps(status)
        # the status and the registry share a slot (one master of a cluster): what clients need
        # to see this worker alive, written first and on its own
        beat = [
            lua.Call(REGISTRY_SET, [self.keys.worker(self.name)], [encoded, expiry]),
            lua.Call(REGISTRY_JOIN, [self.keys.workers], [self.name, now, now - STALE_WORKER_S]),
        ]
        plans.every(plans.run(self.r, lua.calls_plan(beat)))
        # then what lives in other slots: a master lost for good fails these, not the beat
        calls = [lua.Call(REGISTRY_SET, [self.keys.legacy_worker(self.name)], [encoded, expiry])]
        if self.max_queue_length > 0:
            for streams in status.get("queues", {}).values():
                calls += [
                    lua.Call(REGISTRY_SET, [self.keys.queue_limit(stream)],
                             [self.max_queue_length, expiry])
                    for stream in streams
                ]  # fmt: skip
        try:
            plans.every(plans.run(self.r, lua.calls_plan(calls)))
        except REDIS_FAILURES as exc:
            self.metrics.redis_errors.labels("heartbeat").inc()
            log.debug("heartbeat: a write outside the registry's slot failed: %s", exc)

    def beat_now(self, wait: bool = False) -> bool:
        """Publish at once, from any thread: e.g. when a consumer finds its queue gone (a flush
        removed the heartbeat with everything else), so that clients see a live worker again
        before the next beat. Calls made while one publishes are skipped (``wait``: published
        after it); False when skipped or Redis refused."""
        if not self._publishing.acquire(blocking=wait):
            return False
        try:
            self.publish()
            return True
        except REDIS_FAILURES:
            self.metrics.redis_errors.labels("heartbeat").inc()
            log.warning("heartbeat failed")
            return False
        finally:
            self._publishing.release()

    def loop(self, stop: threading.Event) -> None:
        while True:
            pause = HEARTBEAT_SECONDS
            try:
                self.on_beat()
            except REDIS_FAILURES:  # its reads failing (a master lost) must not stop the beat
                self.metrics.redis_errors.labels("heartbeat").inc()
                log.debug("heartbeat's periodic checks failed", exc_info=True)
            except Exception:
                log.exception("heartbeat's periodic checks failed")
            try:
                with self._publishing:
                    self.publish()
            except REDIS_FAILURES:
                self.metrics.redis_errors.labels("heartbeat").inc()
                log.warning("heartbeat failed")
                pause = RETRY_SECONDS  # e.g. a failover: be seen again as soon as it is over
            except Exception:  # never lose the thread: a silent worker looks dead
                log.exception("heartbeat failed")
            if stop.wait(pause):
                return

    def withdraw(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self.keys.workers, self.name)
        pipe.delete(self.keys.worker(self.name))
        pipe.execute()
        with contextlib.suppress(*REDIS_FAILURES):  # it expires on its own
            plans.run(self.r, plans.call_once("DEL", self.keys.legacy_worker(self.name)))


class Watched(Protocol):
    """A device lane, as the watchdog sees it: what runs on its device now, since when."""

    device: str

    def running_since(self) -> list[tuple[list[str], float]]: ...


class Watchdog:
    """Calls ``on_hung(problem)`` once when a job has run longer than ``limit_s`` seconds."""

    def __init__(
        self,
        lanes: Callable[[], Sequence[Watched]],
        limit_s: float,
        on_hung: Callable[[str], None],
    ) -> None:
        self.lanes = lanes
        self.limit_s = limit_s
        self.on_hung = on_hung
        self.problem = ""

    def check(self) -> str:
        """The first hung job's description, or ""."""
        now = time.monotonic()
        for lane in self.lanes():
            for entry_ids, since in lane.running_since():
                if now - since > self.limit_s:
                    return (
                        f"job {','.join(entry_ids)} on {lane.device} has run "
                        f"{now - since:.0f} s, past hung_job_timeout ({self.limit_s:g} s)"
                    )
        return ""

    def loop(self, stop: threading.Event) -> None:
        while not stop.wait(WATCH_EVERY_S):
            try:
                problem = self.check()
            except Exception:  # never lose the thread
                log.exception("watchdog check failed")
                continue
            if problem:
                self.problem = problem
                log.error("worker unhealthy: %s", problem)
                self.on_hung(problem)
                return
