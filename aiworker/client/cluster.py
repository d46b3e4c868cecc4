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
* a job's round trip (XADD and the first look at its reply list) goes through a fast connection
  per master (``storage.cluster.ClusterWire``), as a single Redis' goes through a ``Wire``;
* a job rides out a failover: its XADD and the commands of its wait that fail while a replica
  takes over are sent again until the wait's own limit, which then ends it with an error saying
  to retry (a reply the old master accepted but had not replicated is lost with it). An XADD is
  never sent again once the cluster answered it; one whose master died before answering may have
  queued the job, which then runs twice (only the reply to the entry this client's XADD got is
  taken).

Storing a model is a MULTI/EXEC on the model's key (its slot) followed by the model index's
update: a reader never sees a torn model. Pipelines are redis-py's cluster pipelines (Redis
commands only). Where a job goes and what its first round trip says are ``client.placement``'s
rules, which ``aiworker.asyncio.ClusterClient`` drives the same way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from aiworker.client import first_round, placement, waiting
from aiworker.client.api import AICommands
from aiworker.client.driver import Driver
from aiworker.client.jobs import Jobs
from aiworker.client.ops import State
from aiworker.client.reply_lists import PrivateList
from aiworker.client.wait_plan import Enqueue, Enqueued
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import Request
from aiworker.protocol.slots import check_slot
from aiworker.settings import Settings
from aiworker.storage import plans
from aiworker.storage.cluster import (
    LOST,
    Cluster,
    ClusterWires,
    SlotMap,
    require_cluster_support,
)
from aiworker.storage.plans import Commands, execute_commands
from aiworker.storage.redis_options import client_kwargs, decodes, undecoded_options

OWN_OPTIONS = ("prefix", "reply_timeout", "debug", "enable_postprocess")


class Partitions(placement.Partitions):
    """``placement.Partitions`` read on a blocking client, when a pick finds them due."""

    def __init__(self, r: Any, keyspace: Keys, slots: SlotMap | None = None) -> None:
        super().__init__(keyspace, slots)
        self.r = r
        self._lock = threading.Lock()

    def pick(self, device: str, near: str | None = None) -> str:
        self.refresh()
        return super().pick(device, near)

    def refresh(self) -> None:
        with self._lock:
            if not self.due():
                return
        with contextlib.suppress(*LOST):  # keep what was known
            plans.run(self.r, self.refresh_plan())


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

    def private_entry(self, request: Request) -> tuple[str, dict[str, bytes | str]]:
        return placement.private_entry(self.keyspace, request)

    def _enqueue(self, step: Enqueue, reply_list: PrivateList) -> Enqueued:
        """The XADD and a first look at the reply list in one round trip on this thread's own
        connections, sent again while a failover is under way (``placement.after_lost``)."""
        while True:
            commands, added = first_round.commands(self.enqueuer, step, reply_list, self._longest())
            try:
                replies = self.wires.get().pipeline(commands)
                return first_round.enqueued(self.enqueuer, step, reply_list, replies, added)
            except LOST as exc:
                found = placement.after_lost(exc, step, self.enqueuer)
                if found is not None:
                    return found
                time.sleep(placement.FAILOVER_PAUSE_S)


class ClusterClient(Driver, AICommands, Cluster):
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
        require_cluster_support()
        kwargs.setdefault("require_full_coverage", False)
        self.debug = False  # RedisCluster's constructor already runs commands
        super().__init__(*args, **kwargs)
        self.debug = bool(debug)
        self._state = State(Keys(prefix), raw=not enable_postprocess)
        # aiworker's own commands: where the user's replies are decoded, on an undecoded twin
        # (blobs and msgpack replies are bytes)
        self._plain = Cluster(*args, **undecoded_options(kwargs)) if decodes(self) else self
        self._jobs = ClusterJobs(self._plain, self._state.keyspace, reply_timeout)

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
        return execute_commands(self._plain, commands)

    def close(self) -> None:
        self._jobs.close()
        if self._plain is not self:
            self._plain.close()
        super().close()
