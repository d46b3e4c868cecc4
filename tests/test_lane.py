"""The device lane: stages that overlap, padded and warmed-up batches, and batching that cannot be
turned against the worker (hoarding, a queue taken whole, DAG ops counted as hung)."""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import at_once, stub_blob, wait_until
from faults import enqueue, job_entry, stub_model, tensor, wait_for_workers, workers

from aiworker import Client, Settings, Worker
from aiworker.backends.stub import StubBackend, StubModel
from aiworker.execution import batching
from aiworker.parser import parse_command
from aiworker.storage.model import MAX_BATCH_SETTING


def submit(client: Client, command: str) -> dict[str, Any]:
    return client.submit_reply("CPU", parse_command(command)).to_map()


def blpop_json(client: Client, key: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        popped = client.blpop([key], 2)
        if popped is not None:
            return json.loads(popped[1])  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no reply on {key}"


def stub_in(worker: Worker, key: str) -> StubModel:
    """The STUB model a worker holds for ``key`` (to see what it ran)."""
    entry = worker.cache._entries[key]
    assert isinstance(entry.model, StubModel)
    return entry.model


def concurrently(client: Client, commands: list[str]) -> list[dict[str, Any]]:
    return [reply or {} for reply in at_once([partial(submit, client, c) for c in commands])]


# padded, warmed-up batches ----------------------------------------------------------------------


def test_padded_batches_return_what_unbatched_runs_return(client: Client, worker: Worker) -> None:
    """Three requests of 1, 2 and 2 rows batch (MINBATCHSIZE 5) into 5 rows, run padded to 8:
    each gets back exactly what it gets unbatched, the padding rows nobody's."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity", pad=True), batch=8, minbatch=5)
    client.modelstore("plain", "STUB", "CPU", stub_blob("identity"))
    rows = {"a": [[1.5, -2]], "b": [[3, 4], [5, 6]], "c": [[7.25, 8], [9, 10]]}
    for key, values in rows.items():
        client.tensorset(key, np.array(values, np.float32))
    replies = concurrently(
        client, [f"AI.MODELEXECUTE m INPUTS 1 {k} OUTPUTS 1 out_{k}" for k in rows]
    )
    assert [r["batch"] for r in replies] == [{"size": 5, "requests": 3}] * 3, replies
    for key, values in rows.items():
        submit(client, f"AI.MODELEXECUTE plain INPUTS 1 {key} OUTPUTS 1 ref_{key}")
        batched, alone = client.tensorget(f"out_{key}"), client.tensorget(f"ref_{key}")
        assert batched.shape == alone.shape == np.array(values).shape
        np.testing.assert_allclose(batched, alone)
    assert stub_in(worker, "m").rows == [1, 2, 4, 8, 8]  # warm-up, then 5 rows padded to 8


def test_a_padded_batch_of_three_requests_runs_at_four_rows(
    client: Client, settings: Settings
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity", pad=True), batch=8, minbatch=3)
    for n in range(3):
        client.tensorset(f"x{n}", np.full((1, 2), n, np.float32))
    w = Worker(settings.replace(threads_per_queue=1)).start()
    try:
        replies = concurrently(
            client, [f"AI.MODELEXECUTE m INPUTS 1 x{n} OUTPUTS 1 y{n}" for n in range(3)]
        )
        assert [r["batch"] for r in replies] == [{"size": 3, "requests": 3}] * 3
        for n in range(3):
            np.testing.assert_array_equal(client.tensorget(f"y{n}"), [[n, n]])
        assert stub_in(w, "m").rows == [1, 2, 4, 8, 4]  # warm-up, then 3 rows padded to 4
    finally:
        w.stop(timeout=10)


def test_warm_up_runs_before_the_first_job_and_counts_nowhere(
    client: Client, worker: Worker
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity", pad=True), batch=16)
    client.tensorset("a", np.ones((2, 3), np.float32))
    assert submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b")["status"] == "ok"
    assert stub_in(worker, "m").rows == [1, 2, 4, 8, 16, 2]
    info = client.infoget("m")
    assert (info["calls"], info["samples"], info["errors"]) == (1, 2, 0)
    assert submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b")["status"] == "ok"
    assert stub_in(worker, "m").rows[5:] == [2, 2]  # warmed once per input signature


def test_warm_up_allocates_no_more_than_a_batch_needs_beyond_its_budget(
    client: Client, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BATCHSIZE 10**18-1 pads to powers of two up to it: only the sizes whose zeros fit the
    warm-up budget (here 1 KiB, 12-byte rows: up to 64) are warmed before the first batch, and a
    larger one when a batch first pads to it."""
    monkeypatch.setattr(batching, "WARM_UP_MAX_BYTES", 1024)
    client.modelstore("m", "STUB", "CPU", stub_blob("identity", pad=True), batch=MAX_BATCH_SETTING)
    client.tensorset("a", np.ones((2, 3), np.float32))
    assert submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b")["status"] == "ok"
    np.testing.assert_array_equal(client.tensorget("b"), np.ones((2, 3), np.float32))
    assert stub_in(worker, "m").rows == [1, 2, 4, 8, 16, 32, 64, 2]
    client.tensorset("a", np.ones((100, 3), np.float32))
    assert submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b")["status"] == "ok"
    assert stub_in(worker, "m").rows[8:] == [128, 128]  # 128 warmed as the first batch needs it


def test_a_model_that_is_not_batched_keeps_its_exact_shapes(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity", pad=True))
    client.tensorset("a", np.ones((3, 2), np.float32))
    assert submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b")["status"] == "ok"
    assert stub_in(worker, "m").rows == [3]


# stages that overlap ----------------------------------------------------------------------------


def test_the_next_jobs_inputs_are_read_while_the_current_job_runs(
    client: Client, settings: Settings
) -> None:
    """One run in flight (THREADS_PER_QUEUE 1) on a slow model: while the first job runs, the
    second is read and prepared (its inputs read), so it starts as soon as the device is free."""
    stub_model(client, "slow", op="identity", sleep_ms=600)
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(threads_per_queue=1)).start()
    try:
        lane = w.lanes["CPU"]
        first, second = enqueue(
            client, [job_entry("slow", ["a"], [f"o{n}"], f"r{n}") for n in range(2)]
        )
        wait_until(lambda: first in lane.running.entry_ids(), timeout=10)
        wait_until(lambda: second in lane.waiting_entry_ids(), timeout=0.5)
        assert first in lane.running.entry_ids(), "read while the first still runs"
        replies = [blpop_json(client, f"r{n}") for n in range(2)]
    finally:
        w.stop(timeout=10)
    assert [r["status"] for r in replies] == ["ok", "ok"]
    # the second was taken (its queue time ends) while the first ran, not after it
    assert replies[1]["queue_ms"] < replies[0]["queue_ms"] + 300, replies


def test_no_model_is_loaded_twice_by_concurrent_runs(client: Client, settings: Settings) -> None:
    stub_model(client, "m", op="identity", load_ms=400)
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(threads_per_queue=4)).start()
    try:
        before = StubBackend.loads
        enqueue(client, [job_entry("m", ["a"], [f"o{n}"], f"r{n}") for n in range(6)])
        assert all(blpop_json(client, f"r{n}")["status"] == "ok" for n in range(6))
        assert StubBackend.loads - before == 1
    finally:
        w.stop(timeout=10)


# batching as a weapon ----------------------------------------------------------------------


def test_requests_that_never_reach_minbatchsize_cannot_pile_up(
    client: Client, settings: Settings
) -> None:
    """MINBATCHSIZE 1000 without MINBATCHTIMEOUT: in RedisAI every request would wait for ever.
    Once more than ``max_batch_waiting`` wait, the oldest group runs as it is; the worker never
    holds more than that plus what one read brings."""
    stub_model(client, "m", batch=(1000, 1000, 0), op="identity")
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(max_batch_waiting=4)).start()
    try:
        enqueue(client, [job_entry("m", ["a"], [f"o{n}"], f"r{n}") for n in range(12)])
        replies = [blpop_json(client, f"r{n}", 20) for n in range(10)]
        assert all(r["status"] == "ok" for r in replies)
        assert max(r["batch"]["requests"] for r in replies) <= 5
        time.sleep(0.3)
        assert len(w.lanes["CPU"].waiting_entry_ids()) == 2  # within the bound: they wait
    finally:
        w.stop(timeout=10)
    # a graceful stop runs what waits as it is
    assert [blpop_json(client, f"r{n}")["status"] for n in (10, 11)] == ["ok", "ok"]


def test_the_bytes_waiting_for_a_batch_are_bounded_too(client: Client, settings: Settings) -> None:
    stub_model(client, "m", batch=(1000, 1000, 0), op="identity")
    client.tensorset("big", np.zeros((1, 64 * 1024), np.float32))  # 256 KiB
    w = Worker(settings.replace(max_batch_waiting_bytes=600 * 1024)).start()
    try:
        enqueue(client, [job_entry("m", ["big"], [f"o{n}"], f"r{n}") for n in range(6)])
        replies = [blpop_json(client, f"r{n}", 20) for n in range(4)]
        assert all(r["status"] == "ok" for r in replies)
        assert max(r["batch"]["requests"] for r in replies) <= 4  # 1 MiB: the bound + one read
    finally:
        w.stop(timeout=10)
    assert [blpop_json(client, f"r{n}")["status"] for n in (4, 5)] == ["ok", "ok"]


@pytest.mark.slow
def test_a_huge_batchsize_does_not_let_one_worker_take_the_whole_queue(
    client: Client, redis_server: Any, tmp_path: Path
) -> None:
    """BATCHSIZE 100000 on a model whose cost grows with its rows: two workers share 40 queued
    requests instead of one taking them all. Each read ahead takes its share of what is queued
    then, so the split is even when both read in turn, uneven when one waits for a core meanwhile
    (5 / 35 was seen on a loaded two-core machine); a worker's blocked reads alone catch a few
    entries as they arrive, so more than four shows the shares at work."""
    stub_model(client, "m", batch=(100000, 0, 0), op="identity", row_ms=25)
    tensor(client, "a", [1, 2])
    with workers(redis_server.url, tmp_path, 2) as procs:
        wait_for_workers(client, procs)
        time.sleep(4.5)  # each has seen the other's heartbeat (they beat every 2 s)
        enqueue(client, [job_entry("m", ["a"], [f"o{n}"], f"r{n}") for n in range(40)])
        served = [blpop_json(client, f"r{n}", 30)["worker"] for n in range(40)]
    counts = sorted(served.count(name) for name in set(served))
    assert len(counts) == 2 and counts[0] >= 5, counts


def test_a_dag_op_waiting_for_its_batch_is_not_a_hung_job(
    client: Client, settings: Settings
) -> None:
    """A DAG's MODELEXECUTE op waiting for MINBATCHSIZE partners: the worker stays healthy (the
    op is waiting, not running) and its thread keeps serving other jobs."""
    stub_model(client, "m", batch=(4, 4, 0), op="identity")
    stub_model(client, "other", op="identity")
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(threads_per_queue=1, hung_job_timeout=1)).start()
    try:
        dag = parse_command("AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b")
        result: dict[str, Any] = {}
        waiter = threading.Thread(
            target=lambda: result.update(client.submit_reply("CPU", dag).to_map())
        )
        waiter.start()
        wait_until(lambda: w.lanes["CPU"].waiting_entry_ids(), timeout=10)
        for n in range(3):  # other jobs run meanwhile, on the lane's one slot
            assert (
                submit(client, f"AI.MODELEXECUTE other INPUTS 1 a OUTPUTS 1 o{n}")["status"] == "ok"
            )
        time.sleep(2.0)  # past hung_job_timeout
        assert w.problems() == [] and w.exit_code == 0
        for n in range(3):  # partners arrive: the DAG's batch runs
            enqueue(client, [job_entry("m", ["a"], [f"p{n}"], f"rp{n}")])
        waiter.join(20)
        assert result["status"] == "ok", result
    finally:
        w.stop(timeout=10)


def test_closed_loop_clients_keep_full_batches(client: Client, settings: Settings) -> None:
    """Eight clients that each send their next request once answered (two of them late), BATCHSIZE
    8, one run in flight: the runs after the first rounds carry all eight. A partial batch started the moment the
    device frees up (before the requests of the batch just answered were read) would split the
    clients for good into a large batch and stragglers, each run paying the model's whole cost."""
    stub_model(client, "m", batch=(8, 0, 0), op="identity", sleep_ms=40)
    for n in range(8):
        client.tensorset(f"in{n}", np.array([[n, n]], np.float32))  # one row each
    w = Worker(settings.replace(threads_per_queue=1)).start()
    sizes: list[list[int]] = [[] for _ in range(8)]

    def loop(n: int) -> None:
        if n >= 6:
            time.sleep(0.015)  # two clients come late: they arrive while the first batch runs
        for _ in range(6):
            reply = submit(client, f"AI.MODELEXECUTE m INPUTS 1 in{n} OUTPUTS 1 out{n}")
            sizes[n].append(reply["batch"]["requests"])

    try:
        threads = [threading.Thread(target=loop, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        w.stop(timeout=10)
    # the first rounds line the clients up; in the last, some have already sent all theirs
    later = [size for each in sizes for size in each[2:-1]]
    assert len(later) == 24 and sum(size < 8 for size in later) <= 3, sizes


def test_a_lone_client_never_waits_for_a_hold(client: Client, settings: Settings) -> None:
    """The hold after a batch is answered waits only for as many rows as were answered: one
    client sending one request after another (BATCHSIZE 8, runs of 60 ms) starts each at once."""
    stub_model(client, "m", batch=(8, 0, 0), op="identity", sleep_ms=60)
    client.tensorset("in", np.array([[1, 2]], np.float32))
    w = Worker(settings.replace(threads_per_queue=1)).start()
    replies, took = [], []
    try:
        for _ in range(5):
            started = time.perf_counter()
            replies.append(submit(client, "AI.MODELEXECUTE m INPUTS 1 in OUTPUTS 1 out"))
            took.append(time.perf_counter() - started)
    finally:
        w.stop(timeout=10)
    assert [r["status"] for r in replies] == ["ok"] * 5, replies
    # a run is 60 ms; a request held as long again would take 120 ms or more
    assert max(took[1:]) < 0.125, took


def test_short_runs_ready_together_complete_together(client: Client, settings: Settings) -> None:
    """Jobs read together whose runs are short run one after another and complete in one call
    (one round trip for their outputs and replies, not one each), each answered correctly."""
    stub_model(client, "m")
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(threads_per_queue=1)).start()
    sizes: list[int] = []
    try:
        lane = w.lanes["CPU"]
        enqueue(client, [job_entry("m", ["a", "a"], ["warm"], "r_warm")])
        assert blpop_json(client, "r_warm")["status"] == "ok"  # the model's run time is known
        complete = lane.completer.complete

        def counted(conn: Any, queue: str, items: Any) -> Any:
            sizes.append(len(items))
            return complete(conn, queue, items)

        lane.completer.complete = counted  # type: ignore[method-assign]
        enqueue(client, [job_entry("m", ["a", "a"], [f"o{n}"], f"r{n}") for n in range(6)])
        replies = [blpop_json(client, f"r{n}") for n in range(6)]
    finally:
        w.stop(timeout=10)
    assert [r["status"] for r in replies] == ["ok"] * 6, replies
    assert [client.tensorget(f"o{n}").tolist() for n in range(6)] == [[2.0, 4.0]] * 6
    assert sum(sizes) == 6 and max(sizes) > 1, sizes


def test_one_read_takes_the_jobs_of_several_partitions(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With queue partitions, a read sweeps every partition that no other thread of the lane
    reads (an XREADGROUP each, without blocking, in one round trip), so one state read and one
    completion serve jobs of several partitions: jobs waiting in three partitions are read by one
    read, each answered from its own."""
    from aiworker.protocol.keys import Keys
    from aiworker.worker.lane import Lane

    stub_model(client, "m")
    tensor(client, "a", [1, 2])
    queues = Keys().queues("CPU", 3)
    for n, queue in enumerate(queues):
        enqueue(client, [job_entry("m", ["a", "a"], [f"o{n}"], f"r{n}")], queue)
    reads: list[list[str]] = []
    process = Lane.process

    def recorded(lane: Lane, conn: Any, found: Any) -> Any:
        reads.append([stream for stream, _entries in found])
        return process(lane, conn, found)

    monkeypatch.setattr(Lane, "process", recorded)
    w = Worker(settings.replace(threads_per_queue=1, queue_partitions=3)).start()
    try:
        replies = [blpop_json(client, f"r{n}") for n in range(3)]
    finally:
        w.stop(timeout=10)
    assert [r["status"] for r in replies] == ["ok"] * 3, replies
    assert [client.tensorget(f"o{n}").tolist() for n in range(3)] == [[2.0, 4.0]] * 3
    assert sorted(reads[0]) == sorted(queues), reads
    assert all(client.xpending(q, "aiworker")["pending"] == 0 for q in queues)


def test_a_lane_of_short_runs_reads_as_many_jobs_as_a_slot_chains(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a lane's models run shorter than CHAIN_RUN_S (and none batches), a read takes up to
    CHAIN_MAX jobs a slot, not two: one read, one state read and one completion serve them all.
    A lane whose model ran long reads two a slot, as before."""
    from aiworker.worker.lane import CHAIN_MAX, Lane

    tensor(client, "a", [1, 2])
    reads: list[int] = []
    process = Lane.process

    def recorded(lane: Lane, conn: Any, found: Any) -> Any:
        reads.append(sum(len(entries) for _stream, entries in found))
        return process(lane, conn, found)

    monkeypatch.setattr(Lane, "process", recorded)
    for model, sleep_ms, many in (("fast", 0, True), ("slow", 20, False)):
        client.modelstore(model, "STUB", "CPU", stub_blob("add", sleep_ms=sleep_ms))
        w = Worker(settings.replace(threads_per_queue=1)).start()
        try:
            enqueue(client, [job_entry(model, ["a", "a"], ["warm"], "r_warm")])
            assert blpop_json(client, "r_warm")["status"] == "ok"  # its run time is known
            reads.clear()
            jobs = [job_entry(model, ["a", "a"], [f"o{n}"], f"r{n}") for n in range(CHAIN_MAX)]
            enqueue(client, jobs)
            replies = [blpop_json(client, f"r{n}") for n in range(CHAIN_MAX)]
        finally:
            w.stop(timeout=10)
        assert [r["status"] for r in replies] == ["ok"] * CHAIN_MAX, replies
        assert (max(reads) > 2) == many and max(reads) <= CHAIN_MAX, (model, reads)
