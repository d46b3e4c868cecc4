"""Invariants of the job path: all or nothing, one bad entry fails alone, bounded threads, drains,
models never closed under a job, hung jobs noticed, and reads of only what can be served."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import stub_blob, wait_until
from faults import (
    QUEUE,
    WorkerProcess,
    enqueue,
    job_entry,
    pending_ids,
    stub_model,
    tensor,
    wait_for_workers,
    workers,
)

from aiworker import Client, Settings, Worker
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.storage.health import live_workers
from aiworker.worker.consume import ensure_group

KEYS = Keys()


def blpop_json(client: Client, key: str, timeout: float = 10) -> dict[str, Any]:
    """The reply on ``key``, waited for in slices below the client's socket timeout."""
    deadline = time.monotonic() + timeout
    while True:
        popped = client.blpop([key], 2)
        if popped is not None:
            return json.loads(popped[1])  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no reply on {key}"


# all or nothing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt",
    [
        {"calls": "many"},  # HINCRBY would fail: "hash value is not an integer"
        {"duration": "9" * 30},  # ... or overflow
    ],
)
def test_a_corrupt_statistics_hash_never_leaves_a_completion_half_done(
    client: Client, worker: Worker, corrupt: dict[str, str]
) -> None:
    stub_model(client, "m", op="identity")
    tensor(client, "a", [1, 2])
    client.hset(KEYS.stats("m"), mapping=corrupt)
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 out", "reply": "r"})
    reply = blpop_json(client, "r")
    assert reply["status"] == "ok", reply
    assert client.tensorget("out").tolist() == [1.0, 2.0]
    info = client.infoget("m")
    assert info["calls"] == 1 and info["samples"] == 2, "counted into a repaired hash"
    assert client.xlen(QUEUE) == 0 and pending_ids(client) == []


def test_a_statistics_key_of_another_type_is_replaced(client: Client, worker: Worker) -> None:
    stub_model(client, "m", op="identity")
    tensor(client, "a", [1, 2])
    client.set(KEYS.stats("m"), "not a hash")
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 out", "reply": "r"})
    assert blpop_json(client, "r")["status"] == "ok"
    assert client.infoget("m")["calls"] == 1


# one bad entry fails alone ---------------------------------------------------------------


def test_one_bad_entry_among_reclaimed_ones_fails_alone(client: Client, settings: Settings) -> None:
    """Entries taken together (here: reclaimed from a dead consumer in one scan) are decoded and
    read together; a non-UTF-8 key name in one is that entry's error, and the reclaim thread
    lives on."""
    stub_model(client, "m", op="identity")
    tensor(client, "a", [1, 2])
    ensure_group(client, QUEUE)
    bad = {b"cmd": b"AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 out\xff\xfe", b"reply": b"rbad"}
    good = [job_entry("m", ["a"], [f"o{n}"], f"r{n}") for n in range(3)]
    enqueue(client, [good[0], bad, *good[1:]])
    client.xreadgroup(CONSUMER_GROUP, "dead-consumer", {QUEUE: ">"}, count=10)  # then it died
    w = Worker(settings.replace(visibility_timeout=0.5)).start()
    try:
        reply = blpop_json(client, "rbad")
        assert reply["status"] == "error" and "not valid UTF-8" in reply["error"], reply
        for n in range(3):
            assert blpop_json(client, f"r{n}")["status"] == "ok"
        wait_until(lambda: pending_ids(client) == [] and client.xlen(QUEUE) == 0)
        assert w.problems() == [], "every thread alive"
        names = [t.name for t in threading.enumerate()]
        assert "aiworker-CPU-reclaim" in names
    finally:
        w.stop(timeout=5)


def test_a_non_utf8_output_key_is_refused_at_first_sight(client: Client, worker: Worker) -> None:
    stub_model(client, "m", op="identity")
    tensor(client, "a", [1, 2])
    client.xadd(QUEUE, {"cmd": b"AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 \xc3\x28", "reply": "r"})
    reply = blpop_json(client, "r")
    assert reply["status"] == "error" and "not valid UTF-8" in reply["error"]
    assert client.blpop(["r"], 0.3) is None, "answered once, not re-run"
    assert client.xlen(QUEUE) == 0 and pending_ids(client) == []


# bounded concurrency, drains ---------------------------------------------------------------


def test_two_hundred_queued_dags_do_not_start_a_thread_each(
    client: Client, settings: Settings
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity", sleep_ms=2))
    client.tensorset("a", np.ones(2, np.float32))
    dag = client.dag(load="a").modelexecute("m", "a", "b").tensorget("b")
    request = dag.request()
    from aiworker.protocol.entries import encode_entry

    ids = enqueue(client, [encode_entry(request, f"d{n}") for n in range(200)])
    before = threading.active_count()
    w = Worker(settings).start()
    peak = 0
    try:
        deadline = time.monotonic() + 60
        while client.xlen(QUEUE) and time.monotonic() < deadline:
            peak = max(peak, threading.active_count())
            time.sleep(0.005)
        assert client.xlen(QUEUE) == 0, "all 200 DAGs ran"
        assert all(client.llen(f"d{n}") == 1 for n in range(len(ids)))
    finally:
        w.stop(timeout=10)
    # consumer, reclaim, heartbeat and lease threads: never one per DAG
    assert peak - before <= 2 * settings.threads_per_queue + 4, peak - before


def test_a_graceful_stop_drains_a_running_dag(client: Client, settings: Settings) -> None:
    client.modelstore("slow", "STUB", "CPU", stub_blob("identity", sleep_ms=1500))
    client.tensorset("a", np.ones(2, np.float32))
    w = Worker(settings.replace(drain_timeout=30)).start()
    dag = client.dag(load="a", persist="b").modelexecute("slow", "a", "b")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(out=dag.execute()))
    thread.start()
    wait_until(lambda: w.held_entry_ids(), timeout=10)
    time.sleep(0.2)  # the DAG is running now
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started > 1.0, "stop waited for the DAG"
    thread.join(10)
    assert result["out"] == ["OK"] and client.exists("b")
    assert pending_ids(client) == [], "completed, not handed back"


# models in use ---------------------------------------------------------------------------


def test_a_model_in_use_is_not_closed_by_eviction(client: Client, settings: Settings) -> None:
    """A cache of one model and two TF models used at once: each eviction would close the other's
    session under its running job ("Loop execution was cancelled")."""
    pytest.importorskip("tensorflow")
    from builders import tf_slow_graph

    for key in ("t1", "t2"):
        client.modelstore(key, "TF", "CPU", tf_slow_graph(), inputs="x", outputs="out")
    client.tensorset("x", np.zeros(1, np.float32))
    w = Worker(settings.replace(model_cache_size=1, threads_per_queue=2)).start()
    try:
        for n in range(8):
            client.xadd(QUEUE, {"cmd": f"AI.MODELEXECUTE t{n % 2 + 1} INPUTS 1 x OUTPUTS 1 y{n}",
                                "reply": f"r{n}"})  # fmt: skip
        for n in range(8):
            reply = blpop_json(client, f"r{n}", 60)
            assert reply["status"] == "ok", reply
    finally:
        w.stop(timeout=30)


# hung jobs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_hung_job_makes_the_worker_unhealthy_and_exit(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    client.modelstore("stuck", "STUB", "CPU", stub_blob("identity", sleep_ms=600_000))
    stub_model(client, "quick", op="identity")
    tensor(client, "a", [1, 2])
    proc = WorkerProcess(
        redis_server.url,
        tmp_path / "hung.log",
        threads_per_queue=1,
        hung_job_timeout=1,
        visibility_timeout=2,
        max_deliveries=1,
    )
    try:
        wait_for_workers(client, [proc])
        client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE stuck INPUTS 1 a OUTPUTS 1 s", "reply": "rs"})
        wait_until(lambda: pending_ids(client) != [], timeout=10)
        client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE quick INPUTS 1 a OUTPUTS 1 q", "reply": "rq"})

        def unhealthy() -> bool:
            raw = client.get(KEYS.worker(f"{socket.gethostname()}:{proc.proc.pid}"))
            return raw is not None and not json.loads(raw)["healthy"]

        wait_until(lambda: unhealthy() or proc.proc.poll() is not None, timeout=10)
        assert proc.wait(15) == 70, proc.log()[-2000:]
        assert "hung_job_timeout" in proc.log()
    finally:
        proc.stop()
    # A fresh worker serves the entry handed back and dead-letters the one that hung.
    with workers(redis_server.url, tmp_path, 1, visibility_timeout=2, max_deliveries=1) as fresh:
        wait_for_workers(client, fresh)
        assert blpop_json(client, "rq", 20)["status"] == "ok"
        reply = blpop_json(client, "rs", 20)
        assert reply["status"] == "error" and "delivered 2 times" in reply["error"], reply
        assert client.xlen(KEYS.dead_letters("CPU")) == 1


# reading only what can be served -----------------------------------------------------------


@pytest.mark.slow
def test_an_idle_worker_process_gets_work(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    """16 queued 100 ms jobs, two worker processes of two threads: each takes about half, so
    they finish in about 0.4-0.5 s instead of 0.8 s with one process doing everything."""
    stub_model(client, "m", op="identity", sleep_ms=100)
    tensor(client, "a", [1, 2])
    with workers(redis_server.url, tmp_path, 2, threads_per_queue=2) as procs:
        wait_for_workers(client, procs)
        started = time.monotonic()
        enqueue(client, [job_entry("m", ["a"], [f"o{n}"], f"r{n}") for n in range(16)])
        served = [blpop_json(client, f"r{n}", 20)["worker"] for n in range(16)]
        elapsed = time.monotonic() - started
    counts = sorted(served.count(name) for name in set(served))
    assert len(counts) == 2 and counts[0] >= 6, counts
    assert elapsed < 0.75, f"{elapsed:.2f} s"


def test_a_busy_worker_reads_one_job_ahead_per_run_unless_batching(
    client: Client, settings: Settings
) -> None:
    """A busy worker takes the job it runs and, per run in flight, one more whose inputs it reads
    meanwhile; it leaves the other queued entries in the stream for other workers."""
    stub_model(client, "m", op="identity", sleep_ms=300)
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(threads_per_queue=1)).start()
    try:
        enqueue(client, [job_entry("m", ["a"], [f"o{n}"], f"r{n}") for n in range(5)])
        wait_until(lambda: len(pending_ids(client)) == 2, timeout=10)
        time.sleep(0.1)
        assert len(pending_ids(client)) == 2, "one running, one read ahead, three left for others"
    finally:
        w.stop(timeout=10)


def test_signals_stop_a_subprocess_worker_cleanly(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    proc = WorkerProcess(redis_server.url, tmp_path / "w.log")
    wait_for_workers(client, [proc])
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_a_job_run_from_cached_metadata_is_run_again_when_its_model_was_replaced(
    client: Client, worker: Worker
) -> None:
    """A worker reuses a model's metadata it read before (one read less per job); the completion
    then checks, atomically, that the model it ran is still the stored one. A model stored anew
    while the job ran makes the job run again, with the new version; nothing of the old run is
    written."""
    client.modelstore("m", "STUB", "CPU", stub_blob("add", sleep_ms=400))
    tensor(client, "a", [1, 2])
    tensor(client, "b", [3, 4])
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 o", "reply": "r1"})
    assert blpop_json(client, "r1")["status"] == "ok"  # the metadata is cached now
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 o2", "reply": "r2"})
    wait_until(lambda: pending_ids(client) != [])
    time.sleep(0.1)  # running the old version now
    client.modelstore("m", "STUB", "CPU", stub_blob("mul"))
    reply = blpop_json(client, "r2")
    assert reply["status"] == "ok"
    assert client.tensorget("o2").tolist() == [3.0, 8.0], "the new version's result"
    assert client.blpop(["r2"], 0.3) is None, "one reply"


def test_a_started_worker_is_seen_live_when_start_returns(
    client: Client, settings: Settings
) -> None:
    """``Worker.start`` publishes its first heartbeat itself: a store checked by a live worker
    right after it (the gateway's MODELSTORE) found none while the heartbeat thread's first beat
    was still on its way, and stored the model unchecked."""
    w = Worker(settings).start()
    try:
        assert [status["name"] for status in live_workers(client, Keys())] == [w.name]
    finally:
        w.stop(timeout=10)
