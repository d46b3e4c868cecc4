"""Helpers for tests that break things: worker processes, raw jobs, replies, pending entries."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from conftest import wait_until, worker_env

from aiworker.protocol.entries import encode_entry
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.requests import ModelExecute

KEYS = Keys()
QUEUE = KEYS.queue("CPU")


class WorkerProcess:
    """``python -m aiworker worker`` with settings in AIWORKER_* variables; log kept in a file."""

    def __init__(self, url: str, log_path: Path, *args: str, **settings: object) -> None:
        env = worker_env(**{f"AIWORKER_{k.upper()}": str(v) for k, v in settings.items()})
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait/kill
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiworker", "worker", "--redis-url", url, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def name_prefix(self) -> str:
        """Consumer names of this process start with ``host:pid:``."""
        return f":{self.proc.pid}:"

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def workers(
    url: str, tmp_path: Path, count: int, **settings: object
) -> Iterator[list[WorkerProcess]]:
    """``count`` worker processes, stopped (or killed) when the block ends."""
    procs = [WorkerProcess(url, tmp_path / f"worker{n}.log", **settings) for n in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop(timeout=15)


def live_pids(r: redis.Redis) -> set[int]:
    pids = set()
    for raw in r.mget([KEYS.worker(n.decode()) for n in r.zrange(KEYS.workers, 0, -1)] or ["-"]):
        if raw is not None:
            pids.add(int(json.loads(raw)["pid"]))
    return pids


def wait_for_workers(r: redis.Redis, procs: Iterable[WorkerProcess], timeout: float = 30) -> None:
    wanted = {p.proc.pid for p in procs}

    def ready() -> bool:
        for p in procs:
            if p.proc.poll() is not None:
                pytest.fail(f"worker exited with {p.proc.returncode}:\n{p.log()[-3000:]}")
        return wanted <= live_pids(r)

    wait_until(ready, timeout=timeout, interval=0.05)


def stub_model(
    r: redis.Redis, key: str = "m", batch: tuple[int, int, int] = (0, 0, 0), **program: object
) -> None:
    """A STUB model (``add`` unless ``op`` says otherwise); ``batch``: BATCHSIZE, MINBATCHSIZE,
    MINBATCHTIMEOUT."""
    from aiworker.storage import model as model_store

    batchsize, minbatchsize, minbatchtimeout = batch
    meta = model_store.ModelMeta(
        backend="STUB",
        device="CPU",
        batchsize=batchsize,
        minbatchsize=minbatchsize,
        minbatchtimeout=minbatchtimeout,
    )
    model_store.store_model(r, KEYS, key, meta, json.dumps({"op": "add", **program}).encode())


def tensor(r: redis.Redis | Any, key: str, values: list[float]) -> None:
    array = np.asarray(values, dtype=np.float32)
    r.hset(
        key,
        mapping={
            "kind": "tensor",
            "dtype": "FLOAT",
            "shape": str(len(values)),
            "blob": array.tobytes(),
        },
    )


def job_entry(model: str, inputs: list[str], outputs: list[str], reply: str) -> dict[str, Any]:
    return encode_entry(ModelExecute(model, tuple(inputs), tuple(outputs)), reply)


def enqueue(r: redis.Redis, entries: list[dict[str, Any]], queue: str = QUEUE) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(queue, fields)
    return [i.decode() for i in pipe.execute()]


def reply_counts(r: redis.Redis, reply_keys: list[str]) -> list[int]:
    pipe = r.pipeline(transaction=False)
    for key in reply_keys:
        pipe.llen(key)
    return [int(n) for n in pipe.execute()]


def pending_ids(r: redis.Redis, consumer_substring: str = "", queue: str = QUEUE) -> list[str]:
    """Entries pending in the group, optionally only those of consumers whose name contains it."""
    try:
        rows = r.xpending_range(queue, CONSUMER_GROUP, min="-", max="+", count=100_000)
    except redis.ResponseError:
        return []
    return [
        row["message_id"].decode() for row in rows if consumer_substring in row["consumer"].decode()
    ]


def replies(r: redis.Redis, reply_keys: list[str]) -> list[list[dict[str, Any]]]:
    pipe = r.pipeline(transaction=False)
    for key in reply_keys:
        pipe.lrange(key, 0, -1)
    return [[json.loads(x) for x in items] for items in pipe.execute()]


def elapsed_until(predicate: Any, timeout: float, interval: float = 0.02) -> float:
    """Seconds until ``predicate`` holds (fails the test after ``timeout``)."""
    started = time.monotonic()
    wait_until(predicate, timeout=timeout, interval=interval)
    return time.monotonic() - started


def content(r: redis.Redis, key: str) -> tuple[Any, ...]:
    """A key's type and value, comparable (DUMP is not: a hash table's order changes on access)."""
    kind = r.type(key)
    if kind == b"hash":
        return kind, sorted(r.hgetall(key).items())
    if kind == b"list":
        return kind, r.lrange(key, 0, -1)
    if kind == b"set":
        return kind, sorted(r.smembers(key))
    if kind == b"zset":
        return kind, r.zrange(key, 0, -1, withscores=True)
    if kind == b"stream":
        return kind, r.xrange(key)
    return kind, r.get(key) if kind == b"string" else None


class ReplyDropper:
    """A TCP proxy to Redis that, once ``armed``, forwards the next piece a client sends that
    holds ``marker``, keeps its replies from the client, and then closes both sides: Redis ran
    the commands, the client never learns it (a network reset at the worst moment). With
    ``answer_first`` the first piece of their replies goes through before the link is lost (a
    job's XADD answered, the first wait for its reply in the same round trip cut)."""

    def __init__(
        self, redis_port: int, marker: bytes = b"XADD", answer_first: bool = False
    ) -> None:
        self.redis_port = redis_port
        self.marker = marker
        self.answer_first = answer_first
        self.armed = threading.Event()
        self.dropped = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.redis_port))
            mute = threading.Event()
            for ends in ((client, server, mute, True), (server, client, mute, False)):
                threading.Thread(target=self._pipe, args=ends, daemon=True).start()

    def _pipe(self, source: Any, sink: Any, mute: threading.Event, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                hit = upstream and self.armed.is_set() and self.marker in data.upper()
                if hit:
                    mute.set()
                    self.armed.clear()
                if not upstream and mute.is_set():
                    if not self.answer_first:
                        continue  # the replies to what was marked are lost
                    sink.sendall(data)
                    self.dropped += 1
                    break
                sink.sendall(data)
                if hit and not self.answer_first:
                    time.sleep(0.2)  # Redis runs it, and answers nobody
                    self.dropped += 1
                    break
        except OSError:
            pass
        finally:
            for each in (source, sink):
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)
                each.close()
