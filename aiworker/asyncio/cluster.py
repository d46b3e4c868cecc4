"""``aiworker.asyncio.ClusterClient``: the asyncio client's API on Redis Cluster, built on
redis-py's asyncio cluster client (``redis.asyncio.cluster.RedisCluster``), as the blocking
``aiworker.ClusterClient`` is on ``redis.cluster.RedisCluster``.

The same methods as ``aiworker.asyncio.Client``, with the cluster's rules and costs, those of the
blocking ``ClusterClient`` (README "Redis Cluster"; ``client.placement`` holds what both share):

* a job's written keys (OUTPUTS, PERSIST) share one hash slot, or the request fails with RedisAI's
  ``CROSSSLOT Keys in request don't hash to the same slot`` before it is queued; its private reply
  list takes their hash tag;
* a job goes to one of its device queue's partitions among the streams live workers announce, one
  on its reply key's master if there is one;
* a job's round trip (XADD and the first look at its reply list) goes through the client's
  ``AsyncClusterWire``, MOVED and ASK followed; it rides out a failover (its XADD is sent again,
  to the same stream, until the wait's own limit, never once the cluster answered it);
* Redis commands off the job path (tensors, models, scripts, statistics) go through redis-py's
  cluster client, a transaction as one MULTI/EXEC per hash slot.

``Client.from_url`` of ``aiworker.asyncio`` returns one when the server is a cluster node.
Pipelines are redis-py's cluster pipelines (Redis commands only).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from redis.asyncio.cluster import RedisCluster

from aiworker.asyncio.cluster_jobs import AsyncClusterJobs
from aiworker.asyncio.driver import AsyncDriver, printing
from aiworker.client.api import AICommands
from aiworker.client.ops import State
from aiworker.client.waiting import DEFAULT_REPLY_TIMEOUT_S
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.settings import Settings
from aiworker.storage.cluster import cover_async, require_cluster_support
from aiworker.storage.redis_options import client_kwargs, decodes, undecoded_options


class ClusterClient(AsyncDriver, AICommands, RedisCluster):  # type: ignore[misc]
    """``aiworker.ClusterClient``'s methods as awaitables (see the module docstring).

    ``ClusterClient(debug=False, enable_postprocess=True, *args, prefix=..., reply_timeout=...,
    max_concurrency=16, **kwargs)``, the rest going to ``redis.asyncio.cluster.RedisCluster``
    (``host``/``port`` of any node, ``startup_nodes``, ...). Jobs waiting for their replies hold
    a connection each; ``max_connections`` given, no more than that many to one node (the jobs
    beyond it wait their turn), else a burst of jobs opens as many (Redis' ``maxclients``);
    ``ClusterClient.from_url("redis://node:6379")``. Slots of a failed master need not all be
    served for the others to be used (``require_full_coverage=False``).
    """

    def __init__(
        self,
        debug: Any = False,
        enable_postprocess: bool = True,
        *args: Any,
        prefix: str = DEFAULT_PREFIX,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT_S,
        max_concurrency: int = 16,
        **kwargs: Any,
    ) -> None:
        require_cluster_support()
        kwargs.setdefault("require_full_coverage", False)
        # given, redis-py's bound on each node's connections bounds the jobs' too
        bound = kwargs.get("max_connections")
        job_connections = max(1, int(bound)) if bound is not None else None
        super().__init__(*args, **kwargs)
        self.debug = bool(debug)
        # however many coroutines call at once, at most this many carry Redis commands (jobs
        # hold a connection each while they wait, as blocking threads do); within
        # ``max_connections``, which redis-py's node pools enforce by failing the command
        bounded = max_concurrency if job_connections is None else job_connections
        self._batches = asyncio.Semaphore(max(1, min(max_concurrency, bounded)))
        self._state = State(Keys(prefix), raw=not enable_postprocess)
        # aiworker's own commands: where the user's replies are decoded, on an undecoded twin
        # (blobs and msgpack replies are bytes); the jobs' wire reads undecoded on any
        self._plain = RedisCluster(*args, **undecoded_options(kwargs)) if decodes(self) else self
        self._jobs = AsyncClusterJobs(
            self, self._state.keyspace, reply_timeout, job_connections, self._send_bounded
        )
        if self.debug:
            self.execute_command = printing(self.execute_command)  # type: ignore[method-assign]

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await cover_async(self)  # a new client's map read, or one that lacks a slot read again
        return await super().execute_command(*args, **kwargs)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ClusterClient:
        kwargs.pop("retry_on_error", None)  # the cluster client retries lost nodes itself
        client = super().from_url(url, **kwargs)
        assert isinstance(client, ClusterClient)
        return client

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ClusterClient:
        """A client for ``settings.redis_url`` (any node) with its prefix and TLS files."""
        kwargs = {**client_kwargs(settings), **kwargs}
        return cls.from_url(settings.redis_url, prefix=settings.prefix, **kwargs)

    async def aclose(self) -> None:
        """Close the client: the jobs waiting end with ``ClientClosed``. redis-py before 8 calls
        this itself to start over after a lost node or a failover (its next command connects
        again): then only its connections go, and the jobs wait on."""
        if not _called_by_redis_py():
            await self._close_own()
        await super().aclose()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._close_own()
        await super().__aexit__(*exc_info)  # type: ignore[no-untyped-call]

    async def _close_own(self) -> None:
        """End the jobs' waits; close the undecoded twin, if any."""
        await self._jobs.close()
        if self._plain is not self:
            await self._plain.aclose()


def _called_by_redis_py() -> bool:
    """Whether the caller of the calling function is redis-py's own code."""
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
    return caller is not None and str(caller.f_globals.get("__name__", "")).startswith("redis.")
