"""Autobatching throughput: 32 concurrent batch-1 clients against a compute-bound TorchScript MLP.

    python -m bench.batching [--width 2048] [--clients 32] [--client-processes 4] [--rounds 3]
                             [--seconds 4] [--batch 32] [--threads-per-queue 1] [--mixed]

``--mixed``: instead of batching off vs on, requests of 8 rows against requests of 1 to 8 rows
(each request picks its size at random), both batched: how much varying batch shapes cost.

Starts a private redis-server and ``python -m aiworker worker`` as a subprocess, stores a 3-layer MLP
twice (without batching, and with BATCHSIZE --batch), and drives each with the same closed loop of
concurrent clients: each sends one 1 x width request through ``Client`` (XADD and a wait for the
reply), waits for the reply and sends the next. The clients run as threads spread over a few processes, so that one
interpreter lock does not throttle them. Batching off and on are measured in alternating rounds, so
that noise from other work on the machine hits both alike. Prints a markdown table.

Why 2048 wide by default: a batch-1 request to a 1024-wide MLP costs ~0.8 ms of compute, about what
a request costs anyway on its way through Python clients, Redis and the worker; on 2 cores shared by
all of them batching gains ~2-3x there. At 2048 wide a batch-1 request streams 48 MB of weights
(~4 ms) while a batched row costs ~0.5 ms: the case batching is for. ``--width 1024`` measures it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.parser import parse_command
from bench.common import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent


def mlp_blob(width: int, layers: int = 3) -> bytes:
    """A TorchScript MLP: ``layers`` x (Linear(width, width) + ReLU)."""
    import torch

    torch.manual_seed(0)
    parts: list[torch.nn.Module] = []
    for _ in range(layers):
        parts += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    module = torch.jit.script(torch.nn.Sequential(*parts).eval())
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_worker(url: str, threads: int, intra_op: int = 0) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "aiworker", "worker", "--redis-url", url]
    command += ["--device", "CPU", "--threads-per-queue", str(threads), "--preload", "TORCH"]
    env = _env()
    if intra_op:
        env["AIWORKER_INTRA_OP_PARALLELISM"] = str(intra_op)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # clients ask the heartbeats whether a worker serves the queue: wait until this one beats
    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + 120
    while not any(f":{proc.pid}".encode() in name for name in r.zrange("aiworker:workers", 0, -1)):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the benchmark's worker did not start")
        time.sleep(0.05)
    return proc


# the client side ---------------------------------------------------------------------------


def row_counts(spec: str) -> list[int]:
    """Request sizes: ``"8"`` (always 8 rows) or ``"1-8"`` (any of 1 to 8)."""
    low, _, high = spec.partition("-")
    return list(range(int(low), int(high or low) + 1))


def drive(
    url: str,
    model: str,
    clients: int,
    seconds: float,
    width: int,
    first: int = 0,
    rows: str = "1",
) -> dict[str, Any]:
    """Closed loop: ``clients`` threads run ``model`` back to back for ``seconds``, each request
    of a size drawn from ``rows``.

    Returns the latencies (s), per request how many requests shared its model run, and the rows.
    """
    latencies: list[list[float]] = [[] for _ in range(clients)]
    shared: list[list[int]] = [[] for _ in range(clients)]
    samples = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]
    sizes = row_counts(rows)

    def loop(n: int) -> None:
        con = Client.from_url(url, reply_timeout=120)
        rng = np.random.default_rng(first + n)
        requests = []
        for size in sizes:
            key = f"in:{first + n}:{size}"
            con.tensorset(key, rng.standard_normal((size, width), np.float32))
            # what Client.modelexecute sends, keeping the reply to learn the batch sizes
            command = f"AI.MODELEXECUTE {model} INPUTS 1 {key} OUTPUTS 1 out:{key}"
            requests.append((size, parse_command(command)))
        start.wait()
        while time.perf_counter() < stop_at[0]:
            size, request = requests[int(rng.integers(len(requests)))]
            began = time.perf_counter()
            reply = con.submit_reply("CPU", request)
            reply.raise_for_status()
            latencies[n].append(time.perf_counter() - began)
            shared[n].append(int(reply.extra.get("batch", {}).get("requests", 1)))
            samples[n] += size
        con.close()

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {
        "elapsed": elapsed,
        "latencies": [x for per in latencies for x in per],
        "shared": [x for per in shared for x in per],
        "samples": sum(samples),
    }


def client_process(url: str, threads: int, width: int, first: int) -> None:
    """Serve ``MODEL SECONDS ROWS`` lines from stdin with a ``drive`` each; one JSON line per
    run."""
    for line in sys.stdin:
        model, seconds, rows = line.split()
        result = drive(url, model, threads, float(seconds), width, first, rows)
        print(json.dumps(result), flush=True)


class Clients:
    """``processes`` client processes with ``threads`` client threads each."""

    def __init__(self, url: str, processes: int, threads: int, width: int) -> None:
        command = [sys.executable, "-m", "bench.batching", "--client", url, str(threads)]
        self.procs = [
            subprocess.Popen(
                [*command, str(width), str(n * threads)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=_env(),
                cwd=ROOT,
            )
            for n in range(processes)
        ]

    def run(
        self, model: str, seconds: float, rows: str = "1", busy: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """One closed-loop run; ``busy`` names the other processes (worker, Redis) whose CPU
        to count, as the clients' is, in cores busy over the run."""
        pids = {**(busy or {}), **{f"client{n}": proc.pid for n, proc in enumerate(self.procs)}}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wall_before = time.perf_counter()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{model} {seconds} {rows}\n")
            proc.stdin.flush()
        parts = [json.loads(proc.stdout.readline()) for proc in self.procs if proc.stdout]
        wall = time.perf_counter() - wall_before
        cores = {name: (cpu_seconds(pid) - cpu_before[name]) / wall for name, pid in pids.items()}
        latencies = sorted(x for p in parts for x in p["latencies"])
        shared = [x for p in parts for x in p["shared"]]
        elapsed = max(p["elapsed"] for p in parts)
        return {
            "rps": len(latencies) / elapsed,
            "samples": sum(p["samples"] for p in parts) / elapsed,
            # a request whose run served k requests stands for 1/k of a run
            "per_run": len(shared) / sum(1 / k for k in shared) if shared else 0.0,
            "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "worker cores": cores.get("worker", 0.0),
            "redis cores": cores.get("redis", 0.0),
            "client cores": sum(v for name, v in cores.items() if name.startswith("client")),
        }

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(30)


# the benchmark -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads-per-queue", type=int, default=1)
    parser.add_argument(
        "--intra-op-parallelism", type=int, default=0, help="0: the framework's default"
    )
    parser.add_argument(
        "--mixed", action="store_true", help="requests of 8 rows vs of 1-8 rows, both batched"
    )
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        url, threads, width, first = args.client
        client_process(url, int(threads), int(width), int(first))
        return 0

    load = os.getloadavg()[0]
    blob = mlp_blob(args.width)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    in_process = in_process_rate(blob, args.width, args.batch)
    in_process_cores = (time.process_time() - cpu_before) / (time.perf_counter() - wall_before)
    # mode -> (model, request rows)
    if args.mixed:
        modes = {"8 rows": ("mlp_on", "8"), "1-8 rows": ("mlp_on", "1-8")}
    else:
        modes = {"off": ("mlp_off", "1"), f"on, BATCHSIZE {args.batch}": ("mlp_on", "1")}
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with RedisServer() as server:
        con = Client.from_url(server.url)
        con.modelstore("mlp_off", "TORCH", "CPU", blob)
        con.modelstore("mlp_on", "TORCH", "CPU", blob, batch=args.batch)
        con.close()
        worker = start_worker(server.url, args.threads_per_queue, args.intra_op_parallelism)
        per_process = args.clients // args.client_processes
        clients = Clients(server.url, args.client_processes, per_process, args.width)
        try:
            for model, sizes in modes.values():  # warm up: load the model, fill caches
                clients.run(model, 1.5, sizes)
            assert server.process is not None
            busy = {"worker": worker.pid, "redis": server.process.pid}
            for _ in range(args.rounds):
                for mode, (model, sizes) in modes.items():
                    rows[mode].append(clients.run(model, args.seconds, sizes, busy))
        finally:
            clients.close()
            worker.terminate()
            worker.wait(30)

    total = per_process * args.client_processes
    print(
        f"3-layer {args.width}-wide TorchScript MLP, {total} concurrent clients "
        f"({args.client_processes} processes x {per_process} threads), worker THREADS_PER_QUEUE="
        f"{args.threads_per_queue} INTRA_OP_PARALLELISM={args.intra_op_parallelism}, "
        f"{os.cpu_count()} CPUs (load average {load:.1f} at start), "
        f"{args.rounds} alternating rounds of {args.seconds:g} s per mode\n"
    )
    print(
        "| mode | samples/s (mean) | per round | x in-process | requests per model run "
        "| p50 ms | p99 ms | cores busy: worker / clients / Redis |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---|")
    print(
        f"| in-process, batches of {args.batch} | {in_process:.0f} | | 1 | | | | "
        f"{in_process_cores:.2f} (the model alone) |"
    )
    mean: dict[str, float] = {}
    for mode, runs in rows.items():
        mean[mode] = statistics.fmean(r["samples"] for r in runs)
        rounds = " / ".join(f"{r['samples']:.0f}" for r in runs)
        cores = " / ".join(
            f"{statistics.fmean(r[f'{who} cores'] for r in runs):.2f}"
            for who in ("worker", "client", "redis")
        )
        print(
            f"| {mode} | {mean[mode]:.0f} | {rounds} | {mean[mode] / in_process:.2f} | "
            f"{statistics.fmean(r['per_run'] for r in runs):.1f} | "
            f"{statistics.median(r['p50'] for r in runs):.1f} | "
            f"{statistics.median(r['p99'] for r in runs):.1f} | {cores} |"
        )
    first, second = list(mean)
    print(f"\nratio {second} / {first}: **{mean[second] / mean[first]:.2f}x**")
    return 0


def in_process_rate(blob: bytes, width: int, batch: int, repeat: int = 30) -> float:
    """Samples per second of the same model called in this process on full batches."""
    import torch

    model = torch.jit.load(io.BytesIO(blob))
    x = torch.randn(batch, width)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
