"""The asyncio client: ``aiworker.client.api``'s methods, each returning an awaitable."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from aiworker.asyncio.cluster import ClusterClient
from aiworker.asyncio.driver import AsyncDriver, printing
from aiworker.asyncio.jobs import AsyncJobs
from aiworker.client.api import AICommands
from aiworker.client.ops import State
from aiworker.client.waiting import DEFAULT_REPLY_TIMEOUT_S
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.settings import Settings
from aiworker.storage.cluster import is_cluster
from aiworker.storage.redis_options import client_kwargs, decodes, undecoded_pool

# redis-py's pools hold this many connections unless told otherwise (2**31).
UNBOUNDED = redis.asyncio.ConnectionPool().max_connections
OWN_OPTIONS = ("prefix", "reply_timeout", "debug", "enable_postprocess", "max_concurrency")


class Client(AsyncDriver, AICommands, redis.asyncio.Redis):  # type: ignore[misc]
    """``aiworker.Client``'s API on ``redis.asyncio``: ``await con.tensorset(...)``,
    ``await con.modelexecute(...)``, ``await con.dag(...)...execute()``, plus every redis-py
    asyncio command. Same arguments as the blocking client (``debug``, ``enable_postprocess``,
    ``prefix``, ``reply_timeout``); jobs always share the client's one reply list. The RedisAI
    methods' Redis commands beyond ``max_connections`` (or ``max_concurrency``) at once wait
    their turn."""

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
        super().__init__(*args, **kwargs)
        self.debug = bool(debug)
        # however many coroutines call at once, at most this many connections carry their reads
        # and writes (jobs add one writer and one reader), within ``max_connections``
        pool = self.connection_pool
        bound = max(1, min(max_concurrency, pool.max_connections))
        self._batches = asyncio.Semaphore(bound)
        # where the user's pool decodes replies (blobs and msgpack must not be) or is bounded
        # (the user's commands could take every connection: MaxConnectionsError), those
        # connections are a pool of their own; else the user's (any kind of pool: Sentinel's)
        if decodes(self) or pool.max_connections < UNBOUNDED:
            self._plain = redis.asyncio.Redis(connection_pool=undecoded_pool(pool, bound + 2))
            self._plain.auto_close_connection_pool = True
        else:
            self._plain = redis.asyncio.Redis(connection_pool=pool)
        self._state = State(Keys(prefix), raw=not enable_postprocess)
        self._jobs = AsyncJobs(self._plain, self._state.keyspace, reply_timeout, self._send_bounded)
        if self.debug:
            self.execute_command = printing(super().execute_command)  # type: ignore[method-assign]

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Client | ClusterClient:  # type: ignore[override]
        """A client for ``url``; an ``aiworker.asyncio.ClusterClient`` when the server is a Redis
        Cluster node. As the blocking ``Client.from_url``, that is asked once, now (``INFO
        cluster``, on a blocking connection closed at once: a moment's wait for the event loop
        where the client is made); a server that cannot be reached now gives a ``Client``."""
        own = {k: kwargs.pop(k) for k in OWN_OPTIONS if k in kwargs}
        if _is_cluster(url, kwargs):
            return ClusterClient.from_url(url, **own, **kwargs)
        pool = redis.asyncio.ConnectionPool.from_url(url, **kwargs)
        client = cls(connection_pool=pool, **own)
        client.auto_close_connection_pool = True
        return client

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Client | ClusterClient:
        """A client for ``settings.redis_url`` with its prefix and TLS files."""
        kwargs = {**client_kwargs(settings), **kwargs}
        return cls.from_url(settings.redis_url, prefix=settings.prefix, **kwargs)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self._jobs.close()
        await self._plain.aclose()
        await super().aclose(close_connection_pool)


# The longest the question may hold the event loop when the server does not answer.
PROBE_TIMEOUT_S = 2.0


def _is_cluster(url: str, kwargs: dict[str, Any]) -> bool:
    """Whether ``url`` names a Redis Cluster node (``storage.cluster.is_cluster``), asked within
    ``PROBE_TIMEOUT_S`` (or the client's own shorter timeouts), once: the URL's own options
    (``?socket_timeout=30``) are bounded too, and no retry (``retry_on_timeout``, ``retry``)
    asks again."""
    probe = None
    try:
        probe = redis.Redis.from_url(url, **kwargs)
        options = probe.connection_pool.connection_kwargs
        for name in ("socket_connect_timeout", "socket_timeout"):
            options[name] = min(options.get(name) or PROBE_TIMEOUT_S, PROBE_TIMEOUT_S)
        options["retry"] = Retry(NoBackoff(), 0)
        return is_cluster(probe)
    except (redis.ConnectionError, redis.TimeoutError, TypeError):
        return False  # (TypeError: an option only redis.asyncio takes)
    finally:
        if probe is not None:
            probe.close()
