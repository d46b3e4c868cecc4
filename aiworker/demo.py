"""The main job, end to end: ``make demo`` / ``python -m aiworker.demo``.

Starts a private redis-server and a worker process, stores a TorchScript model made on the spot,
runs it through the Python client, then again the way a redis-cli user would (XADD + BLPOP with the
real ``redis-cli``), and prints the results.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np

from aiworker import Client, ClusterClient
from aiworker.cli import worker_statuses
from aiworker.embedded import RedisServer, cli_program


def build_model() -> bytes:
    """A small TorchScript module: ``(a, b) -> a * b + a``."""
    import torch

    class MulAdd(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * b + a

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(MulAdd()), buffer)
    return buffer.getvalue()


def wait_for_worker(client: Client | ClusterClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not worker_statuses(client):
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not start")
        time.sleep(0.2)


def redis_cli(port: int, *args: str) -> str:
    cli = cli_program()
    if cli is None:
        raise SystemExit("redis-cli not found on PATH")
    done = subprocess.run([cli, "-p", str(port), *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    with RedisServer() as server:
        print(f"redis-server: {server.url}")
        worker = subprocess.Popen(
            [sys.executable, "-m", "aiworker", "worker", "--redis-url", server.url,
             "--threads-per-queue", "2", "--preload", "TORCH"],
        )  # fmt: skip
        try:
            client = Client.from_url(server.url, reply_timeout=60)
            wait_for_worker(client)
            print("worker: up")

            client.modelstore("demo:model", "TORCH", "CPU", build_model(), tag="v1")
            print("model stored:", client.modelget("demo:model", meta_only=True))

            client.tensorset("demo:a", np.array([[1, 2], [3, 4]], dtype=np.float32))
            client.tensorset("demo:b", [10, 20, 30, 40], shape=(2, 2), dtype="FLOAT")
            started = time.perf_counter()
            client.modelexecute("demo:model", ["demo:a", "demo:b"], ["demo:out"])
            took = (time.perf_counter() - started) * 1000
            print(f"client modelexecute ({took:.1f} ms): a * b + a =")
            print(client.tensorget("demo:out"))

            # The same job from redis-cli: tensors by HSET, the job by XADD, the reply by BLPOP.
            redis_cli(server.port, "HSET", "demo:x", "kind", "tensor", "dtype", "FLOAT",
                      "shape", "3", "values", "1 2 3")  # fmt: skip
            redis_cli(server.port, "HSET", "demo:y", "kind", "tensor", "dtype", "FLOAT",
                      "shape", "3", "values", "4 5 6")  # fmt: skip
            command = "AI.MODELEXECUTE demo:model INPUTS 2 demo:x demo:y OUTPUTS 1 demo:z"
            entry = redis_cli(server.port, "XADD", "aiworker:queue:CPU", "*",
                              "cmd", command, "reply", "demo:reply")  # fmt: skip
            print(
                f"redis-cli XADD aiworker:queue:CPU * cmd {command!r} reply demo:reply -> {entry}"
            )
            popped = redis_cli(server.port, "BLPOP", "demo:reply", "30").splitlines()
            reply = json.loads(popped[-1])
            print(f"redis-cli BLPOP demo:reply -> {json.dumps(reply)}")
            print("demo:z =", client.tensorget("demo:z", as_numpy=False))
            print("stats:", client.infoget("demo:model"))
            if reply.get("status") != "ok":
                raise SystemExit(f"the redis-cli job failed: {reply}")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        print("done: worker stopped with exit code", worker.returncode)


if __name__ == "__main__":
    main()
