"""SIGTERM/SIGINT: stop reading, finish what is in hand, hand back the rest, deregister, exit 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from faults import (
    QUEUE,
    WorkerProcess,
    enqueue,
    job_entry,
    live_pids,
    pending_ids,
    stub_model,
    tensor,
    wait_for_workers,
)

from aiworker import Client, Settings, Worker
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.worker.lane import Lane


def _consumers(client: Client) -> list[str]:
    return [c["name"].decode() for c in client.xinfo_consumers(QUEUE, CONSUMER_GROUP)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_finishes_the_job_in_hand_and_deregisters(
    client: Client, redis_server: RedisServer, tmp_path: Path, signum: int
) -> None:
    stub_model(client, "slow", sleep_ms=800)
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    proc = WorkerProcess(redis_server.url, tmp_path / "w.log", threads_per_queue=1, block_ms=200)
    wait_for_workers(client, [proc])
    enqueue(client, [job_entry("slow", ["a", "b"], ["c"], "r1")])
    wait_until(lambda: pending_ids(client, proc.name_prefix), timeout=10)
    proc.signal(signum)
    enqueue(client, [job_entry("slow", ["a", "b"], ["d"], "r2")])  # arrives while stopping

    assert proc.wait(timeout=20) == 0
    assert client.lrange("r1", 0, -1) and b'"ok"' in client.lrange("r1", 0, -1)[0]
    assert client.tensorget("c").tolist() == [3.0]
    assert proc.proc.pid not in live_pids(client), "heartbeat removed"
    assert not [c for c in _consumers(client) if proc.name_prefix in c], "consumers deleted"
    # The job that came in during the stop was either finished or left for the next worker.
    assert client.llen("r2") == 1 or client.xlen(QUEUE) == 1


def test_unfinished_jobs_are_handed_back_after_the_drain_timeout(
    client: Client, redis_server: RedisServer, tmp_path: Path, settings: Settings
) -> None:
    visibility = 10.0
    stub_model(client, "slow", sleep_ms=1500)
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    proc = WorkerProcess(
        redis_server.url,
        tmp_path / "w.log",
        threads_per_queue=1,
        visibility_timeout=visibility,
        drain_timeout=0.2,
    )
    wait_for_workers(client, [proc])
    [entry_id] = enqueue(client, [job_entry("slow", ["a", "b"], ["c"], "r1")])
    wait_until(lambda: pending_ids(client, proc.name_prefix), timeout=10)
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    stopped = time.monotonic()
    assert pending_ids(client, proc.name_prefix) == [entry_id], "never drop a pending entry"
    assert [c for c in _consumers(client) if proc.name_prefix in c], "kept: it has a pending entry"

    # Handed back with an idle time of a full visibility timeout: the next worker's first scan
    # takes it over at once instead of 10 s later.
    w = Worker(settings.replace(visibility_timeout=visibility, threads_per_queue=1)).start()
    try:
        wait_until(lambda: not pending_ids(client, proc.name_prefix), timeout=5)
        assert time.monotonic() - stopped < visibility / 2
        assert client.blpop(["r1"], 10) is not None
    finally:
        w.stop(timeout=5)
    assert client.tensorget("c").tolist() == [3.0]


def test_stop_in_process_hands_back_and_keeps_pending_entries(
    client: Client, settings: Settings
) -> None:
    stub_model(client, "slow", sleep_ms=2000)
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    w = Worker(settings.replace(threads_per_queue=1, visibility_timeout=5.0)).start()
    [entry_id] = enqueue(client, [job_entry("slow", ["a", "b"], ["c"], "r1")])
    wait_until(lambda: w.held_entries() == [(QUEUE, entry_id)], timeout=5)
    w.stop(timeout=0.1)
    [row] = client.xpending_range(QUEUE, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
    assert row["time_since_delivered"] >= 5000, "handed back: reclaimable at once"
    # The abandoned thread still finishes (nobody reclaimed the entry meanwhile): one reply.
    assert client.blpop(["r1"], 10) is not None


def test_a_stop_with_redis_gone_does_not_wait_out_the_drain(tmp_path: Path) -> None:
    """Nothing in hand, Redis gone: the lane threads only retry their connection, and the stop
    ends within a blocking read and the deregistering's bound (it waited the whole drain_timeout,
    past a supervisor's usual 30 s grace period)."""
    server = RedisServer().start()
    proc = WorkerProcess(server.url, tmp_path / "w.log", block_ms=200, drain_timeout=120)
    try:
        wait_for_workers(Client.from_url(server.url), [proc])
        proc.signal(signal.SIGTERM)
        server.stop()
        began = time.monotonic()
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - began < 15
    finally:
        proc.kill()
        server.stop()


def test_a_stop_waits_for_a_job_whose_inputs_are_still_being_read(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry read and still being prepared (its large inputs coming in) is in hand, as a
    running job is: the stop drains it (it stopped waiting after a blocking read and a second of
    lanes that looked idle, and handed the job back)."""
    stub_model(client, "m")
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    preparing = threading.Event()
    prepare = Lane._prepare

    def slow_prepare(self: Lane, *args: Any) -> Any:
        preparing.set()
        time.sleep(3)  # a read of hundreds of megabytes
        return prepare(self, *args)

    monkeypatch.setattr(Lane, "_prepare", slow_prepare)
    w = Worker(settings.replace(threads_per_queue=1, block_ms=200)).start()
    enqueue(client, [job_entry("m", ["a", "b"], ["c"], "r1")])
    assert preparing.wait(10)
    w.stop(timeout=30)
    assert b'"ok"' in client.lrange("r1", 0, -1)[0]
    assert client.tensorget("c").tolist() == [3.0]
