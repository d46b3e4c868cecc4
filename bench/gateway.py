"""What the gateway costs a client: ``python -m bench.gateway``.

A private redis-server, one ``aiworker gateway`` process and one CPU worker process. Each row is
the median latency (p50) of one command sent N times by a blocking redis-py client, through the
gateway and against its peer, and their ratio (all from this one run):

* pass-through GET and SET vs the same command sent to Redis directly;
* AI.TENSORSET / AI.TENSORGET of a 1 KB and a 1 MB tensor vs a plain HSET / HGET of the same
  bytes sent to Redis directly;
* AI.MODELEXECUTE through the gateway vs the Python client's ``modelexecute`` (a STUB model);
* the gateway's resident memory with 1,000 idle client connections, minus without them.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from aiworker import Client
from aiworker.embedded import RedisServer

N = int(os.environ.get("BENCH_N", "2000"))
TARGETS = {
    "GET": 1.3, "SET": 1.3, "TENSORSET 1KB": 1.5, "TENSORGET 1KB": 1.5, "TENSORSET 1MB": 1.5,
    "TENSORGET 1MB": 1.5, "MODELEXECUTE": 1.15,
}  # fmt: skip


def p50(call: Callable[[], Any], n: int = N) -> float:
    for _ in range(min(200, n)):  # warm up
        call()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiworker", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(port: int) -> redis.Redis:
    deadline = time.monotonic() + 60
    while True:
        try:
            con = redis.Redis(port=port, protocol=2)
            con.ping()
            return con
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    with RedisServer() as server:
        port = free_port()
        gateway = spawn("gateway", "--redis-url", server.url, "--listen", f"127.0.0.1:{port}")
        worker = spawn("worker", "--redis-url", server.url, "--threads-per-queue", "2")
        try:
            rows = run(server, port, gateway.pid)
        finally:
            for proc in (gateway, worker):
                proc.terminate()
                proc.wait(30)
    print(f"{'command':<16}{'direct/peer µs':>16}{'gateway µs':>12}{'ratio':>8}{'target':>8}")
    for name, direct, through in rows[:-1]:
        print(
            f"{name:<16}{direct * 1e6:>16.1f}{through * 1e6:>12.1f}"
            f"{through / direct:>8.2f}{'<= ' + str(TARGETS[name]):>8}"
        )
    name, before, after = rows[-1]
    print(f"{name}: {(after - before) / 1024:.1f} MB for 1,000 connections (target < 100 MB)")


def run(server: RedisServer, port: int, gateway_pid: int) -> list[tuple[str, float, float]]:
    direct = redis.Redis(port=server.port, protocol=2)
    through = wait_for(port)
    client = Client.from_url(server.url)
    rows = []
    direct.set("k", "v")
    rows.append(("GET", p50(lambda: direct.get("k")), p50(lambda: through.get("k"))))
    rows.append(("SET", p50(lambda: direct.set("k", "v")), p50(lambda: through.set("k", "v"))))
    for label, size in (("1KB", 1024), ("1MB", 1024 * 1024)):
        blob = np.random.default_rng(0).random(size // 4, np.float32).tobytes()
        count = str(size // 4)
        n = N if size < 100_000 else N // 10

        def hset(b: bytes = blob) -> Any:
            return direct.hset("h", "blob", b)

        def tensorset(b: bytes = blob, c: str = count) -> Any:
            return through.execute_command("AI.TENSORSET", "t", "FLOAT", c, "BLOB", b)

        rows.append((f"TENSORSET {label}", p50(hset, n), p50(tensorset, n)))
        rows.append((
            f"TENSORGET {label}",
            p50(lambda: direct.hget("h", "blob"), n),
            p50(lambda: through.execute_command("AI.TENSORGET", "t", "BLOB"), n),
        ))  # fmt: skip
    client.modelstore("m", "STUB", "CPU", b'{"op": "add"}')
    client.tensorset("a", np.ones(4, np.float32))
    client.modelexecute("m", ["a", "a"], ["b"])  # the worker is up
    n = N // 4
    rows.append((
        "MODELEXECUTE",
        p50(lambda: client.modelexecute("m", ["a", "a"], ["b"]), n),
        p50(lambda: through.execute_command(
            "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b"), n),
    ))  # fmt: skip
    time.sleep(0.5)
    before = rss_kb(gateway_pid)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)]
    through.ping()
    time.sleep(1.0)
    after = rss_kb(gateway_pid)
    for sock in idle:
        sock.close()
    rows.append(("idle connections", float(before), float(after)))
    return rows


if __name__ == "__main__":
    main()
