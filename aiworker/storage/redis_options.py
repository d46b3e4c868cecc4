"""redis-py connection options derived from Settings: TLS files, reconnect policy, socket timeouts.

Workers reconnect with redis-py's own ``Retry`` + ``ExponentialBackoff`` (every command, pipelines
and scripts included), so a Redis restart or a dropped connection costs a few retries, not a dead
thread. Blocking stream reads must never trip the socket timeout: a worker connection gets a socket
timeout comfortably above ``block_ms`` (a dead peer is still noticed, unlike with no timeout), and
``block_ms_for`` shortens the block when the URL itself asks for a smaller socket timeout.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from aiworker.protocol.errors import ConfigError
from aiworker.settings import Settings

# Backoff 50 ms, 100 ms, ... capped at 2 s; 10 retries ride out roughly a 15 s outage per command.
# Longer outages surface as ConnectionError to the worker loops, which log and go round again.
RECONNECT_BASE_S = 0.05
RECONNECT_CAP_S = 2.0
RECONNECT_RETRIES = 10
# Seconds a worker socket may stay silent beyond the longest blocking read.
SOCKET_TIMEOUT_MARGIN_S = 10.0


def tls_kwargs(settings: Settings) -> dict[str, Any]:
    """``ssl_*`` arguments for a ``rediss://`` URL; TLS files with a plain URL are a config error."""
    files = {
        "ssl_ca_certs": settings.tls_ca_cert,
        "ssl_certfile": settings.tls_cert,
        "ssl_keyfile": settings.tls_key,
    }
    given = {name: path for name, path in files.items() if path}
    if urlsplit(settings.redis_url).scheme != "rediss":
        if given:
            raise ConfigError("tls_ca_cert/tls_cert/tls_key need a rediss:// redis_url")
        return {}
    return given


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments for clients (CLI, ``Client.from_settings``): TLS only, redis-py defaults else."""
    return tls_kwargs(settings)


def reconnect_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=RECONNECT_CAP_S, base=RECONNECT_BASE_S), RECONNECT_RETRIES)


def worker_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments for a worker's connection pool: TLS, reconnect with backoff, safe timeouts."""
    kwargs = tls_kwargs(settings)
    kwargs["retry"] = reconnect_retry()
    kwargs["retry_on_error"] = [redis.ConnectionError, redis.TimeoutError]
    if urlsplit(settings.redis_url).scheme != "unix":  # TCP keepalive: no option of a Unix socket
        kwargs["socket_keepalive"] = True
    kwargs["socket_timeout"] = settings.socket_timeout or (
        settings.block_ms / 1000 + SOCKET_TIMEOUT_MARGIN_S
    )
    return kwargs


def connection_kwargs(r: redis.Redis) -> dict[str, Any]:
    """The connection settings of a client (or of a cluster client's node connections)."""
    pool = getattr(r, "connection_pool", None)
    if pool is None:  # redis.cluster.RedisCluster
        return dict(r.get_connection_kwargs())  # type: ignore[attr-defined]
    return dict(pool.connection_kwargs)


def block_ms_for(r: redis.Redis, block_ms: int) -> int:
    """``block_ms``, shortened to stay well below the pool's socket timeout if one is set."""
    timeout = connection_kwargs(r).get("socket_timeout")
    if not timeout:
        return block_ms
    limit_ms = int(float(timeout) * 1000)
    margin_ms = max(100, limit_ms // 5)
    return max(1, min(block_ms, limit_ms - margin_ms))


def decodes(r: Any) -> bool:
    """Whether a redis-py client of any kind decodes its replies (``decode_responses``)."""
    return bool(r.get_encoder().decode_responses)


def undecoded_pool(pool: Any, max_connections: int) -> Any:
    """A new pool of ``pool``'s kind and connection settings (server, AUTH, TLS, timeouts) whose
    replies are not decoded: aiworker's own commands read blobs and msgpack replies whatever
    ``decode_responses`` the user's commands asked for."""
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return type(pool)(
        connection_class=pool.connection_class, max_connections=max_connections, **kwargs
    )


def undecoded_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A redis-py cluster client's arguments for a twin whose replies are not decoded (see
    ``undecoded_pool``); a ``url``'s own ``decode_responses`` is dropped: it would win."""
    options = {**kwargs, "decode_responses": False}
    url = options.get("url")
    if url:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, True) if k != "decode_responses"]
        options["url"] = parts._replace(query=urlencode(query)).geturl()
    return options
