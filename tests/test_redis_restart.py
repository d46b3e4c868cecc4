"""Workers ride out a redis-server crash and restart (AOF on): no accepted job is lost."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import wait_until
from faults import (
    QUEUE,
    enqueue,
    job_entry,
    pending_ids,
    stub_model,
    tensor,
    wait_for_workers,
    workers,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

from aiworker.embedded import RedisServer


def _no_retry_client(port: int) -> redis.Redis:
    """A producer that never re-sends a command: a retried XADD could enqueue a job twice."""
    return redis.Redis(port=port, retry=Retry(NoBackoff(), 0), socket_timeout=5)


@pytest.mark.slow
def test_workers_reconnect_after_redis_restarts_under_load(tmp_path: Path) -> None:
    total = 600
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    # appendfsync always: an XADD that returned an id is on disk even if Redis is killed.
    server = RedisServer(
        directory=data_dir, extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    ).start()
    port = server.port
    admin = _no_retry_client(port)
    stub_model(admin, "m", sleep_ms=2)
    tensor(admin, "b", [10, 20])
    pipe = admin.pipeline(transaction=False)
    for i in range(total):
        tensor(pipe, f"a{i}", [i, -i])
    pipe.execute()

    accepted: dict[int, str] = {}  # job number -> reply key of the attempt Redis accepted
    done_producing = threading.Event()

    def produce() -> None:
        producer = _no_retry_client(port)
        i = attempt = 0
        while i < total:
            reply = f"r{i}.{attempt}"
            try:
                enqueue(producer, [job_entry("m", [f"a{i}", "b"], [f"c{i}"], reply)])
            except redis.RedisError:  # not accepted (or unknown): submit again under a new key
                attempt += 1
                time.sleep(0.05)
                continue
            accepted[i] = reply
            i += 1
            time.sleep(0.004)
        done_producing.set()

    try:
        with workers(server.url, tmp_path, 2, threads_per_queue=2, visibility_timeout=2.0) as procs:
            wait_for_workers(admin, procs)
            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            wait_until(lambda: len(accepted) >= total // 3, timeout=30)

            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)  # crash, not a clean shutdown
            server.process.wait()
            server.process = None
            time.sleep(0.5)
            server.start()

            wait_until(done_producing.is_set, timeout=60)

            def all_replied() -> bool:
                try:
                    pipe = admin.pipeline(transaction=False)
                    for key in accepted.values():
                        pipe.llen(key)
                    return all(n >= 1 for n in pipe.execute())
                except redis.ConnectionError:
                    return False

            wait_until(all_replied, timeout=60, interval=0.1)
            for proc in procs:
                assert proc.proc.poll() is None, f"a worker died:\n{proc.log()[-2000:]}"
        # Both workers stopped cleanly (exit 0) after the restart.
        assert all(p.proc.returncode == 0 for p in procs)

        pipe = admin.pipeline(transaction=False)
        for key in accepted.values():
            pipe.llen(key)
        assert pipe.execute() == [1] * total, "exactly one reply for every accepted job"
        pipe = admin.pipeline(transaction=False)
        for i in range(total):
            pipe.hget(f"c{i}", "blob")
        outputs = [np.frombuffer(b, dtype="<f4").tolist() for b in pipe.execute()]
        assert outputs == [[i + 10, 20 - i] for i in range(total)]
        assert admin.xlen(QUEUE) == 0 and pending_ids(admin) == []
    finally:
        admin.close()
        server.stop()


@pytest.mark.slow
def test_sigterm_while_redis_is_down_stops_within_the_drain_timeout(tmp_path: Path) -> None:
    """Deregistering is a courtesy: with Redis gone, its retries must not hold the stop past a
    supervisor's grace period (compose: 10 s)."""
    server = RedisServer().start()
    admin = _no_retry_client(server.port)
    try:
        with workers(server.url, tmp_path, 1, drain_timeout=5) as procs:
            wait_for_workers(admin, procs)
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            server.process = None
            time.sleep(1.0)  # the worker notices: its reads fail and retry
            started = time.monotonic()
            procs[0].signal(signal.SIGTERM)
            code = procs[0].wait(30)
            took = time.monotonic() - started
        assert code == 0, procs[0].log()[-2000:]
        assert took < 9.0, f"stopped after {took:.1f} s"
    finally:
        server.stop()
