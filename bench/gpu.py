"""Serving an image model on a device: aiworker against the same TorchScript module in-process.

    python -m bench.gpu [--clients 32] [--client-processes 4] [--threads-per-queue 1,2]
                        [--batch 32] [--seconds 5] [--latency-calls 200]
                        [--redis-server PATH] [--unix-socket] [--small | --mean] [--side N]
                        [--intra-op N]

The model: a torchvision ResNet-50 (``weights=None``: nothing is downloaded) on ``GPU`` when torch
sees a CUDA device and torchvision is importable, else (or with ``--small``) a small convolutional
net built here (``bench.torch_modes.ConvNet`` on 3x64x64 images) on ``CPU``; ``--mean``: a model
that only averages its input (``--side 224``: ResNet's inputs), to measure what moving the
inputs costs the worker and Redis. It is scripted to
TorchScript in eval mode, fp32, and stored once without batching and once with BATCHSIZE --batch.
Each client stores its one input image once and then calls AI.MODELEXECUTE on it, back to back
(a closed loop), from threads spread over --client-processes processes.

Rows, all from one run: the module called in-process at batch 1 (host array in, host array out)
and at batch --batch (page-locked host buffers, non-blocking copies), optimized as the TORCH
backend runs it (the reference for the ratios) and as stored; aiworker without and with
batching at each THREADS_PER_QUEUE; the DIY stream worker (``bench/diy_worker.py``) on the same
device; the batch-1 p50 of ``tensorset + modelexecute + tensorget`` and of ``Client.run``. The
worker's CPU per job comes from ``/proc/<pid>/stat``, Redis's from INFO; "requests per run" and
"largest batch" from the replies' ``batch`` field (what the worker actually ran).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.parser import parse_command
from bench.common import (
    ROOT,
    cpu_seconds,
    env_with_checkout,
    markdown_table,
    percentile,
    process,
    redis_cpu,
    torchscript_bytes,
    wait_until,
)

OFF, ON = "bench:model", "bench:model:batched"


class Mean(torch.nn.Module):  # type: ignore[misc]
    """Each image's per-channel mean: next to no compute, so a run measures moving the inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=[2, 3])


def build_model(
    small: bool, side: int = 64, mean: bool = False
) -> tuple[str, Any, tuple[int, ...], str]:
    """(description, module in eval mode, one input's shape, aiworker device); the small conv net
    (or ``mean``) takes ``side`` x ``side`` images."""
    if mean:
        return "per-channel mean (bench.gpu.Mean)", Mean().eval(), (1, 3, side, side), "CPU"
    if not small and torch.cuda.is_available():
        try:
            import torchvision
        except ImportError:
            pass
        else:
            torch.manual_seed(0)
            module = torchvision.models.resnet50(weights=None).eval()
            return "ResNet-50 (torchvision, random weights)", module, (1, 3, 224, 224), "GPU"
    from bench.torch_modes import ConvNet

    torch.manual_seed(0)
    module = ConvNet().eval()
    return "small conv net (bench.torch_modes.ConvNet)", module, (1, 3, side, side), "CPU"


def torch_device(device: str) -> str:
    return "cuda" if device == "GPU" else "cpu"


# in-process ---------------------------------------------------------------------------------


def in_process(
    blob: bytes, shape: tuple[int, ...], device: str, batch: int, seconds: float, as_run: bool
) -> tuple[list[float], float, float]:
    """(batch-1 latencies, batch-1 images/s, batched images/s) of the module in this process:
    optimized as the TORCH backend runs it (``as_run``), or as stored."""
    import io

    from aiworker.backends.torch import optimized

    target = torch_device(device)
    prepare = optimized if as_run else (lambda module: module)
    # one module per batch size, as aiworker holds one per stored model (the executor's state
    # depends on the shapes a module has seen)
    single, many = (
        prepare(torch.jit.load(io.BytesIO(blob), map_location=target).eval()) for _ in "12"
    )
    image = np.random.default_rng(0).standard_normal(shape, np.float32)

    def one() -> np.ndarray:  # host array in, host array out: what a caller has
        with torch.inference_mode():
            return single(torch.from_numpy(image).to(target)).cpu().numpy()  # type: ignore[no-any-return]

    pinned = target == "cuda"
    host_in = torch.from_numpy(np.repeat(image, batch, axis=0))
    host_in = host_in.pin_memory() if pinned else host_in
    host_out: torch.Tensor | None = None

    def batched() -> None:
        nonlocal host_out
        with torch.inference_mode():
            out = many(host_in.to(target, non_blocking=True))
            if host_out is None:
                host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=pinned)
            host_out.copy_(out, non_blocking=True)
            if pinned:
                torch.cuda.synchronize()

    for _ in range(20):  # warm up: the profiling executor specialises for these shapes
        one()
        batched()
    latencies = timed(one, seconds)
    runs = timed(batched, seconds)
    return latencies, len(latencies) / sum(latencies), batch * len(runs) / sum(runs)


def timed(call: Callable[[], object], seconds: float) -> list[float]:
    out: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


# clients (processes of threads, each a closed loop) -------------------------------------------


def client_loop(url: str, kind: str, model: str, device: str, shape: tuple[int, ...], n: int,
                seconds: float, start: threading.Barrier, out: dict[str, list[float]]) -> None:  # fmt: skip
    image = np.random.default_rng(n).standard_normal(shape, np.float32)
    if kind == "diy":
        r = redis.Redis.from_url(url, socket_timeout=None)
        token = uuid.uuid4().hex
        key, output, reply = (f"diy:{token}:{x}" for x in ("in", "out", "reply"))
        r.hset(key, mapping={"shape": ",".join(map(str, shape)), "blob": image.tobytes()})
        job = {"inputs": key, "output": output, "reply": reply, "shape": ",".join(map(str, shape))}

        def call() -> None:
            pipe = r.pipeline(transaction=False)
            pipe.xadd("diy:queue", job)
            pipe.blpop([reply], timeout=120)
            pipe.execute()
    else:
        c = Client.from_url(url, reply_timeout=120)
        key = f"in:{n}:{uuid.uuid4().hex}"
        c.tensorset(key, image)
        request = parse_command(f"AI.MODELEXECUTE {model} INPUTS 1 {key} OUTPUTS 1 out:{key}")

        def call() -> None:  # Client.modelexecute, keeping the reply for its batch field
            reply = c.submit_reply(device, request)
            reply.raise_for_status()
            batch = reply.extra.get("batch") or {}
            out["requests"].append(int(batch.get("requests", 1)))
            out["sizes"].append(int(batch.get("size", 1)))

    call()  # warm the connection
    out["requests"].clear()
    out["sizes"].clear()
    start.wait()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        call()
        out["latencies"].append(time.perf_counter() - started)


def client_process(url: str, threads: int, shape: tuple[int, ...], first: int) -> None:
    """Serve ``KIND MODEL DEVICE SECONDS`` lines from stdin; one JSON line per run."""
    for line in sys.stdin:
        kind, model, device, seconds = line.split()
        outs: list[dict[str, list[float]]] = [
            {"latencies": [], "requests": [], "sizes": []} for _ in range(threads)
        ]
        start = threading.Barrier(threads + 1)
        args = (url, kind, model, device, shape)
        workers = [
            threading.Thread(target=client_loop, args=(*args, first + i, float(seconds), start, o))
            for i, o in enumerate(outs)
        ]
        for thread in workers:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in workers:
            thread.join()
        merged = {k: [x for o in outs for x in o[k]] for k in outs[0]}
        print(json.dumps({"elapsed": time.perf_counter() - began, **merged}), flush=True)


class Clients:
    """``processes`` client processes of ``threads`` closed-loop client threads each."""

    def __init__(self, url: str, processes: int, threads: int, shape: tuple[int, ...]) -> None:
        command = [sys.executable, "-m", "bench.gpu", "--client", url, str(threads)]
        self.procs = [
            subprocess.Popen(
                [*command, ",".join(map(str, shape)), str(n * threads)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env_with_checkout(),
                cwd=ROOT,
            )
            for n in range(processes)
        ]

    def run(self, kind: str, model: str, device: str, seconds: float) -> dict[str, Any]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{kind} {model} {device} {seconds}\n")
            proc.stdin.flush()
        parts = [json.loads(proc.stdout.readline()) for proc in self.procs if proc.stdout]
        return {
            "elapsed": max(p["elapsed"] for p in parts),
            **{k: [x for p in parts for x in p[k]] for k in ("latencies", "requests", "sizes")},
        }

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(30)


# servers ------------------------------------------------------------------------------------


def intra_op_env(threads: int) -> dict[str, str]:
    """The worker's and the DIY worker's torch threads: the framework's default when 0."""
    if not threads:
        return {}
    return {"AIWORKER_INTRA_OP_PARALLELISM": str(threads), "OMP_NUM_THREADS": str(threads)}


@contextmanager
def aiworker_worker(url: str, device: str, threads: int, intra_op: int) -> Iterator[int]:
    command = [sys.executable, "-m", "aiworker", "worker", "--redis-url", url, "--device", device,
               "--threads-per-queue", str(threads), "--preload", "TORCH"]  # fmt: skip
    r = redis.Redis.from_url(url)
    with process(command, **intra_op_env(intra_op)) as proc:
        wait_until(
            lambda: any(f":{proc.pid}".encode() in w for w in r.zrange("aiworker:workers", 0, -1)),
            timeout=300,
            what="the aiworker worker",
        )
        yield proc.pid


@contextmanager
def diy_worker(
    url: str, device: str, threads: int, model_path: Path, intra_op: int
) -> Iterator[int]:
    r = redis.Redis.from_url(url)
    r.delete("diy:queue")
    command = [sys.executable, "-m", "bench.diy_worker", url, str(threads), str(model_path),
               torch_device(device)]  # fmt: skip
    with process(command, **intra_op_env(intra_op)) as proc:
        wait_until(lambda: r.exists("diy:queue") == 1, timeout=300, what="the DIY worker")
        yield proc.pid


def measure(clients: Clients, r: redis.Redis, pid: int, kind: str, model: str, device: str,
            seconds: float) -> dict[str, Any]:  # fmt: skip
    """One closed-loop run after a warm-up (models load, batch shapes are seen)."""
    clients.run(kind, model, device, min(seconds, 3.0))
    worker_before, redis_before = cpu_seconds(pid), redis_cpu(r)
    result = clients.run(kind, model, device, seconds)
    jobs = len(result["latencies"])
    worker, used = cpu_seconds(pid) - worker_before, redis_cpu(r) - redis_before
    requests = result["requests"]
    return {
        "rate": jobs / result["elapsed"],
        "p50": 1000 * statistics.median(result["latencies"]),
        "p99": 1000 * percentile(result["latencies"], 99),
        "worker_ms": 1000 * worker / jobs,
        "worker_cores": worker / result["elapsed"],
        "redis_us": 1e6 * used / jobs,
        # a request whose run served k requests stands for 1/k of a run
        "per_run": len(requests) / sum(1 / k for k in requests) if requests else 0.0,
        "largest": max(result["sizes"], default=0),
    }


def single_client_p50(url: str, model: str, image: np.ndarray, calls: int) -> tuple[float, float]:
    """Batch-1 p50 (ms) of tensorset + modelexecute + tensorget, and of ``Client.run``."""
    c = Client.from_url(url, reply_timeout=120)

    def four_calls() -> None:
        c.tensorset("lat:in", image)
        c.modelexecute(model, ["lat:in"], ["lat:out"])
        c.tensorget("lat:out")

    def one_call() -> None:
        c.run(model, {"x": image}, ["y"])

    out = []
    for call in (four_calls, one_call):
        for _ in range(10):
            call()
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        out.append(1000 * statistics.median(samples))
    c.close()
    return out[0], out[1]


def serve(args: argparse.Namespace, url: str, blob: bytes, shape: tuple[int, ...], device: str,
          image: np.ndarray, tmp: str, b1_rate: float, batch_rate: float,
          ) -> tuple[list[list[object]], tuple[float, float]]:  # fmt: skip
    """The aiworker and DIY rows, and the single-client p50s (four calls, ``Client.run``)."""
    rows: list[list[object]] = []
    r = redis.Redis.from_url(url)
    setup = Client.from_url(url)
    setup.modelstore(OFF, "TORCH", device, blob)
    setup.modelstore(ON, "TORCH", device, blob, batch=args.batch)
    setup.close()
    per_process = max(1, args.clients // args.client_processes)
    clients = Clients(url, args.client_processes, per_process, shape)
    try:
        for threads in (int(t) for t in args.threads_per_queue.split(",")):
            with aiworker_worker(url, device, threads, args.intra_op) as pid:
                for model, label in ((OFF, "no batching"), (ON, f"BATCHSIZE {args.batch}")):
                    m = measure(clients, r, pid, "aiworker", model, device, args.seconds)
                    base = batch_rate if model == ON else b1_rate
                    rows.append([
                        f"aiworker, {label}, THREADS_PER_QUEUE {threads}", m["rate"],
                        f"{m['rate'] / base:.2f}x {'b' + str(args.batch) if model == ON else 'b1'}",
                        m["p50"], m["p99"], f"{m['worker_ms']:.2f} ({m['worker_cores']:.2f} cores)",
                        m["redis_us"], f"{m['per_run']:.1f}", m["largest"],
                    ])  # fmt: skip
                if threads == int(args.threads_per_queue.split(",")[0]):
                    latency = single_client_p50(url, OFF, image, args.latency_calls)
        model_path = Path(tmp) / "model.pt"
        model_path.write_bytes(blob)
        with diy_worker(url, device, args.diy_threads, model_path, args.intra_op) as pid:
            m = measure(clients, r, pid, "diy", "-", device, args.seconds)
            rows.append([
                f"DIY stream worker, {args.diy_threads} threads", m["rate"],
                f"{m['rate'] / b1_rate:.2f}x b1", m["p50"], m["p99"],
                f"{m['worker_ms']:.2f} ({m['worker_cores']:.2f} cores)", m["redis_us"], "1", 1,
            ])  # fmt: skip
    finally:
        clients.close()
        r.close()
    return rows, latency


# the benchmark ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--threads-per-queue", default="1,2", help="comma-separated: one row each")
    parser.add_argument("--diy-threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--redis-server", help="Redis server executable (default: as aiworker up)")
    parser.add_argument("--small", action="store_true", help="the small conv net, on the CPU")
    parser.add_argument(
        "--mean",
        action="store_true",
        help="a model that only averages its input, on the CPU: what moving the inputs costs",
    )
    parser.add_argument(
        "--side", type=int, default=64, help="the small conv net's image side (224: ResNet's)"
    )
    parser.add_argument(
        "--unix-socket",
        action="store_true",
        help="everyone reaches Redis through its Unix socket (a sidecar's way) instead of TCP",
    )
    parser.add_argument(
        "--intra-op", type=int, default=0, help="torch threads everywhere (0: torch's default)"
    )
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        url, threads, shape, first = args.client
        client_process(url, int(threads), tuple(int(d) for d in shape.split(",")), int(first))
        return 0

    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 deprecates TorchScript
    if args.intra_op:
        torch.set_num_threads(args.intra_op)
    described, module, shape, device = build_model(args.small, args.side, args.mean)
    blob = torchscript_bytes(module)
    image = np.random.default_rng(0).standard_normal(shape, np.float32)
    stored = in_process(blob, shape, device, args.batch, args.seconds, as_run=False)
    b1_latencies, b1_rate, batch_rate = in_process(
        blob, shape, device, args.batch, args.seconds, as_run=True
    )
    b1_p50 = 1000 * statistics.median(b1_latencies)
    per_process = max(1, args.clients // args.client_processes)
    total = per_process * args.client_processes
    rows: list[list[object]] = [
        ["in-process, batch 1 (host in, host out)", b1_rate, "1.00x b1", b1_p50, "", "", "", "", ""],
        [f"in-process, batch {args.batch} (pinned)", batch_rate, f"{batch_rate / b1_rate:.2f}x b1",
         "", "", "", "", args.batch, args.batch],
        ["in-process, batch 1, module as stored", stored[1], f"{stored[1] / b1_rate:.2f}x b1",
         1000 * statistics.median(stored[0]), "", "", "", "", ""],
        [f"in-process, batch {args.batch} (pinned), module as stored", stored[2],
         f"{stored[2] / b1_rate:.2f}x b1", "", "", "", "", args.batch, args.batch],
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        socket = Path(tmp) / "redis.sock"
        extra = ["--unixsocket", str(socket), "--unixsocketperm", "700"] if args.unix_socket else []
        server = RedisServer(executable=args.redis_server, extra_args=extra).start()
        url = f"unix://{socket}" if args.unix_socket else server.url
        try:
            served, (four, run) = serve(
                args, url, blob, shape, device, image, tmp, b1_rate, batch_rate
            )
        finally:
            server.stop()
    rows += served

    versions = f"torch {torch.__version__}"
    if device == "GPU":
        versions += f", {torch.cuda.get_device_name(0)}"
    transport = "its Unix socket" if args.unix_socket else "TCP"
    print(f"{described} on {device} ({versions}); inputs {'x'.join(map(str, shape))} fp32; "
          f"Redis over {transport}; {total} closed-loop clients ({args.client_processes} "
          f"processes x {per_process} threads), {args.seconds:g} s per row after a warm-up; "
          f"torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")  # fmt: skip
    headers = ["peer", "images/s", "vs in-process", "p50 ms", "p99 ms", "worker CPU ms/job",
               "Redis CPU us/job", "requests per run", "largest batch"]  # fmt: skip
    print(markdown_table(headers, rows))
    print()
    print(markdown_table(
        ["batch-1 call, one client", "p50 ms", "vs in-process batch 1"],
        [["in-process (host array in, host array out)", b1_p50, "1.00x"],
         ["aiworker tensorset + modelexecute + tensorget", four, f"{four / b1_p50:.2f}x"],
         ["aiworker Client.run", run, f"{run / b1_p50:.2f}x"]],
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
