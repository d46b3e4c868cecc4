"""The systems compared, each started against one private Redis and driven the same way.

Every peer offers ``caller()``: a fresh callable (own connection) that sends one request adding two
1x4 float tensors and returns the result, so latency and throughput scenarios treat them alike.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import redis

from bench.common import aiworker_worker, process, torchscript_bytes, wait_until

A = np.arange(4, dtype=np.float32).reshape(1, 4)
B = np.full((1, 4), 10, dtype=np.float32)
EXPECTED = A + B
Call = Callable[[], np.ndarray]


def add_model_bytes() -> bytes:
    import torch

    class Add(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    return torchscript_bytes(Add())


class InProcess:
    """The limit: the TorchScript model called in the client's own process."""

    name = "in-process"

    def __init__(self, blob: bytes) -> None:
        import io

        import torch

        self.torch = torch
        self.model = torch.jit.load(io.BytesIO(blob))

    def caller(self) -> Call:
        torch = self.torch

        def call() -> np.ndarray:
            with torch.inference_mode():
                return self.model(torch.from_numpy(A.copy()), torch.from_numpy(B.copy())).numpy()  # type: ignore[no-any-return]

        return call


class Floor:
    """Bare Redis: XADD + BLPOP (pipelined) against a consumer that XREADGROUPs and LPUSHes."""

    name = "bare Redis floor"

    def __init__(self, url: str) -> None:
        self.url = url

    def caller(self) -> Call:
        r = redis.Redis.from_url(self.url, socket_timeout=None)
        reply = f"floor:reply:{uuid.uuid4().hex}"

        def call() -> np.ndarray:
            pipe = r.pipeline(transaction=False)
            pipe.xadd("floor:queue", {"reply": reply, "job": b"x" * 32})
            pipe.blpop([reply], timeout=30)
            pipe.execute()
            return EXPECTED

        return call


class DoItYourself:
    """A hand-written redis-py stream worker, driven like redisai-py drives RedisAI: set both
    inputs, enqueue and wait (XADD + BLPOP pipelined), get the output - four round trips."""

    name = "DIY redis-py stream worker"

    def __init__(self, url: str) -> None:
        self.url = url

    def caller(self) -> Call:
        r = redis.Redis.from_url(self.url, socket_timeout=None)
        token = uuid.uuid4().hex
        a, b, out, reply = (f"diy:{token}:{n}" for n in ("a", "b", "out", "reply"))
        job = {"inputs": f"{a},{b}", "output": out, "reply": reply, "shape": "1,4"}

        def call() -> np.ndarray:
            r.hset(a, mapping={"shape": "1,4", "blob": A.tobytes()})
            r.hset(b, mapping={"shape": "1,4", "blob": B.tobytes()})
            pipe = r.pipeline(transaction=False)
            pipe.xadd("diy:queue", job)
            pipe.blpop([reply], timeout=30)
            pipe.execute()
            blob = r.hget(out, "blob")
            return np.frombuffer(blob, dtype=np.float32).reshape(A.shape)  # type: ignore[arg-type]

        return call


class CeleryPeer:
    """Celery with the Redis broker and result backend: ``add.delay(a, b).get()``."""

    name = "Celery"

    def caller(self) -> Call:
        from bench.celery_app import add

        def call() -> np.ndarray:
            result = add.delay(A.reshape(-1).tolist(), B.reshape(-1).tolist(), list(A.shape))
            return np.asarray(result.get(timeout=30), dtype=np.float32).reshape(A.shape)

        return call


class AIWorker:
    """aiworker as a redisai-py user calls it: tensorset x2, modelexecute, tensorget."""

    name = "aiworker"

    def __init__(self, url: str) -> None:
        self.url = url

    def caller(self) -> Call:
        from aiworker import Client

        c = Client.from_url(self.url)
        token = uuid.uuid4().hex
        a, b, out = (f"ai:{token}:{n}" for n in ("a", "b", "out"))

        def call() -> np.ndarray:
            c.tensorset(a, A)
            c.tensorset(b, B)
            c.modelexecute("bench:add", [a, b], [out])
            return c.tensorget(out)  # type: ignore[return-value]

        return call


class AIWorkerDag:
    """aiworker in one request: a DAG that sets both inputs, runs the model and returns the
    output (RedisAI's AI.DAGEXECUTE), so the client makes one round trip like the floor."""

    name = "aiworker, one DAG request"

    def __init__(self, url: str) -> None:
        self.url = url

    def caller(self) -> Call:
        from aiworker import Client

        c = Client.from_url(self.url)

        def call() -> np.ndarray:
            dag = c.dag(routing="bench:add").tensorset("a", A).tensorset("b", B)
            results = dag.modelexecute("bench:add", ["a", "b"], ["out"]).tensorget("out").execute()
            return results[-1]  # type: ignore[no-any-return]

        return call


class AIWorkerRun:
    """aiworker's one-round-trip call: ``Client.run`` sends the inputs inline and gets the
    outputs back in the reply (msgpack, raw bytes), touching no key."""

    name = "aiworker, Client.run"

    def __init__(self, url: str) -> None:
        self.url = url

    def caller(self) -> Call:
        from aiworker import Client

        c = Client.from_url(self.url)

        def call() -> np.ndarray:
            return c.run("bench:add", {"a": A, "b": B}, ["out"])["out"]

        return call


@contextmanager
def started_peers(url: str, threads: int) -> Iterator[dict[str, object]]:
    """Start every peer's worker processes (``threads`` threads each) and yield the peers."""
    from aiworker import Client

    blob = add_model_bytes()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        model_path = tmp / "add.pt"
        model_path.write_bytes(blob)
        r = redis.Redis.from_url(url)

        floor_proc = stack.enter_context(
            process([sys.executable, "-m", "bench.floor_worker", url, str(threads)])
        )
        diy_proc = stack.enter_context(
            process([sys.executable, "-m", "bench.diy_worker", url, str(threads), str(model_path)])
        )
        stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.celery_app",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(threads),
                    "-Q",
                    "bench",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "WARNING",
                ],
                BENCH_REDIS_URL=url,
                BENCH_MODEL=str(model_path),
            )
        )
        client = Client.from_url(url)
        client.modelstore("bench:add", "TORCH", "CPU", blob)
        ai_proc = stack.enter_context(process(aiworker_worker(url, threads, "--preload", "TORCH")))
        wait_until(lambda: bool(r.zcard("aiworker:workers")), what="aiworker worker")
        wait_until(lambda: r.exists("floor:queue") == 1, what="floor worker")
        wait_until(lambda: r.exists("diy:queue") == 1, what="DIY worker")
        import os

        os.environ["BENCH_REDIS_URL"] = url
        peers: dict[str, object] = {
            "inprocess": InProcess(blob),
            "floor": Floor(url),
            "diy": DoItYourself(url),
            "celery": CeleryPeer(),
            "aiworker": AIWorker(url),
            "aiworker_dag": AIWorkerDag(url),
            "aiworker_run": AIWorkerRun(url),
        }
        # The worker process behind each peer, for CPU per job read from /proc.
        peers["floor"].pid = floor_proc.pid  # type: ignore[attr-defined]
        peers["diy"].pid = diy_proc.pid  # type: ignore[attr-defined]
        peers["aiworker"].pid = ai_proc.pid  # type: ignore[attr-defined]
        peers["aiworker_dag"].pid = ai_proc.pid  # type: ignore[attr-defined]
        peers["aiworker_run"].pid = ai_proc.pid  # type: ignore[attr-defined]
        for peer in peers.values():  # every peer must answer correctly before it is timed
            result = peer.caller()()  # type: ignore[attr-defined]
            assert np.array_equal(result, EXPECTED), (peer, result)
        yield peers
