"""Redis Cluster: jobs/s on a local cluster (3 masters + 3 replicas) with ``queue_partitions`` 1
and 3, next to a single Redis, and what a job costs Redis, the worker and the client there
(``python -m bench.cluster``). The last two columns are each row's worker and client CPU per job
over the single Redis's, from the same run.

Each row runs one worker process (THREADS_PER_QUEUE 3) and ``--clients`` client threads sending
MODELEXECUTE on a trivial STUB model, each client writing its own output key (so outputs and
replies spread over every master). Redis's cost per job is read from every master's
``INFO commandstats`` (commands, those inside Lua scripts included, and the top-level calls that
clients and workers sent) and ``INFO cpu`` deltas; "Redis saturates at" is one core per master divided by the busiest master's
CPU per job. On one machine with a couple of cores, every Redis node, the worker and the clients
share those cores: the table shows the cluster's overhead per job more than its scale (see
bench/README.md for where each setup saturates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from aiworker import Client
from aiworker.embedded import LocalCluster, RedisServer
from aiworker.protocol.keys import Keys
from bench.common import (
    aiworker_worker,
    cpu_seconds,
    markdown_table,
    process,
    redis_cpu,
    throughput,
    wait_until,
)

# Commands clients and workers send per job themselves (the rest of commandstats runs inside
# scripts; the client's model metadata read is cached after its first job).
TOP_LEVEL = {
    "xadd", "blmove", "lrem", "lrange", "ltrim", "del", "xreadgroup", "evalsha", "eval", "wait"
}  # fmt: skip


def _stats(nodes: list[redis.Redis]) -> tuple[dict[str, int], list[float]]:
    """Calls per command summed over ``nodes``, and each node's CPU seconds (user + sys)."""
    calls: dict[str, int] = {}
    cpu = []
    for node in nodes:
        for name, value in node.info("commandstats").items():
            command = name[len("cmdstat_") :]
            calls[command] = calls.get(command, 0) + int(value["calls"])
        cpu.append(redis_cpu(node))
    return calls, cpu


def measure(
    url: str, nodes: list[redis.Redis], partitions: int, clients: int, seconds: float
) -> dict[str, Any]:
    """jobs/s and Redis's cost per job for one worker serving ``partitions`` streams."""
    client = Client.from_url(url, reply_timeout=30)
    client.modelstore("bench:m", "STUB", "CPU", json.dumps({"op": "add"}).encode())
    client.tensorset("bench:a", np.ones(4, dtype=np.float32))
    args = aiworker_worker(url, 3, "--queue-partitions", str(partitions))
    with process(args) as worker:
        keys = Keys()
        wait_until(lambda: bool(client.zcard(keys.workers)), what="worker heartbeat")
        time.sleep(2.5)  # clients see the partitions the worker announces

        def make_call() -> Callable[[], object]:
            n = len(made)
            made.append(n)
            return lambda: client.modelexecute("bench:m", ["bench:a", "bench:a"], [f"out{n}"])

        made: list[int] = []
        throughput(make_call, clients, 1.0)  # warm up: model loaded, partitions known
        for node in nodes:
            node.config_resetstat()
        before = _stats(nodes)
        done_before = client.infoget("bench:m")["calls"]
        made.clear()
        worker_cpu, client_cpu = cpu_seconds(worker.pid), cpu_seconds(os.getpid())
        rate = throughput(make_call, clients, seconds)
        worker_cpu = cpu_seconds(worker.pid) - worker_cpu
        client_cpu = cpu_seconds(os.getpid()) - client_cpu
        jobs = client.infoget("bench:m")["calls"] - done_before
        calls, cpu = _stats(nodes)
    client.close()
    used = {name: n - before[0].get(name, 0) for name, n in calls.items() if "config" not in name}
    used = {name: n for name, n in used.items() if n > 0}
    per_node = [after - start for after, start in zip(cpu, before[1], strict=True)]
    return {
        "rate": rate,
        "all": sum(used.values()) / jobs,
        "top": sum(n for name, n in used.items() if name in TOP_LEVEL) / jobs,
        "cpu_us": sum(per_node) / jobs * 1e6,
        "busiest": max(per_node) / sum(per_node),
        "worker_us": worker_cpu / jobs * 1e6,
        "client_us": client_cpu / jobs * 1e6,
        "by_command": {name: round(n / jobs, 2) for name, n in sorted(used.items())},
    }


def run(clients: int, seconds: float) -> tuple[str, dict[str, dict[str, Any]]]:
    """The markdown table, and the figures behind it."""
    results: dict[str, dict[str, Any]] = {}
    with RedisServer(extra_args=["--maxmemory-policy", "noeviction"]) as server:
        node = redis.Redis(port=server.port)
        results["single Redis"] = measure(server.url, [node], 1, clients, seconds)
    with LocalCluster() as cluster:
        masters = [cluster.node(port) for port in cluster.master_ports()]
        for partitions in (1, 3):
            cluster.flushall()
            name = f"cluster, queue_partitions {partitions}"
            results[name] = measure(cluster.url, masters, partitions, clients, seconds)
    single = results["single Redis"]
    rows = [
        [
            name,
            r["rate"],
            r["top"],
            r["all"],
            r["cpu_us"],
            f"{r['busiest']:.0%}",
            1e6 / (r["cpu_us"] * r["busiest"]),
            r["worker_us"],
            r["client_us"],
            f"{r['worker_us'] / single['worker_us']:.2f}x",
            f"{r['client_us'] / single['client_us']:.2f}x",
        ]
        for name, r in results.items()
    ]
    headers = [
        f"setup ({clients} client threads, 1 worker x 3 threads)",
        "jobs/s",
        "calls sent per job",
        "Redis commands per job (Lua's too)",
        "Redis CPU us per job (all masters)",
        "busiest master's share",
        "Redis saturates at jobs/s",
        "worker CPU us per job",
        "client CPU us per job",
        "worker CPU vs single",
        "client CPU vs single",
    ]
    return markdown_table(headers, rows), results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--detail", action="store_true", help="Commands per job, each.")
    args = parser.parse_args(argv)
    table, results = run(args.clients, args.seconds)
    print(f"Machine: {sys.platform}, Python {sys.version.split()[0]}\n")
    print(table)
    if args.detail:
        for name, r in results.items():
            print(f"\n{name}: {r['by_command']}")


if __name__ == "__main__":
    main()
