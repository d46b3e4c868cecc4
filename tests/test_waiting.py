"""A client never waits forever for a job's reply (DESIGN 3, "Trust boundaries" 9).

With TIMEOUT the wait ends by TIMEOUT plus a margin; without, after ``reply_timeout``; when
heartbeats show no live worker serving the queue, within a couple of seconds. An entry no worker
read is taken back (it can never run later); one a worker read stays with the worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import spawn_worker, stalled_worker, stub_blob, wait_until

import aiworker.asyncio
from aiworker import Client, NoLiveWorker, ReplyTimeout, Settings, Worker
from aiworker.client import routing, wait_plan, waiting
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.replies import Reply, Status
from aiworker.storage import health, plans, queues

QUEUE = "aiworker:queue:CPU"


@pytest.fixture
def model(client: Client) -> Client:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.array([1, 2], np.float32))
    return client


@pytest.fixture
def impatient(redis_server: RedisServer) -> Iterator[Client]:
    c = Client.from_url(redis_server.url, reply_timeout=1.0)
    yield c
    c.close()


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = call()
    except Exception as exc:  # returned for the test to look at
        result = exc
    return result, time.monotonic() - started


def test_timeout_with_a_stalled_worker_answers_timedout_and_takes_the_entry_back(
    model: Client, settings: Settings
) -> None:
    stalled_worker(model)
    result, elapsed = timed(lambda: model.modelexecute("m", ["a", "a"], ["c"], timeout=300))
    assert result == "TIMEDOUT"  # RedisAI dropped a request that sat in its queue t ms
    assert 0.3 + waiting.MARGIN_S - 0.2 < elapsed < 0.3 + waiting.MARGIN_S + 1.0
    assert model.xlen(QUEUE) == 0
    w = Worker(settings).start()  # a worker that comes later never runs it
    try:
        time.sleep(0.5)
        assert not model.exists("c")
        assert model.infoget("m")["calls"] == 0
    finally:
        w.stop(timeout=10)


def test_without_timeout_the_wait_ends_after_reply_timeout(
    model: Client, impatient: Client
) -> None:
    stalled_worker(model)
    result, elapsed = timed(lambda: impatient.modelexecute("m", ["a", "a"], ["c"]))
    assert isinstance(result, ReplyTimeout) and result.removed
    assert str(result) == (
        "no reply from a worker within 1s: no worker took the job from queue CPU; "
        "it was removed from the queue and will not run"
    )
    assert 0.9 < elapsed < 2.5
    assert model.xlen(QUEUE) == 0


@pytest.mark.parametrize("timeout", [None, 10_000])
@pytest.mark.parametrize("registry", [True, False], ids=["workers-gone", "no-registry"])
def test_no_live_worker_is_said_within_a_couple_of_seconds(
    model: Client, timeout: int | None, registry: bool
) -> None:
    """Within about 2 s when the worker registry shows only dead workers; where there is no
    registry at all (a fresh Redis, or one just flushed, heartbeats included), workers get a
    heartbeat's time to beat first."""
    if registry:
        model.zadd(model.keyspace.workers, {"gone:1": time.time() - 3600})
    result, elapsed = timed(lambda: model.modelexecute("m", ["a", "a"], ["c"], timeout))
    assert isinstance(result, NoLiveWorker) and result.removed
    assert str(result) == (
        "no live worker serves queue CPU; the job was removed from the queue and will not run"
    )
    if registry:
        assert elapsed < 2.5
    else:
        assert wait_plan.REGISTRY_GRACE_S < elapsed < wait_plan.REGISTRY_GRACE_S + 2.5
    assert model.xlen(QUEUE) == 0


def test_a_worker_that_died_holding_the_job(model: Client, redis_server: RedisServer) -> None:
    """The entry was read, so it stays pending for another worker to take over; the client says
    so once the dead worker's heartbeats are old."""
    model.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=20_000))
    proc = spawn_worker(redis_server.url, "--threads-per-queue", "1")
    try:
        wait_until(lambda: model.zcard(model.keyspace.workers) > 0, timeout=30)

        def kill() -> None:  # once the worker holds the job (pending in the group)
            wait_until(lambda: _pending(model) == 1, timeout=20)
            os.kill(proc.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill)
        killer.start()
        result, elapsed = timed(lambda: model.modelexecute("slow", ["a", "a"], ["c"]))
        killer.join()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert isinstance(result, NoLiveWorker) and not result.removed
    assert "a worker took the job and stopped" in str(result)
    assert elapsed < health.LIVE_FOR_S + 8  # heartbeats age out, then it is said
    assert model.xlen(QUEUE) == 1 and _pending(model) == 1  # left for a worker to take over


def _pending(client: Client) -> int:
    try:
        return int(client.xpending(QUEUE, CONSUMER_GROUP)["pending"])
    except Exception:
        return 0


def test_a_running_job_past_its_timeout_ends_the_wait(model: Client, worker: Worker) -> None:
    """TIMEOUT counts until a worker starts the job; a job that started but runs long still ends
    the client's wait by TIMEOUT plus the margin."""
    model.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=4000))
    result, elapsed = timed(lambda: model.modelexecute("slow", ["a", "a"], ["c"], timeout=200))
    assert isinstance(result, ReplyTimeout) and not result.removed
    assert "a worker took the job from queue CPU and may still complete it" in str(result)
    assert elapsed < 0.2 + waiting.MARGIN_S + 1.0


def test_a_model_stored_anew_on_another_device_is_followed(
    client: Client, redis_server: RedisServer, settings: Settings
) -> None:
    """Clients cache each model's device queue, and another client may store the model anew on
    another device: a job sent to the old queue is forwarded by its worker, and the next ones
    go to the new queue directly; once the old queue's worker is gone, a job sent there is
    taken back unread and sent once more where the model is now - sync and asyncio alike (a
    pipeline's job, queued with the pipeline, fails, and the next one reads the device again)."""
    x = np.array([2, 3], np.float32)
    client.modelstore("m", "STUB", "CPU:1", stub_blob("add"))
    client.tensorset("a", x)
    old = Worker(settings.replace(devices=("CPU:1",))).start()
    new = Worker(settings).start()
    learner, sleeper, piper = (Client.from_url(redis_server.url, reply_timeout=10) for _ in "123")
    loop = asyncio.new_event_loop()
    con = aiworker.asyncio.Client.from_url(redis_server.url, reply_timeout=10)
    old_queue = client.keyspace.queue("CPU:1")

    def added() -> int:  # entries ever added to the old queue
        return int(client.xinfo_stream(old_queue)["entries-added"])

    try:
        assert learner.modelexecute("m", ["a", "a"], ["c"]) == "OK"  # each caches CPU:1
        assert sleeper.run("m", {"a": x, "b": x}, ["c"])["c"].tolist() == [4, 6]
        assert piper.pipeline().modelexecute("m", ["a", "a"], ["c"]).execute() == [b"OK"]
        assert loop.run_until_complete(con.modelexecute("m", ["a", "a"], ["c"])) == "OK"
        client.modelstore("m", "STUB", "CPU", stub_blob("mul"))  # another client moves it
        before = added()
        for _ in range(3):
            assert learner.modelexecute("m", ["a", "a"], ["c"]) == "OK"
            assert client.tensorget("c").tolist() == [4, 9]
        assert added() == before + 1  # forwarded once, then sent to CPU directly
        old.stop(timeout=10)
        assert sleeper.run("m", {"a": x, "b": x}, ["c"])["c"].tolist() == [4, 9]
        assert loop.run_until_complete(con.modelexecute("m", ["a", "a"], ["e"])) == "OK"
        assert client.tensorget("e").tolist() == [4, 9]
        stale = piper.pipeline().modelexecute("m", ["a", "a"], ["c"]).execute(False)
        assert isinstance(stale[0], NoLiveWorker) and stale[0].unread, stale
        assert piper.pipeline().modelexecute("m", ["a", "a"], ["c"]).execute() == [b"OK"]
        assert client.infoget("m")["calls"] == 6  # no job ran twice
    finally:
        loop.run_until_complete(con.aclose())
        loop.close()
        for c in (learner, sleeper, piper):
            c.close()
        old.stop(timeout=10)
        new.stop(timeout=10)


def test_the_device_cache_is_bounded(
    client: Client, worker: Worker, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Models stored, run and deleted under new names by another client (the gateway serves
    many): the client remembers the queues of the most recently used only, and never a key
    longer than the caches' limit, so a long-running client does not grow without bound."""
    from aiworker.client import ops
    from aiworker.protocol.keys import REMEMBERED_KEY_LENGTH

    monkeypatch.setattr(ops, "MAX_REMEMBERED_DEVICES", 3, raising=False)
    runner = Client.from_url(redis_server.url, reply_timeout=10)
    client.tensorset("a", np.array([1, 2], np.float32))
    names = [f"m{n}" for n in range(6)] + ["m" * (REMEMBERED_KEY_LENGTH + 1)]
    try:
        for name in names:
            client.modelstore(name, "STUB", "CPU", stub_blob("add"))
            assert runner.modelexecute(name, ["a", "a"], ["c"]) == "OK"
            client.modeldel(name)
        assert list(runner._state.devices) == ["m3", "m4", "m5"]
        client.modelstore("m3", "STUB", "CPU", stub_blob("mul"))
        assert runner.modelexecute("m3", ["a", "a"], ["c"]) == "OK"  # remembered, still right
        assert client.tensorget("c").tolist() == [1, 4]
    finally:
        runner.close()


def test_withdraw_only_takes_back_unread_entries(client: Client) -> None:
    """The Lua script decides atomically against XREADGROUP: delivered entries stay."""

    def withdraw(entry_id: Any) -> int:
        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return plans.run(client, queues.withdraw_plan(QUEUE, entry))

    first = client.xadd(QUEUE, {"cmd": "x"})
    assert withdraw(first) == waiting.REMOVED  # no consumer group yet: nobody read it
    assert withdraw(first) == waiting.GONE
    client.xgroup_create(QUEUE, CONSUMER_GROUP, id="0")
    read, unread = client.xadd(QUEUE, {"cmd": "1"}), client.xadd(QUEUE, {"cmd": "2"})
    client.xreadgroup(CONSUMER_GROUP, "c1", {QUEUE: ">"}, count=1)
    assert withdraw(read) == waiting.DELIVERED
    assert withdraw(unread) == waiting.REMOVED
    client.xack(QUEUE, CONSUMER_GROUP, read)
    assert withdraw(read) == waiting.DELIVERED  # acknowledged but not yet deleted: read
    client.xdel(QUEUE, read)
    assert withdraw(read) == waiting.GONE


class Box:
    def __init__(self) -> None:
        self.got: list[Reply] = []

    def put(self, reply: Reply) -> None:
        self.got.append(reply)


def ok(entry_id: str, queue: str = QUEUE) -> Reply:
    return Reply(Status.OK, queue, entry_id)


def test_router_keeps_early_replies_and_drops_abandoned_ones() -> None:
    router = routing.ReplyRouter()
    router.expect()
    router.route(ok("1-0"))  # before its registration
    first = Box()
    router.register((QUEUE, "1-0"), first)
    assert first.got == [ok("1-0")]
    second = Box()
    router.expect()
    router.register((QUEUE, "2-0"), second)
    router.route(ok("2-0", "aiworker:queue:GPU"))  # the same id on another stream: not its
    router.route(ok("2-0"))
    assert second.got == [ok("2-0")]
    router.forget(second)  # the waiter is done: a late reply is dropped
    router.route(ok("2-0"))
    assert second.got == [ok("2-0")] and router.waiting() == 1
    router.forget(first)
    router.expect()
    router.cancel()  # its XADD failed
    assert router.waiting() == 0


def test_router_follows_a_forward_before_the_reply_that_follows_it() -> None:
    router = routing.ReplyRouter()
    moved = Reply(Status.FORWARDED, QUEUE, "1-0", to=("aiworker:queue:GPU", "5-0"))
    final = ok("5-0", "aiworker:queue:GPU")
    router.expect()
    router.route(moved)  # both came before the registration
    router.route(final)
    box = Box()
    router.register((QUEUE, "1-0"), box)
    assert box.got == [moved, final]
    later = Box()
    router.expect()
    router.register((QUEUE, "2-0"), later)
    router.route(Reply(Status.FORWARDED, QUEUE, "2-0", to=("aiworker:queue:GPU", "6-0")))
    router.route(ok("6-0", "aiworker:queue:GPU"))
    assert [r.status for r in later.got] == ["forwarded", "ok"]


# the wait plan on its own (sans-IO: the test is its driver) -------------------------------


def _waiting_for(entry_id: str = "1-0") -> Any:
    keys = Keys()
    target = wait_plan.Target("CPU", keys.queue("CPU"), entry_id)
    plan = wait_plan.wait_plan(keys, target, None, waiting.Clock(10.0))
    assert isinstance(next(plan), wait_plan.Receive)
    return plan


def _answered(plan: Any, *items: Any) -> Any:
    """Feed received items to the plan; the reply it returns (None: it is still waiting)."""
    try:
        for item in items:
            step = plan.send(item)
            assert isinstance(step, wait_plan.Receive)
    except StopIteration as stop:
        return stop.value
    return None


def test_the_plan_takes_only_the_reply_about_its_own_entry() -> None:
    gpu = Keys().queue("GPU")
    forged = [
        Reply(Status.OK, gpu, "1-0").encode(),  # the same id on another stream
        Reply(Status.OK, QUEUE, "1-1").encode(),  # another entry of the same stream
        b"not a reply",
        b'{"status": "ok", "id": "1-0"}',  # no stream: an old worker's, or a forgery
    ]
    plan = _waiting_for()
    assert _answered(plan, *forged) is None
    assert _answered(plan, Reply(Status.OK, QUEUE, "1-0").encode()) == Reply(
        Status.OK, QUEUE, "1-0"
    )


def test_the_plan_follows_a_forward_even_when_its_reply_came_first() -> None:
    """On Redis Cluster the forwarded entry can be answered before its notice is pushed."""
    gpu = Keys().queue("GPU")
    final = Reply(Status.OK, gpu, "9-0", extra={"worker": "w"})
    notice = Reply(Status.FORWARDED, QUEUE, "1-0", to=(gpu, "9-0"))
    assert _answered(_waiting_for(), notice.encode(), final.encode()) == final
    assert _answered(_waiting_for(), final.encode(), notice.encode()) == final
    elsewhere = Reply(Status.FORWARDED, QUEUE, "1-0", to=("someone:else", "9-0"))
    assert _answered(_waiting_for(), final.encode(), elsewhere.encode()) is None  # not a queue


def test_a_gone_entry_waits_for_its_reply_only_within_the_wait_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Redis Cluster a reply may come up to 70 s after its entry was deleted: a wait whose
    entry a failover lost (no reply will ever come) lingered those 70 s past a reply_timeout of
    a few seconds (a requester of a test under a master's kill blocked for over a minute)."""
    monkeypatch.setattr(waiting, "CHECK_AFTER_S", 0.1)
    monkeypatch.setattr(waiting, "ENTRY_CHECK_AFTER_S", 0.1)
    keys, limit = Keys(), 1.0
    target = wait_plan.Target("CPU", keys.queue("CPU"), "1-0")
    clock = waiting.Clock(limit)
    plan = wait_plan.wait_plan(keys, target, None, clock, None, waiting.GONE_SETTLE_CLUSTER_S)
    live = ([{"devices": ["CPU"]}], True)
    gone = False

    def driver(step: Any) -> Any:
        nonlocal gone
        if time.monotonic() - clock.started > limit + 2:
            pytest.fail("the wait outlasted its limit")  # no Exception: not thrown into the plan
        if isinstance(step, wait_plan.Receive):  # as a driver waits: at most LONGEST_WAIT_S
            time.sleep(min(step.seconds, wait_plan.LONGEST_WAIT_S))
            return None  # no reply ever comes
        if isinstance(step, wait_plan.Liveness):
            return live
        if isinstance(step, plans.Commands) and step.commands[0][0] == "XRANGE":
            gone = True
            return [[]]  # the entry is no longer in its stream
        raise AssertionError(f"unexpected step {step}")

    result, elapsed = timed(lambda: plans.drive_steps(plan, driver))
    assert gone, "the entry was looked for"
    assert isinstance(result, ReplyTimeout) and result.removed, result
    assert "no longer in queue CPU and no reply came" in str(result)
    assert limit - 0.1 < elapsed < limit + 0.5
