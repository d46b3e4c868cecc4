"""Crash recovery with real processes: kill -9, stalls, leases, dead letters."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import wait_until
from faults import (
    KEYS,
    QUEUE,
    WorkerProcess,
    elapsed_until,
    enqueue,
    job_entry,
    pending_ids,
    replies,
    reply_counts,
    stub_model,
    tensor,
    wait_for_workers,
    workers,
)

from aiworker import Client, Settings, Worker
from aiworker.embedded import RedisServer, free_port
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.worker.process import ensure_group


def _outputs(client: Client, keys: list[str]) -> list[list[float]]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "blob")
    return [np.frombuffer(b, dtype="<f4").tolist() for b in pipe.execute()]


@pytest.mark.slow
@pytest.mark.parametrize("batch", [(0, 0, 0), (8, 2, 5)], ids=["unbatched", "autobatched"])
def test_kill_9_one_of_two_workers_with_1000_jobs_in_flight(
    client: Client, redis_server: RedisServer, tmp_path: Path, batch: tuple[int, int, int]
) -> None:
    n, visibility = 1000, 2.0
    stub_model(client, "m", batch=batch, sleep_ms=4)
    tensor(client, "b", [10, 20])
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        tensor(pipe, f"a{i}", [i, -i])
    pipe.execute()
    reply_keys = [f"r{i}" for i in range(n)]
    settings = {"threads_per_queue": 2, "visibility_timeout": visibility, "block_ms": 200}
    with workers(redis_server.url, tmp_path, 2, **settings) as procs:
        wait_for_workers(client, procs)
        enqueue(client, [job_entry("m", [f"a{i}", "b"], [f"c{i}"], f"r{i}") for i in range(n)])
        wait_until(lambda: sum(reply_counts(client, reply_keys)) >= n // 4, timeout=30)

        victim = procs[0]
        victim.proc.kill()
        victim.wait(10)
        held = set(pending_ids(client, victim.name_prefix))
        assert held, "the killed worker held entries when it died"
        reclaim_s = elapsed_until(
            lambda: not held & set(pending_ids(client, victim.name_prefix)), timeout=30
        )
        # An entry becomes reclaimable visibility_timeout after its last lease renewal (at most
        # one renewal interval before the kill); the survivor scans every visibility_timeout / 4.
        print(f"held={len(held)} reclaim_s={reclaim_s:.2f}")
        assert reclaim_s <= visibility + visibility / 4 + 1.0, reclaim_s

        wait_until(lambda: sum(reply_counts(client, reply_keys)) >= n, timeout=60)
        assert procs[1].proc.poll() is None, "the surviving worker kept running"

    assert reply_counts(client, reply_keys) == [1] * n, "exactly one reply per requester"
    assert all(items[0]["status"] == "ok" for items in replies(client, reply_keys))
    assert _outputs(client, [f"c{i}" for i in range(n)]) == [[i + 10, 20 - i] for i in range(n)]
    assert client.infoget("m")["calls"] == n, "statistics count each job once"
    assert client.xlen(QUEUE) == 0
    assert pending_ids(client) == []


@pytest.mark.slow
def test_a_stalled_workers_late_result_is_dropped(
    client: Client, redis_server: RedisServer, tmp_path: Path, settings: Settings
) -> None:
    """SIGSTOP a worker mid-job past the visibility timeout: another worker reclaims and finishes
    the job; when the stalled one wakes up and finishes too, its completion changes nothing."""
    stub_model(client, "slow", sleep_ms=1500)
    tensor(client, "a", [1, 2])
    tensor(client, "b", [3, 4])
    port = free_port()
    stalled = WorkerProcess(
        redis_server.url,
        tmp_path / "stalled.log",
        threads_per_queue=1,
        visibility_timeout=1.0,
        metrics_port=port,
        metrics_addr="127.0.0.1",
    )
    rescuer = None
    try:
        wait_for_workers(client, [stalled])
        enqueue(client, [job_entry("slow", ["a", "b"], ["c"], "r1")])
        wait_until(lambda: pending_ids(client, stalled.name_prefix), timeout=10)
        stalled.signal(signal.SIGSTOP)
        rescuer = Worker(settings.replace(visibility_timeout=1.0, threads_per_queue=1)).start()
        wait_until(lambda: client.llen("r1") == 1, timeout=15)
        stalled.signal(signal.SIGCONT)

        def dropped() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                text = page.read().decode()
            return 'aiworker_duplicate_completions_total{device="CPU"} 1.0' in text

        wait_until(dropped, timeout=15, interval=0.2)
        assert rescuer.metrics.reclaimed.labels("CPU")._value.get() == 1
    finally:
        stalled.signal(signal.SIGCONT)
        stalled.stop()
        if rescuer is not None:
            rescuer.stop(timeout=5)
    assert client.llen("r1") == 1, "one reply, although two workers finished the job"
    assert client.tensorget("c").tolist() == [4.0, 6.0]
    assert client.infoget("slow")["calls"] == 1


def test_a_long_job_keeps_its_lease(client: Client, settings: Settings) -> None:
    """A job running three visibility timeouts is not reclaimed (not even by its own worker)."""
    stub_model(client, "slow", sleep_ms=1500)
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    w = Worker(settings.replace(visibility_timeout=0.5, threads_per_queue=1)).start()
    try:
        [entry_id] = enqueue(client, [job_entry("slow", ["a", "b"], ["c"], "r1")])
        wait_until(lambda: (QUEUE, entry_id) in w.held_entries(), timeout=5)
        time.sleep(1.0)  # two visibility timeouts into the job
        [row] = client.xpending_range(QUEUE, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
        assert row["times_delivered"] == 1
        assert row["time_since_delivered"] < 500
        assert client.blpop(["r1"], 10) is not None
    finally:
        w.stop(timeout=5)
    assert w.metrics.reclaimed.labels("CPU")._value.get() == 0
    assert client.llen("r1") == 0


def test_leases_of_the_other_queues_are_renewed_past_one_that_fails(
    client: Client, settings: Settings
) -> None:
    """A renewal that fails for one queue (a partition whose master is lost; here a key that is
    no stream) does not keep the entries of the others from being renewed."""
    w = Worker(settings)
    ensure_group(client, QUEUE)
    [entry_id] = enqueue(client, [job_entry("m", ["a"], ["c"], "r1")])
    consumer = f"{w.name}:CPU:0"
    client.xreadgroup(CONSUMER_GROUP, consumer, {QUEUE: ">"}, count=1)
    client.set("not-a-stream", "x")
    w.held.add("not-a-stream", "1-1", consumer)  # renewed first: it fails
    w.held.add(QUEUE, entry_id, consumer)
    time.sleep(0.5)
    with pytest.raises(redis.ResponseError):
        w.recovery.renew()
    [row] = client.xpending_range(QUEUE, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
    assert row["time_since_delivered"] < 400, row
    w.wires.close()


def test_an_entry_waiting_in_the_batcher_keeps_its_lease(
    client: Client, settings: Settings
) -> None:
    """A request waits 2.5 s (MINBATCHTIMEOUT) for batch partners: five visibility timeouts."""
    stub_model(client, "m", batch=(8, 8, 2500), op="identity")
    tensor(client, "a", [1])
    w = Worker(settings.replace(visibility_timeout=0.5, threads_per_queue=2)).start()
    try:
        [entry_id] = enqueue(client, [job_entry("m", ["a"], ["c"], "r1")])
        wait_until(lambda: entry_id in w.held_entry_ids(), timeout=5)
        time.sleep(1.5)
        assert entry_id in w.held_entry_ids(), "still waiting for partners"
        [row] = client.xpending_range(QUEUE, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
        assert row["times_delivered"] == 1 and row["time_since_delivered"] < 500
        popped = client.blpop(["r1"], 10)
        assert popped is not None and b'"ok"' in popped[1]
    finally:
        w.stop(timeout=5)
    assert w.metrics.reclaimed.labels("CPU")._value.get() == 0
    assert client.llen("r1") == 0 and w.held_entries() == []


def test_an_abandoned_entry_is_reclaimed_and_run(client: Client, settings: Settings) -> None:
    stub_model(client, "m")
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    ensure_group(client, QUEUE)
    enqueue(client, [job_entry("m", ["a", "b"], ["c"], "r1")])
    client.xreadgroup(CONSUMER_GROUP, "gone:1:CPU:0", {QUEUE: ">"}, count=1)  # never acked
    w = Worker(settings.replace(visibility_timeout=0.3, threads_per_queue=1)).start()
    try:
        popped = client.blpop(["r1"], 10)
        assert popped is not None and b'"ok"' in popped[1]
    finally:
        w.stop(timeout=5)
    assert client.tensorget("c").tolist() == [3.0]
    assert pending_ids(client) == [] and client.xlen(QUEUE) == 0


def test_an_entry_delivered_too_often_goes_to_the_dead_letters(
    client: Client, settings: Settings
) -> None:
    stub_model(client, "m")
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    ensure_group(client, QUEUE)
    [entry_id] = enqueue(client, [job_entry("m", ["a", "b"], ["c"], "r1")])
    client.xreadgroup(CONSUMER_GROUP, "gone:1:CPU:0", {QUEUE: ">"}, count=1)
    w = Worker(settings.replace(visibility_timeout=0.3, max_deliveries=1)).start()
    try:
        popped = client.blpop(["r1"], 10)
    finally:
        w.stop(timeout=5)
    assert popped is not None
    reply = popped[1].decode()
    assert '"error"' in reply and "delivered 2 times" in reply and KEYS.dead_letters("CPU") in reply
    [(_, dead)] = client.xrange(KEYS.dead_letters("CPU"))
    assert dead[b"dead_letter_entry"].decode() == entry_id
    assert b"delivered 2 times" in dead[b"dead_letter_error"]
    assert b"job" in dead and dead[b"reply"] == b"r1", "the original request is kept"
    assert not client.exists("c"), "a dead-lettered job does not run"
    assert client.xlen(QUEUE) == 0 and pending_ids(client) == []
    assert client.infoget("m")["errors"] == 1
    assert w.metrics.failures.labels("m", "CPU", "dead_letter")._value.get() == 1


def test_the_dead_letter_stream_is_capped(client: Client, settings: Settings) -> None:
    ensure_group(client, QUEUE)
    enqueue(client, [{"cmd": f"AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 c{i}"} for i in range(300)])
    client.xreadgroup(CONSUMER_GROUP, "gone:1:CPU:0", {QUEUE: ">"}, count=300)
    w = Worker(settings.replace(visibility_timeout=0.2, max_deliveries=1, dead_letter_maxlen=10))
    w.start()
    try:
        wait_until(lambda: not pending_ids(client), timeout=20)
    finally:
        w.stop(timeout=5)
    # MAXLEN ~ trims whole stream nodes (100 entries by default), never below the cap.
    assert 10 <= client.xlen(KEYS.dead_letters("CPU")) <= 10 + 100


@pytest.mark.slow
def test_a_job_that_keeps_killing_its_worker_ends_in_the_dead_letters(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    stub_model(client, "m", sleep_ms=60_000)
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    settings = {"visibility_timeout": 1.0, "max_deliveries": 2, "block_ms": 200}
    enqueue(client, [job_entry("m", ["a", "b"], ["c"], "r1")])
    for attempt in range(2):  # deliveries 1 and 2 each kill their worker
        victim = WorkerProcess(redis_server.url, tmp_path / f"victim{attempt}.log", **settings)
        try:
            wait_until(lambda v=victim: pending_ids(client, v.name_prefix), timeout=20)
        finally:
            victim.kill()
    last = WorkerProcess(redis_server.url, tmp_path / "last.log", **settings)
    try:
        popped = client.blpop(["r1"], 20)
    finally:
        last.stop()
    assert popped is not None and b"delivered 3 times" in popped[1]
    assert client.xlen(KEYS.dead_letters("CPU")) == 1
    assert pending_ids(client) == [] and client.xlen(QUEUE) == 0
