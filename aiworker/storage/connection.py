"""Redis connections tuned for tensors: big values are sent without an extra full copy.

redis-py's hiredis packer copies every argument into one buffer (and turns memoryviews into bytes
first), which for a 500 MB model means two extra copies. Its pure-Python packer instead hands large
arguments to ``sendall`` as they are. ``HybridPacker`` uses hiredis for ordinary commands (faster for
many small arguments) and the Python packer as soon as one argument is large.
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from aiworker.storage import cluster

try:
    from redis._parsers import Encoder
except ImportError:  # pragma: no cover - older redis-py
    from redis.connection import Encoder  # type: ignore[attr-defined,no-redef]

LARGE_ARGUMENT = 64 * 1024


class HybridPacker:
    """A redis-py command packer: hiredis for small commands, zero-copy for large arguments."""

    def __init__(self, encoder: Any) -> None:
        self._small = HiredisRespSerializer()  # type: ignore[no-untyped-call]
        self._large = PythonRespSerializer(6000, encoder.encode)

    def pack(self, *args: Any) -> list[Any]:
        for arg in args:
            if isinstance(arg, (bytes, bytearray, memoryview)) and len(arg) > LARGE_ARGUMENT:
                return self._pack_large(args)
        try:
            return cast("list[Any]", self._small.pack(*args))  # type: ignore[no-untyped-call]
        except Exception:  # hiredis refuses some argument types the Python packer encodes
            return self._pack_large(args)

    def _pack_large(self, args: tuple[Any, ...]) -> list[Any]:
        # a bytearray as a view of itself (no copy): redis-py's encoder took none before 8.x
        viewed = [memoryview(arg) if isinstance(arg, bytearray) else arg for arg in args]
        return cast("list[Any]", self._large.pack(*viewed))  # type: ignore[no-untyped-call]


def install_packer(client: redis.Redis) -> redis.Redis:
    """Make every connection of ``client``'s pool use ``HybridPacker``."""
    kwargs = client.connection_pool.connection_kwargs
    encoder = Encoder(  # type: ignore[no-untyped-call]
        kwargs.get("encoding", "utf-8"),
        kwargs.get("encoding_errors", "strict"),
        kwargs.get("decode_responses", False),
    )
    kwargs["command_packer"] = HybridPacker(encoder)
    return client


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A ``redis.Redis`` for ``url`` (redis://, rediss://, unix://) with the hybrid packer."""
    return install_packer(redis.Redis.from_url(url, **kwargs))


def connect_any(url: str, **kwargs: Any) -> redis.Redis:
    """``connect``, or a ``redis.cluster.RedisCluster`` when ``url`` names a Redis Cluster node
    (asked once: ``INFO cluster``). The cluster client has the same command methods, so it is
    typed as a ``redis.Redis`` here; ``storage.cluster`` has what differs."""
    r = connect(url, **kwargs)
    if not cluster.is_cluster(r):
        return r
    r.close()
    return cast("redis.Redis", cluster.connect(url, **kwargs))
