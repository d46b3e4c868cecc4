"""Fixtures: a private redis-server per session, a flushed client per test, in-process workers."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aiworker import Client, Settings, Worker
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import Keys

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Client]:
    c = Client.from_url(redis_server.url, reply_timeout=30)
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url, threads_per_queue=2, block_ms=100)


@pytest.fixture
def worker(client: Client, settings: Settings) -> Iterator[Worker]:
    """An in-process worker serving CPU with 2 threads."""
    w = Worker(settings).start()
    yield w
    w.stop(timeout=10)


def worker_env(unset: Sequence[str] = (), **extra: str) -> dict[str, str]:
    """Environment for worker subprocesses: this checkout first on the import path, without the
    variables named in ``unset``."""
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def spawn_worker(
    url: str, *args: str, unset: Sequence[str] = (), **env: str
) -> subprocess.Popen[bytes]:
    """Start ``python -m aiworker worker`` against ``url`` as a separate process."""
    return subprocess.Popen(
        [sys.executable, "-m", "aiworker", "worker", "--redis-url", url, *args],
        env=worker_env(unset, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# Redis Cluster (tests/cluster.py): one 3 masters + 3 replicas cluster per session, started on
# first use; tests that kill a master start their own.


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    from cluster import LocalCluster

    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_client(redis_cluster: Any) -> Iterator[Any]:
    """A client of the session's cluster (a ``ClusterClient``, from ``Client.from_url``), every
    master flushed."""
    redis_cluster.wait_ok()
    redis_cluster.flushall()
    c = Client.from_url(redis_cluster.url, reply_timeout=30)
    yield c
    c.close()


@pytest.fixture
def cluster_settings(redis_cluster: Any) -> Settings:
    return Settings(
        redis_url=redis_cluster.url, threads_per_queue=3, block_ms=100, queue_partitions=3
    )


@pytest.fixture
def cluster_worker(cluster_client: Any, cluster_settings: Settings) -> Iterator[Worker]:
    """An in-process worker serving CPU on the cluster, its queue in 3 partitions; clients know
    the partitions once its heartbeat is in."""
    w = Worker(cluster_settings).start()
    wait_until(lambda: cluster_client.zcard(cluster_client.keyspace.workers) > 0, timeout=10)
    yield w
    w.stop(timeout=10)


# helpers shared by several test modules ----------------------------------------------------


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is truthy; fail the test when ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def at_once(calls: Sequence[Callable[[], T]], timeout: float = 30.0) -> list[T | None]:
    """Each call in a thread of its own, all started before any is waited for; their results in
    order (None for one still running after ``timeout``)."""
    results: list[T | None] = [None] * len(calls)

    def one(n: int) -> None:
        results[n] = calls[n]()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results


def store_unchecked(
    client: Client,
    key: str,
    backend: str,
    blob: bytes,
    device: str = "CPU",
    inputs: tuple[str, ...] | list[str] = (),
    outputs: tuple[str, ...] | list[str] = (),
) -> None:
    """Store a model without the client's load check (as a redis-cli user could write one), so
    that tests can see the worker refuse it too."""
    from aiworker.storage import model as model_store

    meta = model_store.ModelMeta(backend, device, inputs=tuple(inputs), outputs=tuple(outputs))
    model_store.store_model(client, client.keyspace, key, meta, blob)


def heartbeat_of(
    keys: Keys, name: str, devices: Sequence[str] = ("CPU",), **changes: Any
) -> dict[str, Any]:
    """A heartbeat as a worker serving ``devices`` writes it, with ``changes``."""
    return {
        "name": name,
        "devices": list(devices),
        "queues": {device: [keys.queue(device)] for device in devices},
        "threads_per_queue": 1,
        "models": [],
        "backends": {},
        "jobs_done": 0,
        "healthy": True,
        "problems": [],
        "time": time.time(),
        **changes,
    }


def stalled_worker(
    client: Client, name: str = "host:1", devices: tuple[str, ...] = ("CPU",)
) -> None:
    """Heartbeats of a worker that serves ``devices`` but reads nothing (stuck, or busy)."""
    keys = client.keyspace
    status = heartbeat_of(keys, name, devices)
    client.set(keys.worker(name), json.dumps(status), ex=30)
    client.zadd(keys.workers, {name: time.time() + 60})


def stub_blob(op: str, **extra: object) -> bytes:
    """A STUB backend model: a JSON program such as ``{"op": "add"}``."""
    return json.dumps({"op": op, **extra}).encode()


@functools.cache
def torch_blob(op: str = "add") -> bytes:
    """A serialized TorchScript module adding (or multiplying) its two inputs."""
    torch = pytest.importorskip("torch")

    class Add(torch.nn.Module):
        def forward(self, a, b):  # unannotated arguments are Tensors in TorchScript
            return a + b

    class Mul(torch.nn.Module):
        def forward(self, a, b):  # unannotated arguments are Tensors in TorchScript
            return a * b

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; RedisAI still runs it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script({"add": Add, "mul": Mul}[op]()), buffer)
    return buffer.getvalue()
