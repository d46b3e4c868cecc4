"""Where a worker's CPU goes, stage by stage: ``python -m bench.stages [--run|--large]
[--jobs 3000]``.

Runs a worker in this process (2 threads, a private Redis) and a client sending trivial jobs one
after another: the redisai-py pattern (tensorset x2, modelexecute, tensorget), with ``--run``
``Client.run``, with ``--large`` a 600 KB input stored once and MODELEXECUTE on it making a 4 KB
output (the serving pattern of issue 17: what the job's read and completion cost when values are
large). Each stage function of the job path is wrapped to add up the CPU time of the thread that
runs it (``time.thread_time``); stages nest (``process entries`` holds decode, the state read and
prepare), and ``Wire round trips`` counts the client's as well as the worker's.
Compare a stage's figure here with the same code timed alone (``timeit``): on a machine whose
cores the client, Redis and the worker share, code runs cache-cold and costs several times more.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aiworker import Client
from aiworker.backends import torch as torch_backend
from aiworker.embedded import RedisServer
from aiworker.execution import executor, state
from aiworker.settings import Settings
from aiworker.storage import wire
from aiworker.worker import complete, consume, lane, process
from bench import peers
from bench.common import markdown_table, torchscript_bytes

cpu: Counter[str] = Counter()
labels: list[str] = []  # in the order they were wrapped
calls: Counter[str] = Counter()


def measure(owner: Any, name: str, label: str) -> None:
    """Wrap ``owner.name`` so that its thread's CPU time adds up under ``label``."""
    original = getattr(owner, name)
    labels.append(label)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            cpu[label] += time.thread_time() - started
            calls[label] += 1

    setattr(owner, name, timed)


def instrument() -> None:
    measure(wire.Wire, "_round_trip", "Wire round trips (client's too)")
    measure(consume.Consumer, "read", "read entries (XREADGROUP)")
    measure(lane.Lane, "process", "process entries (the next three)")
    measure(lane, "decode_entry", "  decode the entry")
    measure(state, "read", "  read the job's state (state.read)")
    measure(executor.Executor, "prepare", "  prepare the job's run")
    measure(lane, "run_batch", "run on the device")
    measure(torch_backend.TorchModel, "run", "  the model's forward (TorchModel.run)")
    measure(complete.Completer, "complete", "complete (Completer.complete)")


class Slice(torch.nn.Module):
    """A model whose output (1,024 floats) is far smaller than its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:1024] * 2


def large_caller(client: Client) -> Callable[[], object]:
    """MODELEXECUTE on a 600 KB input stored once, making a 4 KB output."""
    client.modelstore("bench:slice", "TORCH", "CPU", torchscript_bytes(Slice()))
    client.tensorset("bench:in", np.ones(150_000, dtype=np.float32))
    return lambda: client.modelexecute("bench:slice", ["bench:in"], ["bench:out"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", action="store_true", help="Client.run instead of four calls")
    parser.add_argument("--large", action="store_true", help="a 600 KB input, a 4 KB output")
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args(argv)
    instrument()
    with RedisServer() as server:
        client = Client.from_url(server.url)
        client.modelstore("bench:add", "TORCH", "CPU", peers.add_model_bytes())
        worker = process.Worker(Settings(redis_url=server.url, threads_per_queue=2)).start()
        # the peers of ``make bench``, sending to the model stored above
        if args.large:
            call = large_caller(client)
        else:
            peer = peers.AIWorkerRun(server.url) if args.run else peers.AIWorker(server.url)
            call = peer.caller()
        try:
            for _ in range(300):  # warm up: the model loads, metadata is cached
                call()
            cpu.clear()
            calls.clear()
            for _ in range(args.jobs):
                call()
        finally:
            worker.stop()
    rows = [[label, cpu[label] / args.jobs * 1e6, calls[label] / args.jobs] for label in labels]
    print(markdown_table(["stage", "thread CPU us per job", "calls per job"], rows))


if __name__ == "__main__":
    main()
