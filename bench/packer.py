"""Which redis-py command packer is faster for big values? (``python -m bench.packer``)

redis-py with hiredis packs every command into one buffer with ``hiredis.pack_command`` (after
turning memoryviews into bytes): two extra full copies of a big value. The pure-Python packer hands
big arguments to ``sendall`` untouched. aiworker's ``HybridPacker`` uses hiredis for small commands
and the Python path once an argument passes 64 KiB; this prints the time of one HSET per size.
"""

from __future__ import annotations

import os

import redis
from redis._parsers import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from aiworker.embedded import RedisServer
from aiworker.storage.connection import HybridPacker
from bench.common import markdown_table, median_time

SIZES = [100, 4 * 1024, 64 * 1024, 1 << 20, 16 << 20, 128 << 20]


def client(url: str, packer: str) -> redis.Redis:
    r = redis.Redis.from_url(url)
    encoder = Encoder("utf-8", "strict", False)
    kwargs = r.connection_pool.connection_kwargs
    kwargs["command_packer"] = {
        "hiredis": HiredisRespSerializer(),
        "python": PythonRespSerializer(6000, encoder.encode),
        "hybrid": HybridPacker(encoder),
    }[packer]
    return r


def main() -> None:
    rows = []
    with RedisServer() as server:
        clients = {name: client(server.url, name) for name in ("hiredis", "python", "hybrid")}
        for size in SIZES:
            value = memoryview(os.urandom(size))
            repeat = 200 if size < (1 << 20) else 7
            times = {
                name: median_time(lambda c=c, v=value: c.hset("k", "blob", v), repeat)  # type: ignore[misc]
                for name, c in clients.items()
            }
            rows.append(
                [f"{size:,}", times["hiredis"] * 1e3, times["python"] * 1e3, times["hybrid"] * 1e3,
                 times["hiredis"] / times["hybrid"]]
            )  # fmt: skip
    print(
        markdown_table(["bytes", "hiredis ms", "python ms", "hybrid ms", "hiredis / hybrid"], rows)
    )


if __name__ == "__main__":
    main()
