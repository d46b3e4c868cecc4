"""What the gateway costs a client: ``python -m bench.gateway [--rounds 5] [--loop auto]``.

A private redis-server, one ``aiworker gateway`` process and one CPU worker process. Each row
compares one command sent through the gateway with its peer sent without it, by one blocking
redis-py client:

* pass-through GET and SET vs the same command sent to Redis directly;
* AI.TENSORSET / AI.TENSORGET of a 1 KB and a 1 MB tensor vs a plain HSET / HGET of the same
  bytes sent to Redis directly;
* AI.MODELEXECUTE through the gateway vs the Python client's ``modelexecute`` (a STUB model);
* for scale, no target: AI.TENSORSET / AI.TENSORGET of 1 KB vs the Python client's ``tensorset``
  / ``tensorget`` (the same Redis work: a Lua call, an HGETALL); GET and AI.TENSORGET 1 KB through
  the gateway in RESP3 vs RESP2; GET and a 1 MB HGET through a bare byte-forwarding proxy on the
  same event loop (what any extra hop through one Python process costs), and GET through
  ``socat`` when it is installed;
* the gateway's resident memory with 1,000 idle client connections, minus without them.

The machine is shared and noisy, so the peers alternate request by request: within a round both
see the same load. A round gives each side's median latency (p50) and their ratio; the table shows
the median over the rounds, the ratio's range, and the gateway's CPU per request
(``/proc/<pid>/stat``, which only the gateway's requests touch).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from aiworker import Client
from aiworker.embedded import RedisServer
from bench.common import aiworker_worker, cpu_seconds, process

# A proxy that only forwards bytes: the least any gateway hop can cost (argv: port, Redis port,
# event loop).
FORWARDER = """
import asyncio, sys
class Pipe(asyncio.Protocol):
    def __init__(self, peer=None): self.peer, self.pending = peer, []
    def connection_made(self, transport):
        self.transport = transport
        if self.peer is None:
            asyncio.ensure_future(self.connect())
    async def connect(self):
        loop = asyncio.get_running_loop()
        _, self.peer = await loop.create_connection(lambda: Pipe(self), "127.0.0.1", int(sys.argv[2]))
        self.peer.transport.write(b"".join(self.pending))
    def data_received(self, data):
        if self.peer is None or not hasattr(self.peer, "transport"): self.pending.append(data)
        else: self.peer.transport.write(data)
async def main():
    server = await asyncio.get_running_loop().create_server(Pipe, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
if sys.argv[3] == "uvloop":
    import uvloop; uvloop.run(main())
else:
    asyncio.run(main())
"""


@dataclass
class Row:
    name: str
    peer: str
    target: float | None
    n: int
    peer_call: Callable[[], Any]
    gateway_call: Callable[[], Any]
    ratios: list[float]
    peer_s: list[float]
    gateway_s: list[float]
    cpu_s: list[float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def connect(port: int) -> redis.Redis:
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


def one_round(row: Row, pid: int) -> None:
    """``row.n`` requests each way, alternating; the round's p50s, ratio and gateway CPU."""
    for _ in range(min(100, row.n)):
        row.peer_call()
        row.gateway_call()
    peer, through = [], []
    clock = time.perf_counter
    cpu = cpu_seconds(pid)
    for _ in range(row.n):
        started = clock()
        row.peer_call()
        middle = clock()
        row.gateway_call()
        through.append(clock() - middle)
        peer.append(middle - started)
    row.cpu_s.append((cpu_seconds(pid) - cpu) / row.n)
    row.peer_s.append(statistics.median(peer))
    row.gateway_s.append(statistics.median(through))
    row.ratios.append(row.gateway_s[-1] / row.peer_s[-1])


@contextmanager
def started(args: argparse.Namespace) -> Iterator[tuple[RedisServer, dict[str, Any]]]:
    """Redis, the gateway, a worker and the forwarders; their ports and the gateway's pid."""
    python = sys.executable
    with RedisServer() as server, ExitStack() as stack:
        ports = {"gateway": free_port(), "forwarder": free_port(), "socat": free_port()}
        gateway = stack.enter_context(process([
            python, "-m", "aiworker", "gateway", "--redis-url", server.url, "--listen",
            f"127.0.0.1:{ports['gateway']}", "--loop", args.loop,
        ]))  # fmt: skip
        stack.enter_context(process(aiworker_worker(server.url)))
        loop = "asyncio" if args.loop == "asyncio" else "uvloop"
        try:
            import uvloop  # noqa: F401
        except ImportError:
            loop = "asyncio"
        stack.enter_context(
            process([python, "-c", FORWARDER, str(ports["forwarder"]), str(server.port), loop])
        )
        if shutil.which("socat"):
            stack.enter_context(process([
                "socat", f"TCP-LISTEN:{ports['socat']},bind=127.0.0.1,reuseaddr,fork",
                f"TCP:127.0.0.1:{server.port}",
            ]))  # fmt: skip
        else:
            del ports["socat"]
        yield server, {"ports": ports, "pid": gateway.pid, "loop": loop}


def rows(server: RedisServer, ports: dict[str, int], n: int) -> list[Row]:
    direct = redis.Redis(port=server.port, protocol=2)
    through = connect(ports["gateway"])
    client = Client.from_url(server.url)
    direct.set("k", "v")

    def row(name: str, peer: str, target: float | None, count: int, a: Any, b: Any) -> Row:
        return Row(name, peer, target, count, a, b, [], [], [], [])

    out = [
        row("GET", "GET to Redis", 1.3, n, lambda: direct.get("k"), lambda: through.get("k")),
        row("SET", "SET to Redis", 1.3, n, lambda: direct.set("k", "v"),
            lambda: through.set("k", "v")),
    ]  # fmt: skip
    for label, size in (("1 KB", 1024), ("1 MB", 1024 * 1024)):
        blob = np.random.default_rng(0).random(size // 4, np.float32).tobytes()
        count = max(20, n // 10) if size > 100_000 else n
        tensor = f"t{size}"
        direct.hset(f"h{size}", "blob", blob)
        through.execute_command("AI.TENSORSET", tensor, "FLOAT", size // 4, "BLOB", blob)
        out.append(row(
            f"AI.TENSORSET {label}", "HSET of the bytes", 1.5, count,
            lambda b=blob, s=size: direct.hset(f"h{s}", "blob", b),
            lambda b=blob, t=tensor, c=size // 4: through.execute_command(
                "AI.TENSORSET", t, "FLOAT", c, "BLOB", b),
        ))  # fmt: skip
        out.append(row(
            f"AI.TENSORGET {label}", "HGET of the bytes", 1.5, count,
            lambda s=size: direct.hget(f"h{s}", "blob"),
            lambda t=tensor: through.execute_command("AI.TENSORGET", t, "BLOB"),
        ))  # fmt: skip
    client.modelstore("m", "STUB", "CPU", b'{"op": "add"}')
    client.tensorset("a", np.ones(4, np.float32))
    client.modelexecute("m", ["a", "a"], ["b"])  # the worker is up
    out.append(row(
        "AI.MODELEXECUTE", "`Client.modelexecute`", 1.15, max(50, n // 4),
        lambda: client.modelexecute("m", ["a", "a"], ["b"]),
        lambda: through.execute_command(
            "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b"),
    ))  # fmt: skip
    array = np.ones(256, np.float32)
    blob = array.tobytes()
    out.append(row(
        "AI.TENSORSET 1 KB", "`Client.tensorset`", None, n,
        lambda: client.tensorset("t1024", array),
        lambda: through.execute_command("AI.TENSORSET", "t1024", "FLOAT", 256, "BLOB", blob),
    ))  # fmt: skip
    out.append(row(
        "AI.TENSORGET 1 KB", "`Client.tensorget`", None, n,
        lambda: client.tensorget("t1024"),
        lambda: through.execute_command("AI.TENSORGET", "t1024", "BLOB"),
    ))  # fmt: skip
    for name in ("forwarder", "socat"):
        if name in ports:
            hop = connect(ports[name])
            out.append(row(
                f"GET, {name}", "GET to Redis", None, n, lambda: direct.get("k"),
                lambda h=hop: h.get("k"),
            ))  # fmt: skip
    resp3 = redis.Redis(port=ports["gateway"], protocol=3)  # HELLO 3: RESP3 through the gateway
    out.append(row(
        "GET, RESP3", "GET through the gateway, RESP2", None, n, lambda: through.get("k"),
        lambda: resp3.get("k"),
    ))  # fmt: skip
    out.append(row(
        "AI.TENSORGET 1 KB, RESP3", "the same in RESP2", None, n,
        lambda: through.execute_command("AI.TENSORGET", "t1024", "BLOB"),
        lambda: resp3.execute_command("AI.TENSORGET", "t1024", "BLOB"),
    ))  # fmt: skip
    hop = connect(ports["forwarder"])
    out.append(row(
        "HGET 1 MB, forwarder", "HGET to Redis", None, max(20, n // 10),
        lambda: direct.hget(f"h{1 << 20}", "blob"),
        lambda: hop.hget(f"h{1 << 20}", "blob"),
    ))  # fmt: skip
    return out


def idle_connections_mb(port: int, pid: int) -> float:
    time.sleep(0.5)
    before = rss_kb(pid)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)]
    connect(port).ping()
    time.sleep(1.0)
    after = rss_kb(pid)
    for sock in idle:
        sock.close()
    return (after - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=2000, help="requests per round (fewer for 1 MB)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args()
    with started(args) as (server, running):
        ports, pid = running["ports"], running["pid"]
        table = rows(server, ports, args.n)
        for _ in range(args.rounds):
            for row in table:
                if ", " in row.name:
                    one_round(row, pid)  # the gateway's CPU is not part of this row
                    row.cpu_s[-1] = float("nan")
                else:
                    one_round(row, pid)
        memory = idle_connections_mb(ports["gateway"], pid)
    print(f"{args.rounds} rounds of alternating requests; forwarder loop: {running['loop']}")
    print("| command | peer | peer µs | gateway µs | ratio (range) | gateway CPU µs | target |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        ratio = statistics.median(row.ratios)
        cpu = statistics.median(row.cpu_s)
        target = "" if row.target is None else f"<= {row.target}"
        print(
            f"| {row.name} | {row.peer} | {statistics.median(row.peer_s) * 1e6:.1f} "
            f"| {statistics.median(row.gateway_s) * 1e6:.1f} "
            f"| {ratio:.2f} ({min(row.ratios):.2f}-{max(row.ratios):.2f}) "
            f"| {'' if cpu != cpu else f'{cpu * 1e6:.0f}'} | {target} |"
        )
    print(f"1,000 idle connections: +{memory:.1f} MB in the gateway (target < 100 MB)")


if __name__ == "__main__":
    main()
