"""Jobs end to end: client -> device stream -> in-process worker -> outputs, reply, stats."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from conftest import store_unchecked, stub_blob, torch_blob, wait_until

from aiworker import AIError, Client, JobFailed, JobTimedOut, Settings, Worker
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.protocol.requests import Job, ModelExecute
from aiworker.storage import health as health_store
from aiworker.storage.connection import connect
from aiworker.worker.health import RedisClock

QUEUE = "aiworker:queue:CPU"


def set_inputs(client: Client, a: list[float] | None = None, b: list[float] | None = None) -> None:
    client.tensorset("a", np.array(a or [2, 3], dtype=np.float32))
    client.tensorset("b", np.array(b or [4, 5], dtype=np.float32))


def assert_queue_drained(client: Client, queue: str = QUEUE) -> None:
    """Every entry acknowledged and deleted: nothing left in the stream or pending."""
    wait_until(lambda: client.xlen(queue) == 0, timeout=5)
    assert client.xpending(queue, CONSUMER_GROUP)["pending"] == 0


def blpop_json(client: Client, key: str, timeout: float = 10) -> dict[str, Any]:
    popped = client.blpop([key], timeout=timeout)
    assert popped is not None, f"no reply on {key}"
    return json.loads(popped[1])  # type: ignore[no-any-return]


# successful runs -----------------------------------------------------------------------------


def test_stub_add(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
    out = client.tensorget("c")
    assert out.dtype == np.float32 and out.tolist() == [6.0, 8.0]
    assert_queue_drained(client)
    assert client.keys("aiworker:reply:*") == []


def test_torch_add(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    client.tensorset("a", np.array([[1, 2], [3, 4]], dtype=np.float32))
    client.tensorset("b", np.array([[10, 20], [30, 40]], dtype=np.float32))
    assert client.modelexecute("m", inputs=["a", "b"], outputs=["c"]) == "OK"
    out = client.tensorget("c")
    assert out.dtype == np.float32 and out.tolist() == [[11, 22], [33, 44]]
    info = client.infoget("m")
    assert (info["backend"], info["calls"], info["errors"], info["samples"]) == ("TORCH", 1, 0, 2)


def test_torch_int_tensors(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TORCH", "CPU", torch_blob("mul"))
    client.tensorset("a", np.array([2, -3], dtype=np.int64))
    client.tensorset("b", np.array([5, 7], dtype=np.int64))
    client.modelexecute("m", ["a", "b"], ["c"])
    out = client.tensorget("c")
    assert out.dtype == np.int64 and out.tolist() == [10, -21]


def test_infoget_counts_calls_and_errors(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "cpu", stub_blob("add"), tag="v7")
    client.tensorset("a", np.ones((3, 2), dtype=np.float32))
    client.tensorset("b", np.ones((3, 2), dtype=np.float32))
    info = client.infoget("m")
    assert info == {"key": "m", "type": "MODEL", "backend": "STUB", "device": "cpu",
                    "tag": "v7", "duration": 0, "samples": 0, "calls": 0, "errors": 0}  # fmt: skip
    for _ in range(3):
        client.modelexecute("m", ["a", "b"], ["c"])
    client.tensorset("a", np.ones((3, 2), dtype=np.float32))
    client.tensorset("b", np.ones((4, 2), dtype=np.float32))  # shapes do not broadcast
    with pytest.raises(JobFailed):
        client.modelexecute("m", ["a", "b"], ["c"])
    info = client.infoget("m")
    assert (info["calls"], info["errors"], info["samples"]) == (4, 1, 9)
    assert info["duration"] >= 0
    assert set(info) == {"key", "type", "backend", "device", "tag", "duration", "samples",
                         "calls", "errors"}  # fmt: skip


def test_a_job_naming_the_wrong_number_of_tensors_counts_nowhere(
    client: Client, worker: Worker
) -> None:
    """RedisAI refused it before it ran: AI.INFO counts neither a call nor an error, whether the
    count is the stored model's (TF's INPUTS/OUTPUTS) or the framework's (TorchScript)."""
    from builders import tf_mul_graph

    client.modelstore("pt", "TORCH", "CPU", torch_blob("add"))
    client.modelstore("tf", "TF", "CPU", tf_mul_graph(), inputs=["a", "b"], outputs=["mul"])
    client.tensorset("a", np.ones(2, np.float32))
    for key, inputs, outputs in [("pt", ["a"], ["c"]), ("tf", ["a"], ["c"]),
                                 ("tf", ["a", "a"], ["c", "d"])]:  # fmt: skip
        with pytest.raises(JobFailed, match="here does not match model definition"):
            client.modelexecute(key, inputs, outputs)
    assert client.modelexecute("pt", ["a", "a"], ["c"]) == "OK"
    for key, calls in (("pt", 1), ("tf", 0)):
        info = client.infoget(key)
        assert (info["calls"], info["errors"]) == (calls, 0), (key, info)


def test_inforeset(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    client.modelexecute("m", ["a", "b"], ["c"])
    assert client.infoget("m")["calls"] == 1
    assert client.inforeset("m") == "OK"
    info = client.infoget("m")
    assert (info["calls"], info["errors"], info["samples"], info["duration"]) == (0, 0, 0, 0)
    client.modelexecute("m", ["a", "b"], ["c"])
    assert client.infoget("m")["calls"] == 1


def test_info_on_unknown_key(client: Client) -> None:
    client.tensorset("t", [1], dtype="FLOAT")
    for key in ("nope", "t"):
        for call in (client.infoget, client.inforeset):
            with pytest.raises(AIError) as info:
                call(key)
            assert str(info.value) == "cannot find run info for key"


def test_modeldel_drops_stats(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    client.modelexecute("m", ["a", "b"], ["c"])
    client.modeldel("m")
    with pytest.raises(AIError, match=r"^cannot find run info for key$"):
        client.infoget("m")
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    assert client.infoget("m")["calls"] == 0


# error replies ----------------------------------------------------------------------------


def test_missing_input_tensor(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", [1], dtype="FLOAT")
    with pytest.raises(JobFailed) as info:
        client.modelexecute("m", ["a", "missing"], ["c"])
    assert str(info.value) == "tensor key is empty or in a different shard"
    assert not client.exists("c")
    assert_queue_drained(client)


def test_input_of_wrong_type(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", [1], dtype="FLOAT")
    client.set("b", "plain")
    with pytest.raises(AIError) as info:
        client.modelexecute("m", ["a", "b"], ["c"])
    assert str(info.value) == "WRONGTYPE Operation against a key holding the wrong kind of value"


def test_missing_model_is_raised_before_enqueue(client: Client, worker: Worker) -> None:
    with pytest.raises(AIError) as info:
        client.modelexecute("nope", ["a"], ["c"])
    assert str(info.value) == "model key is empty"
    assert not isinstance(info.value, JobFailed)
    assert client.xlen(QUEUE) == 0
    assert client.xinfo_stream(QUEUE)["last-generated-id"] == b"0-0"  # never written to


@pytest.mark.parametrize(
    ("inputs", "outputs", "timeout", "message"),
    [
        ([], ["c"], None, "wrong number of arguments for 'AI.MODELEXECUTE' command"),
        (["a"], [], None, "wrong number of arguments for 'AI.MODELEXECUTE' command"),
        (["a"], ["c"], 0, "Invalid value for TIMEOUT"),
        (["a"], ["c"], -5, "Invalid value for TIMEOUT"),
    ],
)
def test_modelexecute_argument_errors(
    client: Client, inputs: list[str], outputs: list[str], timeout: int | None, message: str
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    with pytest.raises(AIError) as info:
        client.modelexecute("m", inputs, outputs, timeout=timeout)
    assert str(info.value) == message
    assert client.xlen(QUEUE) == 0


def test_stub_failure_and_worker_keeps_serving(client: Client, worker: Worker) -> None:
    client.modelstore("bad", "STUB", "CPU", stub_blob("fail", message="boom"))
    client.modelstore("good", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    with pytest.raises(JobFailed) as info:
        client.modelexecute("bad", ["a", "b"], ["c"])
    assert str(info.value) == "boom"
    assert not client.exists("c")
    info_bad = client.infoget("bad")
    assert (info_bad["calls"], info_bad["errors"]) == (1, 1)
    assert client.modelexecute("good", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [6, 8]
    assert_queue_drained(client)


def test_corrupt_torchscript_blob(client: Client, worker: Worker) -> None:
    with pytest.raises(AIError, match=r"^Failed to load TorchScript model"):  # refused at store
        client.modelstore("m", "TORCH", "CPU", b"this is not a torchscript archive")
    assert not client.exists("m")
    store_unchecked(client, "m", "TORCH", b"this is not a torchscript archive")
    set_inputs(client)
    for _ in range(2):  # the load failure is remembered, and reported the same way again
        with pytest.raises(JobFailed) as info:
            client.modelexecute("m", ["a", "b"], ["c"])
        assert str(info.value).startswith("Failed to load TorchScript model")
    client.modelstore("ok", "TORCH", "CPU", torch_blob("add"))
    assert client.modelexecute("ok", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [6, 8]
    client.modelstore("m", "TORCH", "CPU", torch_blob("mul"))  # fixed in place
    assert client.modelexecute("m", ["a", "b"], ["d"]) == "OK"
    assert client.tensorget("d").tolist() == [8, 15]


def test_corrupt_stub_blob(client: Client, worker: Worker) -> None:
    with pytest.raises(AIError, match=r"^STUB: model blob is not a JSON program$"):
        client.modelstore("m", "STUB", "CPU", b"\xff not json")
    store_unchecked(client, "m", "STUB", b"\xff not json")
    set_inputs(client)
    with pytest.raises(JobFailed, match=r"^STUB: model blob is not a JSON program$"):
        client.modelexecute("m", ["a", "b"], ["c"])


def test_timeout_counts_from_enqueue(
    client: Client, settings: Settings, redis_server: RedisServer
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    requester = Client.from_url(redis_server.url, reply_timeout=20)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(requester.modelexecute, "m", ["a", "b"], ["c"], 50)
        wait_until(lambda: client.xlen(QUEUE) == 1)
        time.sleep(0.1)  # past the 50 ms TIMEOUT while no worker runs
        w = Worker(settings).start()
        try:
            # RedisAI answered a request whose TIMEOUT passed with the simple string TIMEDOUT
            assert future.result(timeout=20) == "TIMEDOUT"
        finally:
            w.stop(timeout=10)
    requester.close()
    assert not client.exists("c")
    assert client.infoget("m")["calls"] == 0
    assert_queue_drained(client)


def test_timeout_not_reached_runs_the_job(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    assert client.modelexecute("m", ["a", "b"], ["c"], timeout=10_000) == "OK"
    assert client.tensorget("c").tolist() == [6, 8]


@pytest.mark.parametrize("skew_s", [5.0, -5.0])
def test_timeout_counts_by_redis_clock_on_a_host_whose_clock_is_off(
    client: Client,
    settings: Settings,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    skew_s: float,
) -> None:
    """A job's TIMEOUT counts from its entry's id, which Redis's clock wrote; the worker compared
    it with its own host's clock. A host 5 s ahead timed out every job with a TIMEOUT under 5 s,
    one 5 s behind ran jobs that had waited 5 s too long."""
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)  # this process is the host
    requester = Client.from_url(redis_server.url, reply_timeout=20)
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(requester.modelexecute, "m", ["a", "b"], ["late"], 100)
        wait_until(lambda: client.xlen(QUEUE) == 1)
        time.sleep(0.3)  # past its TIMEOUT while no worker runs
        w = Worker(settings).start()
        try:
            assert late.result(timeout=20) == "TIMEDOUT"
            assert client.modelexecute("m", ["a", "b"], ["c"], timeout=3_000) == "OK"
            assert client.tensorget("c").tolist() == [6, 8]
        finally:
            w.stop(timeout=10)
    requester.close()
    assert not client.exists("late")


def test_redis_clock_takes_the_quickest_round_trip() -> None:
    """The offset to Redis's clock comes from the round trip that could be off least (half its
    time): a slow one (a busy host) must not move it by half of its own. Round trips are timed
    on the monotonic clock."""
    clock = RedisClock()
    clock.observe(100.000, [103, 0], 100.002)  # Redis 3 s ahead, a 2 ms round trip
    assert clock.time() - time.monotonic() == pytest.approx(2.999, abs=0.0005)
    clock.observe(200.000, [203, 400_000], 200.800)  # 800 ms round trip, its midpoint 0.4 s in
    assert clock.time() - time.monotonic() == pytest.approx(2.999, abs=0.0005)
    clock.observe(300.000, [303, 500], 300.001)
    assert clock.time() - time.monotonic() == pytest.approx(3.0, abs=0.0005)


def redis_now(r: Any) -> float:
    seconds, micros = r.execute_command("TIME")
    return int(seconds) + int(micros) / 1e6


def test_redis_clock_is_not_moved_by_a_step_of_this_hosts_clock(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This host's wall clock steps (NTP, an operator) after the clock was synced: Redis's time
    as the worker reads it stays Redis's (it was this host's clock plus the last offset, off by
    the whole step until the samples aged out)."""
    clock = RedisClock()
    clock.sync(client)
    assert abs(clock.time() - redis_now(client)) < 0.05
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 30.0)
    assert abs(clock.time() - redis_now(client)) < 0.05
    assert clock.offset_s == pytest.approx(-30.0, abs=0.05)
    clock.sync(client, rounds=1)  # a round trip across the step is no better or worse
    assert abs(clock.time() - redis_now(client)) < 0.05


def test_a_busy_redis_does_not_turn_the_clock_off(
    client: Client, redis_server: RedisServer
) -> None:
    """TIME answered BUSY (a user's long script runs) is no ACL refusal: that round is skipped
    and the next one syncs (it was taken for a denied TIME: this host's clock for good)."""
    client.config_set("busy-reply-threshold", 100)
    scripted = connect(redis_server.url)

    def spin() -> None:
        with contextlib.suppress(redis.ResponseError):  # killed
            scripted.eval("while true do end", 0)

    spinner = threading.Thread(target=spin)
    spinner.start()
    clock = RedisClock()
    other = connect(redis_server.url)
    try:
        time.sleep(0.3)  # past the threshold: Redis answers BUSY meanwhile

        def busy() -> bool:
            try:
                other.ping()
            except Exception as exc:
                return "BUSY" in str(exc)
            return False

        wait_until(busy, timeout=5)
        clock.sync(other, rounds=1)
    finally:
        other.script_kill()
        spinner.join(timeout=10)
        client.config_set("busy-reply-threshold", 5000)
    assert not clock.denied
    clock.sync(other, rounds=1)
    assert abs(clock.time() - redis_now(other)) < 0.05


@pytest.mark.parametrize("skew_s", [30.0, -30.0])
def test_a_worker_on_a_host_far_off_redis_clock_is_seen_alive(
    client: Client,
    settings: Settings,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    skew_s: float,
) -> None:
    """A worker and a client on one host whose clock is 30 s off Redis's: the client judges the
    worker's heartbeat by its own clock, so the heartbeat is stamped with it (stamped with
    Redis's clock, a host ahead of Redis saw its own worker dead: NoLiveWorker for any job that
    ran longer than a moment)."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
    set_inputs(client)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)
    requester = Client.from_url(redis_server.url, reply_timeout=20)
    w = Worker(settings).start()
    try:
        assert requester.modelexecute("slow", ["a", "b"], ["c"], timeout=10_000) == "OK"
        live = health_store.live_workers(requester, requester.keyspace)
        assert [status["name"] for status in live] == [w.name]
        assert abs(live[0]["age"]) < 5  # (age: how old the reader finds it)
    finally:
        w.stop(timeout=10)
        requester.close()
    assert client.tensorget("c").tolist() == [6, 8]


def test_the_worker_clock_is_each_cluster_masters_own(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """On Redis Cluster each master's clock wrote the ids of the streams it serves: the worker
    asks every master its TIME (it asked one, and counted every stream's TIMEOUTs by that one's
    clock), and the time of a key is that of its master. A job with a TIMEOUT runs."""
    masters = redis_cluster.master_ports()

    def time_calls() -> dict[int, int]:
        stats = {port: redis_cluster.node(port).info("commandstats") for port in masters}
        return {port: int(stats[port].get("cmdstat_time", {}).get("calls", 0)) for port in masters}

    clock = cluster_worker.clock
    before = time_calls()
    clock.sync(cluster_worker.r, rounds=1)
    after = time_calls()
    assert all(after[port] > before[port] for port in masters), (before, after)
    keys = [f"k{{{n}}}" for n in range(6)]
    assert {redis_cluster.master_of(key) for key in keys} == set(masters)
    for key in keys:
        assert (
            abs(clock.time(key) - redis_now(redis_cluster.node(redis_cluster.master_of(key))))
            < 0.05
        )
    cluster_client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    cluster_client.tensorset("a", np.array([1, 2], dtype=np.float32))
    assert cluster_client.modelexecute("m", ["a", "a"], ["c"], timeout=5_000) == "OK"
    assert cluster_client.tensorget("c").tolist() == [2, 4]


def test_timeout_is_more_than_its_milliseconds() -> None:
    """An entry's id holds the millisecond its XADD ran in: a job read in the next millisecond
    may have waited only a moment. Late means it certainly waited more than TIMEOUT ms (RedisAI
    timed out a job that had waited more than TIMEOUT whole milliseconds)."""
    job = Job("1000-0", ModelExecute("m", ("a",), ("b",), timeout_ms=1), None, 1000)
    assert job.deadline_ms == 1002
    assert Job("1000-0", ModelExecute("m", ("a",), ("b",)), None, 1000).deadline_ms is None


def test_no_worker_reply_timeout(client: Client, redis_server: RedisServer) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    impatient = Client.from_url(redis_server.url, reply_timeout=0.2)
    try:
        with pytest.raises(JobTimedOut, match=r"no reply from a worker within 0\.2s"):
            impatient.modelexecute("m", ["a", "b"], ["c"])
    finally:
        impatient.close()
    assert client.xlen(QUEUE) == 0  # taken back: it will not run later


def test_reply_wait_longer_than_the_socket_timeout(
    client: Client, worker: Worker, settings: Settings
) -> None:
    """redis-py 8 gives sockets a 5 s read timeout; waiting for a slow job must outlast it."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1200))
    set_inputs(client)
    patient = Client.from_url(settings.redis_url, socket_timeout=0.5, reply_timeout=None)
    try:
        assert patient.modelexecute("slow", ["a", "b"], ["c"]) == "OK"
    finally:
        patient.close()
    assert client.tensorget("c").tolist() == [6, 8]


def test_worker_survives_socket_read_timeouts(
    client: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket timeout below block_ms: blocking reads are shortened to stay under it, and a read
    that still times out (a loaded host) does not kill the consumer thread."""
    caplog.set_level(logging.WARNING, logger="aiworker.worker")
    r = connect(settings.redis_url, socket_timeout=0.2)
    w = Worker(settings.replace(block_ms=500, threads_per_queue=1), r=r).start()
    try:
        assert w.settings.block_ms < 200
        time.sleep(0.5)  # a few idle blocking reads
        client.modelstore("m", "STUB", "CPU", stub_blob("add"))
        set_inputs(client)
        assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
        assert client.tensorget("c").tolist() == [6, 8]
        assert not w.problems(), "the consumer thread is alive"
    finally:
        w.stop(timeout=10)


def test_restored_model_is_picked_up(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    client.modelexecute("m", ["a", "b"], ["c"])
    assert client.tensorget("c").tolist() == [6, 8]
    client.modelstore("m", "STUB", "CPU", stub_blob("mul"))
    client.modelexecute("m", ["a", "b"], ["c"])
    assert client.tensorget("c").tolist() == [8, 15]
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    client.modelexecute("m", ["a", "b"], ["c"])
    assert client.tensorget("c").tolist() == [6, 8]


def test_job_on_wrong_device_queue_is_forwarded(client: Client, redis_server: RedisServer) -> None:
    client.modelstore("m", "STUB", "CPU:1", stub_blob("mul"))
    set_inputs(client)
    w = Worker(Settings(redis_url=redis_server.url, devices=("CPU", "CPU:1"), block_ms=100))
    w.start()
    try:
        cmd = "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c"
        entry_id = client.xadd(QUEUE, {"cmd": cmd, "reply": "r1"}).decode()
        notice = blpop_json(client, "r1")  # first: where it went (the new id Redis gave it)
        assert notice["status"] == "forwarded"
        assert (notice["queue"], notice["id"]) == (QUEUE, entry_id)
        assert notice["to"]["queue"] == "aiworker:queue:CPU:1"
        reply = blpop_json(client, "r1")  # then the reply about the forwarded entry
        assert reply["status"] == "ok"
        assert (reply["queue"], reply["id"]) == (notice["to"]["queue"], notice["to"]["id"])
        assert client.tensorget("c").tolist() == [8, 15]
        assert client.llen("r1") == 0  # nothing else
    finally:
        w.stop(timeout=10)
    assert_queue_drained(client, QUEUE)
    assert_queue_drained(client, "aiworker:queue:CPU:1")


def test_a_forward_to_a_queue_that_takes_no_more_entries_is_answered(
    client: Client, redis_server: RedisServer
) -> None:
    """Anyone who may XADD can give a queue the largest id there is; after that every XADD to
    it fails. A job forwarded there left the completion half done: acknowledged, its forward
    refused, no reply, never deleted nor reclaimed. Now it is answered with why."""
    client.modelstore("m", "STUB", "CPU:1", stub_blob("mul"))
    set_inputs(client)
    last = "18446744073709551615-18446744073709551615"
    client.xadd("aiworker:queue:CPU:1", {"cmd": "x"}, id=last)
    w = Worker(Settings(redis_url=redis_server.url, devices=("CPU", "CPU:1"), block_ms=100))
    w.start()
    try:
        client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c", "reply": "r1"})
        reply = blpop_json(client, "r1")
        assert reply["status"] == "error", reply
        assert reply["error"] == "the stream 'aiworker:queue:CPU:1' takes no more entries"
    finally:
        w.stop(timeout=10)
    assert_queue_drained(client, QUEUE)


def test_lowercase_device_shares_the_queue(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "cpu", stub_blob("add"))
    set_inputs(client)
    assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
    assert client.tensorget("c").tolist() == [6, 8]


# raw stream entries ---------------------------------------------------------------------------


def test_raw_cmd_entry(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c", "reply": "r1"})
    reply = blpop_json(client, "r1")
    assert reply["status"] == "ok"
    assert reply["worker"] == worker.name
    assert "error" not in reply
    assert client.tensorget("c").tolist() == [6, 8]
    assert not client.exists("r1")  # the only reply was popped
    assert_queue_drained(client)


def test_raw_entry_reply_is_given_a_ttl(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c", "reply": "r2"})
    wait_until(lambda: client.exists("r2"))
    assert 0 < client.ttl("r2") <= worker.settings.reply_ttl


def test_raw_compact_job_entry(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("mul"))
    set_inputs(client)
    job = msgpack.packb({"op": "MODELEXECUTE", "key": "m", "inputs": ["a", "b"], "outputs": ["c"]})
    client.xadd(QUEUE, {"job": job, "reply": "r1"})
    assert blpop_json(client, "r1")["status"] == "ok"
    assert client.tensorget("c").tolist() == [8, 15]


def test_entry_without_reply_still_runs(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c"})
    wait_until(lambda: client.exists("c"))
    assert client.tensorget("c").tolist() == [6, 8]
    assert_queue_drained(client)


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("no-cmd-or-job", {"foo": "bar"}, "malformed job entry: expected a 'cmd' or 'job' field"),
    ("bad-syntax", {"cmd": "AI.MODELEXECUTE m INPUTS 2 a"},
     "wrong number of arguments for 'AI.MODELEXECUTE' command"),
    ("no-outputs", {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b c d"}, "OUTPUTS not specified"),
    ("unbalanced-quotes", {"cmd": 'AI.MODELEXECUTE "m INPUTS 1 a OUTPUTS 1 c'},
     "Invalid argument(s): unbalanced quotes"),
    ("unknown-command", {"cmd": "AI.TENSORSET x FLOAT 1 VALUES 1"},
     "unsupported command in a job: AI.TENSORSET"),
    ("empty-cmd", {"cmd": ""}, "empty command"),
    ("garbage-msgpack", {"job": b"\xc1\xc1\xc1"}, "malformed job entry: 'job' is not msgpack"),
    ("msgpack-not-map", {"job": msgpack.packb([1, 2])}, "malformed job entry: 'job' is not a map"),
    ("msgpack-unknown-op", {"job": msgpack.packb({"op": "DANCE"})}, "unknown job op 'DANCE'"),
    ("missing-model", {"cmd": "AI.MODELEXECUTE nope INPUTS 2 a b OUTPUTS 1 c"},
     "model key is empty"),
    ("missing-input", {"cmd": "AI.MODELEXECUTE m INPUTS 2 a zz OUTPUTS 1 c"},
     "tensor key is empty or in a different shard"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_entries_get_error_replies(
    client: Client, worker: Worker, fields: dict[str, Any], message: str
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    set_inputs(client)
    client.xadd(QUEUE, {**fields, "reply": "bad"})
    reply = blpop_json(client, "bad")
    assert reply["status"] == "error"
    assert reply["error"] == message
    assert_queue_drained(client)
    # the worker is still serving
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c", "reply": "good"})
    assert blpop_json(client, "good")["status"] == "ok"
    assert client.tensorget("c").tolist() == [6, 8]
    assert_queue_drained(client)


def test_malformed_entry_without_reply_is_dropped(client: Client, worker: Worker) -> None:
    client.xadd(QUEUE, {"nonsense": "1"})
    assert_queue_drained(client)


def test_every_entry_is_acked_and_deleted(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.modelstore("f", "STUB", "CPU", stub_blob("fail"))
    set_inputs(client)
    for i in range(10):
        client.modelexecute("m", ["a", "b"], [f"c{i}"])
        with pytest.raises(JobFailed, match="stub failure"):
            client.modelexecute("f", ["a", "b"], [f"d{i}"])
        assert client.xlen(QUEUE) == 0
        assert client.xpending(QUEUE, CONSUMER_GROUP)["pending"] == 0
    assert worker.jobs_done == 20
    assert client.keys("aiworker:reply:*") == []


def test_concurrent_clients(client: Client, worker: Worker, redis_server: RedisServer) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    errors: list[BaseException] = []

    def run(n: int) -> None:
        c = Client.from_url(redis_server.url, reply_timeout=30)
        try:
            for i in range(20):
                c.tensorset(f"x{n}:{i}", np.array([n, i], dtype=np.int32))
                c.modelexecute("m", [f"x{n}:{i}", f"x{n}:{i}"], [f"y{n}:{i}"])
                assert c.tensorget(f"y{n}:{i}").tolist() == [2 * n, 2 * i]
        except BaseException as exc:
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert client.infoget("m")["calls"] == 80
    assert_queue_drained(client)
