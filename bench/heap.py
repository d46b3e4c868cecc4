"""What large inputs cost a worker with glibc's default malloc thresholds and with
``aiworker.malloc``'s: ``python -m bench.heap [--inputs 32] [--side 224] [--rounds 3]``.

Two tables, each mode in a process of its own (the thresholds are process-wide and cannot be
unset), the two alternating, against one private Redis; medians of the rounds:

- a worker thread's read of a batch as the lane makes it: one ``state.read`` of ``--inputs`` jobs,
  each with its own float32 1 x 3 x side x side input (600 KB at 224), every input decoded and
  copied into a batch buffer allocated once (as a batching model's host buffer is): CPU per input
  (the reading thread's), minor page faults per input, the process's RSS at the end;
- a worker process (``aiworker worker``, THREADS_PER_QUEUE 1) serving ``--inputs`` closed-loop
  clients that run a STUB ``add`` model batched by ``--inputs`` on two such inputs (a 600 KB
  output): the worker's CPU and minor page faults per job (``/proc``); "defaults" starts it with
  glibc's own ``MALLOC_TRIM_THRESHOLD_`` set to its default, which leaves the thresholds alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import redis

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.execution import limits, state
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import ModelExecute
from aiworker.storage import model as model_store
from aiworker.storage import tensor_io
from aiworker.storage.wire import Wire
from bench.common import (
    aiworker_worker,
    cpu_seconds,
    env_with_checkout,
    markdown_table,
    minor_faults,
    process,
    wait_until,
)

READS = 80  # timed reads per round, after a few untimed ones
JOBS_PER_CLIENT = 20  # timed jobs per client and round, after a few untimed ones


def _statm_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def measure(url: str, inputs: int, side: int, tuned: bool) -> tuple[float, float, float]:
    """(CPU us per input, minor faults per input, RSS MB) of READS reads, in this process."""
    if tuned:
        from aiworker import malloc

        if not malloc.keep_freed_memory():
            raise SystemExit("glibc's thresholds could not be set here")
    wire = Wire(redis.Redis.from_url(url).connection_pool)
    requests = [ModelExecute("m", (f"in{n}",), (f"out{n}",)) for n in range(inputs)]
    bounds, cache = limits.Limits(), state.MetaCache()
    batch = np.empty((inputs, 3, side, side), np.float32)

    def read() -> None:
        snapshots = state.read(wire, requests, bounds, cache, Keys())
        for row, (snapshot, request) in enumerate(zip(snapshots, requests, strict=True)):
            batch[row] = snapshot.tensors(request.inputs)[0][0]

    for _ in range(5):
        read()
    faults, cpu = minor_faults(os.getpid()), time.thread_time()
    for _ in range(READS):
        read()
    cpu, faults = time.thread_time() - cpu, minor_faults(os.getpid()) - faults
    per = READS * inputs
    return cpu / per * 1e6, faults / per, _statm_rss_mb()


def serve(url: str, clients: int, tuned: bool) -> tuple[float, float]:
    """(worker CPU ms per job, minor faults per job) of a worker process serving ``clients``
    closed-loop clients (the inputs ``in<n>`` are stored)."""
    env = {} if tuned else {"MALLOC_TRIM_THRESHOLD_": "131072"}  # glibc's default, fixed
    keys = Keys()
    setup = Client.from_url(url)
    with process(aiworker_worker(url, 1), **env) as worker:
        wait_until(lambda: bool(setup.zcard(keys.workers)), what="worker heartbeat")

        def burst(jobs: int) -> None:
            def loop(n: int) -> None:
                client = Client.from_url(url, reply_timeout=60)
                for _ in range(jobs):
                    client.modelexecute("m", [f"in{n}", f"in{n}"], [f"out{n}"])
                client.close()

            threads = [threading.Thread(target=loop, args=(n,)) for n in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        burst(5)
        faults, cpu = minor_faults(worker.pid), cpu_seconds(worker.pid)
        burst(JOBS_PER_CLIENT)
        jobs = clients * JOBS_PER_CLIENT
        cpu, faults = cpu_seconds(worker.pid) - cpu, minor_faults(worker.pid) - faults
    setup.close()
    return cpu / jobs * 1000, faults / jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # url, default|tuned
    args = parser.parse_args(argv)
    if args.measure:
        url, mode = args.measure
        print(*measure(url, args.inputs, args.side, mode == "tuned"))
        return
    modes = {"glibc's defaults": "default", "set as a worker sets them": "tuned"}
    found: dict[str, list[tuple[float, ...]]] = {label: [] for label in modes}
    served: dict[str, list[tuple[float, float]]] = {label: [] for label in modes}
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        stub = b'{"op": "add"}'
        model_store.store_model(
            admin, Keys(), "m", model_store.ModelMeta("STUB", "CPU", batchsize=args.inputs), stub
        )
        rng = np.random.default_rng(0)
        for n in range(args.inputs):
            image = rng.standard_normal((1, 3, args.side, args.side), np.float32)
            tensor_io.write(admin, f"in{n}", image)
        for _ in range(args.rounds):
            for label, mode in modes.items():
                command = [sys.executable, "-m", "bench.heap", "--inputs", str(args.inputs),
                           "--side", str(args.side), "--measure", server.url, mode]  # fmt: skip
                out = subprocess.run(
                    command, env=env_with_checkout(), check=True, capture_output=True, text=True
                ).stdout
                found[label].append(tuple(float(x) for x in out.split()))
        for _ in range(args.rounds):
            for label, mode in modes.items():
                served[label].append(serve(server.url, args.inputs, mode == "tuned"))
    size_kb = 3 * args.side * args.side * 4 / 1000
    print(f"{args.inputs} inputs of {size_kb:.0f} KB a read, {READS} reads a round, "
          f"{args.rounds} rounds a mode, alternating\n")  # fmt: skip
    rows = [
        [label, *(statistics.median(r[i] for r in runs) for i in range(3))]
        for label, runs in found.items()
    ]
    headers = ["malloc thresholds", "CPU us per input", "minor faults per input", "RSS MB"]
    print(markdown_table(headers, rows))
    print(f"\nA worker serving {args.inputs} clients, a STUB model batched by {args.inputs}, "
          f"two {size_kb:.0f} KB inputs and one output of that size a job\n")  # fmt: skip
    rows = [
        [label, *(statistics.median(r[i] for r in runs) for i in range(2))]
        for label, runs in served.items()
    ]
    headers = ["malloc thresholds", "worker CPU ms per job", "minor faults per job"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
