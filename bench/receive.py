"""What receiving a job's large inputs costs the worker's thread and Redis, through hiredis and
received in place (``storage.bulk_read``): ``python -m bench.receive [--inputs 32] [--blocks 20]``.

One private Redis holds ``--inputs`` float32 inputs of 1 x 3 x side x side (600 KB at 224). Each
row is one kind of read, made in blocks of ``READS`` reads; the modes take turns block by block
(the machine is shared and its speed moves within minutes), and the table shows medians over the
blocks:

- ``HGET, one input``: a plain HGET of one input's bytes (the DIY worker's read);
- ``state.read, one input``: the worker's guarded read of a job with that input (the script's
  checks and a MULTI; its Redis CPU over the HGET's is issue 17's "at most 1.2x");
- ``state.read, N inputs``: one guarded read of N jobs, each input decoded and copied into a batch
  buffer allocated once (as a lane's batch is built).

Columns: the reading thread's CPU per input, Redis's CPU per input (``INFO cpu``: the socket
writes included), and for the guarded reads, Redis's CPU over a plain HGET's of the same block.
It runs with the worker's malloc thresholds (``aiworker.malloc``, as a worker process sets them)
and, on a machine with two CPUs or more, with Redis on the last CPU and this process on the first
(as Redis would have a core of its own; scheduling on shared cores moved the figures by 10-20%
from block to block).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis

from aiworker import malloc
from aiworker.embedded import RedisServer
from aiworker.execution import limits, state
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import ModelExecute
from aiworker.storage import model as model_store
from aiworker.storage import tensor_io
from aiworker.storage.wire import Command, Wire
from bench.common import markdown_table, redis_cpu

READS = 50  # reads per block


class HiredisWire(Wire):
    """A ``Wire`` that reads every reply through hiredis, as before ``bulk_read``."""

    def pipeline(
        self, commands: Sequence[Command], routes: Any = None, large: bool = False
    ) -> list[Any]:
        return super().pipeline(commands, routes, False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=32)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--blocks", type=int, default=20)
    args = parser.parse_args(argv)
    malloc.keep_freed_memory()
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(int(admin.info("server")["process_id"]), {cpus[-1]})
            os.sched_setaffinity(0, {cpus[0]})
        model_store.store_model(admin, Keys(), "m", model_store.ModelMeta("STUB", "CPU"), b"{}")
        rng = np.random.default_rng(0)
        shape = (1, 3, args.side, args.side)
        for n in range(args.inputs):
            tensor_io.write(admin, f"in{n}", rng.standard_normal(shape, np.float32))
        wires = {
            "hiredis": HiredisWire(admin.connection_pool),
            "in place": Wire(admin.connection_pool),
        }
        requests = [ModelExecute("m", (f"in{n}",), (f"out{n}",)) for n in range(args.inputs)]
        bounds, cache = limits.Limits(), state.MetaCache()
        batch = np.empty((args.inputs, *shape[1:]), np.float32)

        def guarded(wire: Wire, jobs: list[ModelExecute]) -> Callable[[], None]:
            def read() -> None:
                snapshots = state.read(wire, jobs, bounds, cache, Keys())
                for row, (snapshot, job) in enumerate(zip(snapshots, jobs, strict=True)):
                    batch[row] = snapshot.tensors(job.inputs)[0][0]

            return read

        cases: dict[tuple[str, str], tuple[Callable[[], Any], int]] = {}
        for mode, wire in wires.items():
            cases[("HGET, one input", mode)] = (
                lambda wire=wire: wire.pipeline([("HGET", "in0", "blob")]), 1)  # fmt: skip
            cases[("state.read, one input", mode)] = (guarded(wire, requests[:1]), 1)
            cases[(f"state.read, {args.inputs} inputs", mode)] = (
                guarded(wire, requests), args.inputs)  # fmt: skip
        for call, _count in cases.values():
            for _ in range(5):
                call()
        client: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        server_cpu: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        for _ in range(args.blocks):
            for case, (call, count) in cases.items():
                before, thread = redis_cpu(admin), time.thread_time()
                for _ in range(READS):
                    call()
                client[case].append((time.thread_time() - thread) / READS / count * 1e6)
                server_cpu[case].append((redis_cpu(admin) - before) / READS / count * 1e6)
    rows = []
    for (name, mode), spent in client.items():
        plain = server_cpu[("HGET, one input", mode)]
        ratios = [a / b for a, b in zip(server_cpu[(name, mode)], plain, strict=True)]
        quartiles = statistics.quantiles(ratios, n=4)
        rows.append([
            name, mode, statistics.median(spent), statistics.median(server_cpu[(name, mode)]),
            "" if name.startswith("HGET") else
            f"{statistics.median(ratios):.2f} ({quartiles[0]:.2f}-{quartiles[2]:.2f})",
        ])  # fmt: skip
    rows.sort(key=lambda row: (row[0], row[1]))
    size_kb = 3 * args.side * args.side * 4 / 1000
    print(f"inputs of {size_kb:.0f} KB; {args.blocks} blocks of {READS} reads per row, alternating")
    print()
    headers = ["read", "replies", "thread CPU us per input", "Redis CPU us per input",
               "Redis CPU / HGET's (quartiles)"]  # fmt: skip
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
