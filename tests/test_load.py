"""Many jobs through several worker processes: every job runs once and is answered once."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from conftest import spawn_worker, stub_blob, wait_until

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import CONSUMER_GROUP

pytestmark = pytest.mark.slow

JOBS = 2000
CLIENT_THREADS = 8
WORKERS = 2


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> dict[int, tuple[int | None, str]]:
    """SIGTERM each worker, wait, kill stragglers; pid -> (exit code, stderr)."""
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    results = {}
    for proc in workers:
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        results[proc.pid] = (proc.returncode, (err or b"").decode(errors="replace"))
    return results


def test_two_worker_processes_serve_2000_jobs(client: Client, redis_server: RedisServer) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    workers: list[subprocess.Popen[bytes]] = []
    exits: dict[int, tuple[int | None, str]] = {}
    try:
        for _ in range(WORKERS):
            workers.append(spawn_worker(redis_server.url, "--threads-per-queue", "4"))
        wait_until(lambda: client.zcard(client.keyspace.workers) == WORKERS, timeout=60)

        replies: list[int] = [0] * CLIENT_THREADS
        errors: list[BaseException] = []
        per_thread = JOBS // CLIENT_THREADS

        def run(n: int) -> None:
            c = Client.from_url(redis_server.url, reply_timeout=60)
            try:
                for i in range(per_thread):
                    c.tensorset(f"in:{n}:{i}", np.array([n, i], dtype=np.int64))
                    result = c.modelexecute("m", [f"in:{n}:{i}", f"in:{n}:{i}"], [f"out:{n}:{i}"])
                    assert result == "OK"
                    replies[n] += 1
            except BaseException as exc:
                errors.append(exc)
            finally:
                c.close()

        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(n,)) for n in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        elapsed = time.monotonic() - started
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:3]
        assert sum(replies) == JOBS

        # every output present and correct (outputs are unique per job)
        pipe = client.pipeline(transaction=False)
        for n in range(CLIENT_THREADS):
            for i in range(per_thread):
                pipe.hget(f"out:{n}:{i}", "blob")
        blobs = pipe.execute()
        expected = [
            np.array([2 * n, 2 * i], dtype=np.int64).tobytes()
            for n in range(CLIENT_THREADS)
            for i in range(per_thread)
        ]
        assert blobs == expected

        # ran exactly once each: the shared statistics count every execution
        info = client.infoget("m")
        assert (info["calls"], info["errors"], info["samples"]) == (JOBS, 0, 2 * JOBS)
        # every reply consumed, none left over (a duplicate completion would leave one behind)
        assert list(client.scan_iter(match=client.keyspace.reply("*"))) == []
        queue = client.keyspace.queue("CPU")
        assert client.xlen(queue) == 0
        assert client.xpending(queue, CONSUMER_GROUP)["pending"] == 0

        # both processes took part (their heartbeats report the jobs each one finished)
        def jobs_done() -> list[int]:
            names = [n.decode() for n in client.zrange(client.keyspace.workers, 0, -1)]
            statuses = [client.get(client.keyspace.worker(name)) for name in names]
            return [json.loads(s)["jobs_done"] for s in statuses if s]

        wait_until(lambda: sum(jobs_done()) == JOBS, timeout=10)
        done = jobs_done()
        assert len(done) == WORKERS and all(done), done
        print(f"{JOBS} jobs, {WORKERS} workers x 4 threads: {JOBS / elapsed:.0f} jobs/s")
    finally:
        exits = stop_workers(workers)
    for code, err in exits.values():
        assert code == 0, err[-2000:]
    wait_until(lambda: client.zcard(client.keyspace.workers) == 0, timeout=10)
