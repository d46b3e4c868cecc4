"""What one Redis round trip costs the calling process, by client: ``python -m bench.callcost``.

CPU seconds of this process (``time.process_time``: every thread, so a client doing its work on
background threads is charged for them too) per PING and per HMGET, against a private Redis. The
worker's hot path uses ``aiworker.storage.wire.Wire`` because of this table; valkey-glide's sync
client is measured when it is installed (``pip install valkey-glide-sync``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from aiworker.embedded import RedisServer
from aiworker.storage.wire import Wire
from bench.common import markdown_table

N = 5000


def cpu_us(call: Callable[[], object]) -> float:
    for _ in range(200):
        call()
    started = time.process_time()
    for _ in range(N):
        call()
    return (time.process_time() - started) / N * 1e6


def clients(port: int) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    r = redis.Redis(port=port)
    connection = redis.Connection(port=port)
    connection.connect()

    def direct(*command: object) -> object:
        connection.send_command(*command)  # type: ignore[no-untyped-call]
        return connection.read_response()

    wire = Wire(r.connection_pool)
    out: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "redis-py Redis": (r.ping, lambda: r.hmget("h", ["a", "b"])),
        "redis-py Connection, used directly": (
            lambda: direct("PING"),
            lambda: direct("HMGET", "h", "a", "b"),
        ),
        "aiworker Wire (hiredis on the socket)": (
            lambda: wire.execute("PING"),
            lambda: wire.execute("HMGET", "h", "a", "b"),
        ),
    }
    try:
        from glide_sync import GlideClient, GlideClientConfiguration, NodeAddress
    except ImportError:
        return out
    glide = GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", port)]))
    out["valkey-glide sync"] = (glide.ping, lambda: glide.custom_command(["HMGET", "h", "a", "b"]))
    return out


def main() -> None:
    with RedisServer() as server:
        rows = []
        for name, (ping, hmget) in clients(server.port).items():
            rows.append([name, cpu_us(ping), cpu_us(hmget)])
        base = rows[0][1]
        for row in rows:
            row.append(row[1] / base)
        print(markdown_table(["client", "PING, CPU us", "HMGET, CPU us", "x redis-py"], rows))


if __name__ == "__main__":
    main()
