"""The Redis server a worker talks to: Redis 7.0 or later, or Valkey (which reports the Redis
release it is compatible with, 7.2). Older ones lack what aiworker's Lua scripts and recovery
use (script flags such as ``allow-oom``, XAUTOCLAIM of 6.2): a worker refuses to start on one,
saying so, rather than fail job by job."""

from __future__ import annotations

import logging
from typing import Any

import redis

from aiworker.protocol.errors import ConfigError

log = logging.getLogger("aiworker")

OLDEST = (7, 0)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _servers(info: dict[str, Any]) -> list[dict[str, Any]]:
    """``INFO server``'s sections: one, or one per node (redis-py's cluster client)."""
    if "redis_version" in info:
        return [info]
    return [section for section in info.values() if isinstance(section, dict)]


def too_old(info: dict[str, Any]) -> str | None:
    """The version of a server in ``info`` (``INFO server``) older than ``OLDEST``, if any."""
    for server in _servers(info):
        version = str(server.get("redis_version", ""))
        if version and _version(version) < OLDEST:
            return version
    return None


def require_supported(r: Any) -> None:
    """``ConfigError`` when ``r``'s server (any node of a cluster) is older than ``OLDEST``;
    nothing when INFO is refused (it is then left to the first call that needs more)."""
    try:
        info = r.info("server")
    except redis.ResponseError as exc:
        log.debug("Redis version not checked: INFO refused (%s)", exc)
        return
    version = too_old(info)
    if version is not None:
        raise ConfigError(
            f"Redis {version} is too old: aiworker needs Redis "
            f"{'.'.join(map(str, OLDEST))} or later (or Valkey)"
        )
