"""Many concurrent requests from one process: how the clients wait for their replies.

    python -m bench.replies [--requests 1000] [--threads 64] [--worker-threads 2]

Starts a private redis-server and ``python -m aiworker worker``, stores a STUB ``add`` model (no
compute: what is measured is the way in and out) and sends ``--requests`` MODELEXECUTE requests
at once:

* ``asyncio``: one ``aiworker.asyncio.Client``, every request a task (``asyncio.gather``): one
  writer pipelines the XADDs, one reader reads all replies off the client's reply list;
* ``sync, private lists``: one blocking ``Client`` shared by ``--threads`` threads, each request
  with its own reply list (the default);
* ``sync, shared list``: the same with ``shared_replies=True`` (one reply list, a reader thread);
* then one request at a time from one client: requests/s, this process' CPU per job, and Redis's
  time in commands per job (INFO commandstats, the worker's commands included).

Latency is per request from the call to its result (so it includes waiting behind the others of
the burst); connections are those the client's pool opened. Ratios come from one run on the same
machine; other load on it moves the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

import aiworker.asyncio
from aiworker import Client
from aiworker.embedded import RedisServer
from bench.common import aiworker_worker, markdown_table, percentile, process, wait_until


def pool_connections(client: Any) -> int:
    pool = client.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


def row(name: str, latencies: list[float], elapsed: float, connections: int) -> list[object]:
    return [
        name,
        connections,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        len(latencies) / elapsed,
    ]


def run_asyncio(url: str, requests: int) -> list[object]:
    async def main() -> list[object]:
        con = aiworker.asyncio.Client.from_url(url)
        await con.modelexecute("m", ["a", "a"], ["w"])  # the model's queue, cached

        async def one(i: int) -> float:
            started = time.perf_counter()
            assert await con.modelexecute("m", ["a", "a"], [f"c{i}"]) == "OK"
            return time.perf_counter() - started

        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(requests)))
        elapsed = time.perf_counter() - started
        result = row("asyncio, one client", list(latencies), elapsed, pool_connections(con))
        await con.aclose()
        return result

    return asyncio.run(main())


def run_threads(url: str, requests: int, threads: int, shared: bool) -> list[object]:
    con = Client.from_url(url, shared_replies=shared)
    con.modelexecute("m", ["a", "a"], ["w"])

    def one(i: int) -> float:
        started = time.perf_counter()
        assert con.modelexecute("m", ["a", "a"], [f"c{i}"]) == "OK"
        return time.perf_counter() - started

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))  # threads and connections warm
        started = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    kind = "shared list" if shared else "private lists"
    result = row(f"sync, {threads} threads, {kind}", latencies, elapsed, pool_connections(con))
    con.close()
    return result


def redis_usec(setup: Client) -> float:
    """Microseconds Redis spent in commands so far (INFO commandstats)."""
    stats = setup.info("commandstats")
    return float(sum(v["usec"] for v in stats.values()))


def run_sequential(url: str, setup: Client, requests: int) -> list[object]:
    """One request at a time from one client: this process' CPU and Redis's time per job."""
    con = Client.from_url(url)
    for i in range(50):  # warm: the model's queue cached, the connection open
        con.modelexecute("m", ["a", "a"], [f"c{i}"])
    before, cpu, started = redis_usec(setup), time.process_time(), time.perf_counter()
    for i in range(requests):
        assert con.modelexecute("m", ["a", "a"], [f"c{i}"]) == "OK"
    elapsed = time.perf_counter() - started
    cpu_us = (time.process_time() - cpu) / requests * 1e6
    redis_us = (redis_usec(setup) - before) / requests
    con.close()
    return ["sync, one at a time", requests / elapsed, cpu_us, redis_us]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--worker-threads", type=int, default=2)
    args = parser.parse_args()
    with RedisServer() as server:
        setup = Client.from_url(server.url)
        with process(aiworker_worker(server.url, args.worker_threads)):
            wait_until(lambda: bool(setup.zcard(setup.keyspace.workers)), what="the worker")
            setup.modelstore("m", "STUB", "CPU", b'{"op": "add"}')
            setup.tensorset("a", np.arange(4, dtype=np.float32))
            rows = [
                run_asyncio(server.url, args.requests),
                run_threads(server.url, args.requests, args.threads, shared=False),
                run_threads(server.url, args.requests, args.threads, shared=True),
            ]
            sequential = run_sequential(server.url, setup, args.requests)
        setup.close()
    print(f"{args.requests} concurrent MODELEXECUTE requests (STUB add), "
          f"worker with {args.worker_threads} threads\n")  # fmt: skip
    headers = ["client", "connections", "p50 ms", "p99 ms", "requests/s"]
    print(markdown_table(headers, rows))
    print("\nOne request at a time (CPU of this process, Redis's time in commands, per job)\n")
    headers = ["client", "requests/s", "client CPU us", "Redis us"]
    print(markdown_table(headers, [sequential]))


if __name__ == "__main__":
    main()
