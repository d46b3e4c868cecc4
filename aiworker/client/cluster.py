"""``aiworker.ClusterClient``: the client's API on Redis Cluster, built on redis-py's cluster
client (``redis.cluster.RedisCluster``), which routes each command to the master of its slot,
follows MOVED/ASK and rides out failovers.

The same methods as ``aiworker.Client``, with the cluster's rules (README "Redis Cluster"):

* a job's written keys (OUTPUTS, PERSIST) share one hash slot, or the request fails with RedisAI's
  ``CROSSSLOT Keys in request don't hash to the same slot`` before it is queued; its private reply
  list takes their hash tag (``protocol.slots``);
* a job goes to one of its device queue's partitions among the streams live workers announce
  (``Partitions``; the plain queue when none does): one on its reply key's master if there is
  one, else one at random;
* a job's round trip (XADD and the first BLPOP) goes through a fast connection per master
  (``storage.cluster.ClusterWire``), as a single Redis' goes through a ``Wire``;
* a job rides out a failover: its XADD and the commands of its wait that fail while a replica
  takes over are sent again until the wait's own limit, which then ends it with an error saying
  to retry (a reply the old master accepted but had not replicated is lost with it). An XADD is
  never sent again once the cluster answered it; one whose master died before answering may have
  queued the job, which then runs twice (only the reply to the entry this client's XADD got is
  taken).

Storing a model is a MULTI/EXEC on the model's key (its slot) followed by the model index's
update: a reader never sees a torn model. Pipelines are redis-py's cluster pipelines (Redis
commands only); the asyncio client targets a single Redis.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import redis
from redis.cluster import RedisCluster

from aiworker.client import waiting
from aiworker.client.api import AICommands
from aiworker.client.driver import Driver
from aiworker.client.jobs import Jobs
from aiworker.client.ops import State
from aiworker.client.wait_plan import Enqueue, Enqueued
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import Request
from aiworker.protocol.slots import check_slot
from aiworker.settings import Settings
from aiworker.storage import health
from aiworker.storage.cluster import LOST, ClusterWires, NodeLost, SlotMap, slot_of
from aiworker.storage.plans import Commands, execute_commands
from aiworker.storage.redis_options import client_kwargs

OWN_OPTIONS = ("prefix", "reply_timeout", "debug", "enable_postprocess")
# How often a client looks again at which queue partitions live workers serve.
PARTITIONS_REFRESH_S = 2.0
# Pause before trying Redis again while a wait rides out a failover.
FAILOVER_PAUSE_S = 0.2


class Partitions:
    """The streams of each device queue that live workers serve (their heartbeats' ``queues``),
    looked at again every ``PARTITIONS_REFRESH_S``."""

    def __init__(self, r: Any, keyspace: Keys, slots: SlotMap | None = None) -> None:
        self.r = r
        self.keyspace = keyspace
        self.slots = slots
        self._streams: dict[str, list[str]] = {}
        self._next = 0.0
        self._lock = threading.Lock()

    def pick(self, device: str, near: str | None = None) -> str:
        """A stream of ``device``'s queue (the plain queue when no worker says which): one on
        the master of ``near`` (the job's reply key) if there is one - the XADD and the BLPOP
        then go to one node, and so do the worker's last completion step and its XACK - else
        one at random."""
        if time.monotonic() >= self._next:
            self.refresh()
        streams = self._streams.get(device.upper())
        if not streams:
            return self.keyspace.queue(device)
        if near is not None and self.slots is not None and self.slots.known:
            try:
                node = self.slots.address(slot_of(near))
                local = [s for s in streams if self.slots.address(slot_of(s)) == node]
            except redis.ConnectionError:  # a slot without a master: a failover under way
                local = []
            if local:
                return random.choice(local)
        return random.choice(streams)

    def refresh(self) -> None:
        with self._lock:
            if time.monotonic() < self._next:
                return
            self._next = time.monotonic() + PARTITIONS_REFRESH_S
            try:
                statuses = health.live_workers(self.r, self.keyspace, health.LIVE_FOR_S)
            except (*LOST, redis.ResponseError):
                return  # keep what was known
            found: dict[str, set[str]] = {}
            for status in statuses:
                for device, streams in (status.get("queues") or {}).items():
                    found.setdefault(str(device).upper(), set()).update(map(str, streams))
            self._streams = {device: sorted(streams) for device, streams in found.items()}


class ClusterJobs(Jobs):
    """``Jobs`` on Redis Cluster (see the module docstring)."""

    cluster = True

    def __init__(self, rc: Any, keyspace: Keys, reply_timeout: float | None) -> None:
        wires = ClusterWires(rc)
        super().__init__(rc, keyspace, reply_timeout, wires=wires)
        self.partitions = Partitions(rc, keyspace, wires.slots)

    def submit(self, queue: str, request: Request, limit: float | None = None) -> Reply:
        check_slot(request)  # before anything is queued, as RedisAI refused it
        return super().submit(queue, request, limit)

    def stream(self, queue: str, reply_key: str | None = None) -> str:
        return self.partitions.pick(queue, reply_key)

    def _enqueue(self, step: Enqueue, reply_key: str) -> Enqueued:
        """Sent again, to the same stream, while a failover is under way (until the wait's own
        limit), but never once the cluster answered the XADD (only the first BLPOP's master was
        lost: the wait goes on). An XADD that reached the old master without an answer may be
        queued twice, and runs twice (README "Failover")."""
        while True:
            try:
                return super()._enqueue(step, reply_key)
            except LOST as exc:
                taken = exc.replies[:1] if isinstance(exc, NodeLost) else [None]
                if taken[0] is not None and not isinstance(taken[0], Exception):
                    return Enqueued(self.enqueuer.entry_id(step.stream, taken), None)
                if step.deadline is not None and time.monotonic() >= step.deadline:
                    raise
                time.sleep(FAILOVER_PAUSE_S)


class ClusterClient(Driver, AICommands, RedisCluster):
    """``aiworker.Client``'s methods on a Redis Cluster (see the module docstring).

    ``ClusterClient(debug=False, enable_postprocess=True, *args, prefix=..., reply_timeout=...,
    **kwargs)``, the rest going to ``redis.cluster.RedisCluster`` (``host``/``port`` of any node,
    ``startup_nodes``, ...); ``ClusterClient.from_url("redis://node:6379")``. Slots of a failed
    master need not all be served for the others to be used (``require_full_coverage=False``).
    """

    def __init__(
        self,
        debug: Any = False,
        enable_postprocess: bool = True,
        *args: Any,
        prefix: str = DEFAULT_PREFIX,
        reply_timeout: float | None = waiting.DEFAULT_REPLY_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("require_full_coverage", False)
        self.debug = False  # RedisCluster's constructor already runs commands
        super().__init__(*args, **kwargs)
        self.debug = bool(debug)
        self._state = State(Keys(prefix), raw=not enable_postprocess)
        self._jobs = ClusterJobs(self, self._state.keyspace, reply_timeout)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ClusterClient:
        own = {k: kwargs.pop(k) for k in OWN_OPTIONS if k in kwargs}
        return cls(url=url, **own, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ClusterClient:
        """A client for ``settings.redis_url`` (any node) with its prefix and TLS files."""
        kwargs = {**client_kwargs(settings), **kwargs}
        return cls.from_url(settings.redis_url, prefix=settings.prefix, **kwargs)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self.debug:
            print(*args)
        return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _send(self, commands: Commands) -> list[Any]:
        return execute_commands(self, commands)

    def close(self) -> None:
        self._jobs.close()
        super().close()
