"""Redis full: maxmemory with noeviction refuses writes. Requesters get Redis's OOM error, never a
secondary one; nothing is half written; a worker neither crashes nor stays broken, and serves
again once memory is freed. And a maxmemory-policy that may evict aiworker's keys is reported."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from conftest import wait_until, worker_env
from faults import QUEUE, job_entry, stub_model, tensor
from test_security import acl_words, documented_worker_rule

from aiworker import Client, Settings, Worker
from aiworker import asyncio as aio
from aiworker.embedded import RedisServer, cli_program, free_port
from aiworker.protocol.errors import OOM
from aiworker.protocol.keys import Keys
from aiworker.storage.health import live_workers
from aiworker.storage.memory import policy_warning

OOM_TEXT = OOM.removeprefix("OOM ")  # as redis-py shows it
_fillers = itertools.count()


@pytest.fixture(scope="module")
def full_server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--maxmemory-policy", "noeviction"]) as server:
        yield server


@pytest.fixture
def r(full_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(full_server.url)
    conn.config_set("maxmemory", 0)
    conn.flushall()
    yield conn
    conn.config_set("maxmemory", 0)
    conn.close()


@pytest.fixture
def full_client(full_server: RedisServer, r: redis.Redis) -> Iterator[Client]:
    c = Client.from_url(full_server.url, reply_timeout=10)
    yield c
    c.close()


def fill(r: redis.Redis, headroom: int = 2_000_000, prefix: str = "filler:") -> None:
    """Fill Redis until even a tiny new key is refused (keys named ``prefix``..., which on a
    cluster node must name one of its slots)."""
    used = _settled_memory(r)
    r.config_set("maxmemory", used + headroom)
    size = 10_000
    while True:
        try:
            r.set(f"{prefix}{next(_fillers)}", b"x" * size)
        except redis.exceptions.OutOfMemoryError:
            if size == 10:
                break
            size = 10  # a large value's query buffer alone can tip it over: fill the rest finely
    # a margin below what is used: freed buffers must not bring it back under the limit (Valkey
    # 8 gave back 240 KB of idle clients' buffers within seconds)
    r.config_set("maxmemory", _settled_memory(r) - 1_000_000)


def _settled_memory(r: redis.Redis) -> int:
    """Memory used once what FLUSHALL and DEL free in the background is freed (Valkey frees
    lazily by default: the memory it gave back after ``fill`` left Redis no longer full)."""
    deadline = time.monotonic() + 10
    while int(r.info("memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(r.info("memory")["used_memory"])


def free(r: redis.Redis) -> None:
    for key in r.scan_iter("filler:*", count=1000):
        r.delete(key)


def xadd_while_full(r: redis.Redis, fields: dict[str, Any]) -> str:
    """Queue a job on a full Redis (maxmemory lifted and put back in one transaction)."""
    limit = r.config_get("maxmemory")["maxmemory"]
    r.config_set("maxmemory", 0)
    pipe = r.pipeline(transaction=True)
    pipe.xadd(QUEUE, fields)
    pipe.config_set("maxmemory", limit)
    return str(pipe.execute()[0].decode())


def reply_of(r: redis.Redis, key: str, timeout: int = 10) -> dict[str, Any]:
    popped = r.blpop([key], timeout)
    assert popped is not None, f"no reply on {key}"
    return json.loads(popped[1])  # type: ignore[no-any-return]


def assert_read_refused_or_ran(reply: dict[str, Any]) -> None:
    """A job whose model is read in a MULTI, on a full Redis: Redis 7.0 refuses every command
    queued in MULTI while full, reads too (answered with its OOM error, nothing else); Redis
    7.2+ and Valkey refuse only writes there, and the job runs."""
    assert (reply["status"], reply.get("error")) in (("error", OOM), ("ok", None)), reply


def served_worker(url: str) -> Worker:
    return Worker(Settings(redis_url=url, threads_per_queue=1, block_ms=100)).start()


# requesters ----------------------------------------------------------------------------------


def test_replacing_a_tensor_is_refused_like_a_new_one(r: redis.Redis, full_client: Client) -> None:
    full_client.tensorset("t", np.array([1.0], dtype=np.float32))
    fill(r)
    for key in ("t", "new"):  # the replace went through before: its DEL hid the write
        with pytest.raises(redis.exceptions.OutOfMemoryError) as refused:
            full_client.tensorset(key, np.array([2.0, 3.0], dtype=np.float32))
        assert str(refused.value) == OOM_TEXT  # no "script: <sha>, on @user_script:13."
    free(r)
    assert full_client.tensorget("t").tolist() == [1.0]  # untouched
    full_client.tensorset("t", np.array([2.0, 3.0], dtype=np.float32))
    assert full_client.tensorget("t").tolist() == [2.0, 3.0]


def test_a_model_store_refused_says_oom_not_which_pipeline_command(
    r: redis.Redis, full_client: Client
) -> None:
    fill(r)
    with pytest.raises(redis.exceptions.OutOfMemoryError) as refused:
        stub_model(full_client, "m2")
    assert str(refused.value) == OOM_TEXT  # not "Command # 1 (DEL m2) of pipeline ..."
    assert not r.exists("m2")


# the worker ----------------------------------------------------------------------------------


def test_a_worker_starts_on_a_full_redis(full_server: RedisServer, r: redis.Redis) -> None:
    stub_model(r, "m")
    tensor(r, "a", [1, 2])
    tensor(r, "b", [3, 4])
    served_worker(full_server.url).stop(timeout=10)  # the queue's group exists
    xadd_while_full(r, job_entry("m", ["a", "b"], ["c"], "reply"))
    fill(r)
    w = served_worker(full_server.url)  # XGROUP CREATE was refused: the start failed
    try:
        assert_read_refused_or_ran(reply_of(r, "reply"))  # serving
        free(r)
        r.xadd(QUEUE, job_entry("m", ["a", "b"], ["c"], "reply"))
        assert reply_of(r, "reply")["status"] == "ok"
    finally:
        w.stop(timeout=10)


def test_a_worker_keeps_its_heartbeat_on_a_full_redis(
    full_server: RedisServer, r: redis.Redis, full_client: Client
) -> None:
    """Heartbeats replace a few small values: refused while Redis was full, clients took the live
    worker for dead after about 12 s (NoLiveWorker) and ``aiworker check`` failed it."""
    w = served_worker(full_server.url)
    try:
        key = Keys().worker(w.name)
        fill(r)
        filled = time.time()
        wait_until(lambda: json.loads(r.get(key) or b"{}").get("time", 0) > filled, timeout=8)
        assert r.zscore(Keys().workers, w.name) > filled  # type: ignore[operator]
        assert [s["name"] for s in live_workers(r, Keys())] == [w.name]  # as clients see it
    finally:
        w.stop(timeout=10)


def test_outputs_refused_for_oom_answer_oom_and_write_nothing(
    full_server: RedisServer, r: redis.Redis
) -> None:
    # the run outlasts filling Redis however loaded the machine (1.5 s did not always)
    stub_model(r, "m", op="identity", sleep_ms=4000)
    w = served_worker(full_server.url)
    try:
        # 20 KB of outputs: written outside Lua in a MULTI, which a full Redis refuses whole
        values = " ".join(["1"] * 5000)
        cmd = (
            "AI.DAGEXECUTE PERSIST 1 big |> "
            f"AI.TENSORSET x FLOAT 5000 VALUES {values} |> "
            "AI.MODELEXECUTE m INPUTS 1 x OUTPUTS 1 big"
        )
        r.xadd(QUEUE, {"cmd": cmd, "reply": "reply"})
        wait_until(lambda: r.xpending(QUEUE, "aiworker")["pending"] == 1)  # read: running
        fill(r)  # before it completes
        # the entry was left pending and rerun until it was dead-lettered; now: answered at once
        reply = reply_of(r, "reply", timeout=10)
        assert (reply["status"], reply.get("error")) == ("error", OOM), reply
        assert not r.exists("big")
        assert r.xpending(QUEUE, "aiworker")["pending"] == 0
    finally:
        free(r)
        w.stop(timeout=10)


@pytest.mark.parametrize("mode", ["private", "shared", "asyncio", "shared-requester"])
def test_a_client_waiting_while_redis_fills_gets_its_reply(
    full_server: RedisServer, r: redis.Redis, mode: str
) -> None:
    """Redis fills while a job runs: the client's wait for the reply (BLMOVE, which a full Redis
    refuses) goes on by taking the reply (BLPOP), and the job's own answer comes - here Redis'
    refusal of its outputs - not the refusal of the wait. Also as the requester of
    docs/security.md, whose rule grants BLPOP but no other command that takes."""
    stub_model(r, "model:m", op="identity", sleep_ms=1500)
    tensor(r, "ai:x", [1.0] * 5000)  # 20 KB of outputs: a full Redis refuses them
    url = full_server.url
    if mode == "shared-requester":
        rule = documented_worker_rule("pw", "requester")
        r.execute_command("ACL", "SETUSER", "requester", "reset", *acl_words(rule)[2:])
        url = url.replace("redis://", "redis://requester:pw@")
    w = served_worker(full_server.url)
    out: dict[str, Any] = {}

    def execute() -> None:
        try:
            if mode == "asyncio":

                async def call() -> Any:
                    async with aio.Client.from_url(url, reply_timeout=10) as acon:
                        return await acon.modelexecute("model:m", ["ai:x"], ["ai:big"])

                out["result"] = asyncio.run(call())
            else:
                shared = mode.startswith("shared")
                with Client.from_url(url, reply_timeout=10, shared_replies=shared) as c:
                    out["result"] = c.modelexecute("model:m", ["ai:x"], ["ai:big"])
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=execute)
    try:
        thread.start()
        wait_until(lambda: r.xpending(QUEUE, "aiworker")["pending"] == 1)  # read: running
        fill(r)  # before it completes
        thread.join(20)
        assert isinstance(out.get("error"), redis.ResponseError), out
        assert OOM in str(out["error"]), out  # the worker's reply, not the wait refused
        assert not r.exists("ai:big")
    finally:
        thread.join(20)
        free(r)
        w.stop(timeout=10)
        r.execute_command("ACL", "DELUSER", "requester")


def test_a_model_unreadable_while_full_loads_once_memory_is_freed(
    full_server: RedisServer, r: redis.Redis, full_client: Client
) -> None:
    stub_model(r, "m")
    tensor(r, "a", [1, 2])
    tensor(r, "b", [3, 4])
    w = served_worker(full_server.url)
    try:
        fill(r)
        xadd_while_full(r, job_entry("m", ["a", "b"], ["c"], "reply"))
        reply = reply_of(r, "reply")  # its chunks are read in a MULTI: refused while full
        assert_read_refused_or_ran(reply)  # not "Command # 1 (HMGET"
        free(r)
        # the refusal was cached as the model's load failure: every later job failed with it
        assert full_client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
        assert full_client.tensorget("c").tolist() == [4.0, 6.0]
    finally:
        w.stop(timeout=10)


# the gateway ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_gateway_answers_oom_as_redis_does(full_server: RedisServer, r: redis.Redis) -> None:
    stub_model(r, "m")
    tensor(r, "a", [1, 2])
    tensor(r, "b", [3, 4])
    w = served_worker(full_server.url)
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "aiworker", "gateway", "--redis-url", full_server.url,
         "--listen", f"127.0.0.1:{port}"],
        env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        g = redis.Redis(port=port)
        wait_until(lambda: _answers(g), timeout=30, interval=0.2)
        fill(r)
        for command in (
            "AI.TENSORSET new FLOAT 1 VALUES 3",
            "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c",
            "AI.DAGEXECUTE LOAD 2 a b |> AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c",
        ):
            out = subprocess.run(
                [cli_program() or "redis-cli", "-p", str(port), *command.split()],
                capture_output=True,
                text=True,
            )
            assert out.stdout.strip() == OOM, command  # was "ERR ... script: <sha>, on ..."
    finally:
        free(r)
        gateway.terminate()
        gateway.wait(10)
        w.stop(timeout=10)


def _answers(g: redis.Redis) -> bool:
    try:
        return bool(g.ping())
    except redis.ConnectionError:
        return False


# eviction policies ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-ttl"])
def test_a_policy_that_evicts_is_named_with_the_advice(policy: str) -> None:
    warning = policy_warning(policy)
    assert warning is not None and policy in warning and "noeviction" in warning
    assert policy_warning("noeviction") is None


@pytest.fixture
def evicting_server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        yield server


def test_a_worker_warns_once_at_start_of_an_evicting_policy(
    evicting_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        w = served_worker(evicting_server.url)
        w.stop(timeout=10)
    said = [rec.getMessage() for rec in caplog.records if "maxmemory-policy" in rec.getMessage()]
    assert len(said) == 1 and "allkeys-lru" in said[0] and "noeviction" in said[0]


def test_check_warns_of_an_evicting_policy_and_is_quiet_without_config(
    evicting_server: RedisServer,
) -> None:
    admin = redis.Redis.from_url(evicting_server.url)
    admin.execute_command("ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "+@all", "-config")
    w = served_worker(evicting_server.url)
    try:
        told = _check(evicting_server.url)
        untold = _check(f"redis://noconfig:pw@127.0.0.1:{evicting_server.port}/0")
    finally:
        w.stop(timeout=10)
        admin.close()
    assert told.returncode == 0, told.stderr
    assert "maxmemory-policy is allkeys-lru" in told.stderr and "noeviction" in told.stderr
    assert untold.returncode == 0, untold.stderr  # CONFIG refused: checked quietly, no failure
    assert "maxmemory-policy" not in untold.stderr


def _check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiworker", "check", "--redis-url", url, "--device", "CPU"],
        env=worker_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_entries_of_two_streams_completed_together_keep_their_own_outcomes(
    full_server: RedisServer, r: redis.Redis
) -> None:
    """Entries of two streams complete in one round trip, a call per stream. On a full Redis one
    stream's call was refused (large outputs: written in a transaction, refused whole) and the
    other's went through (small ones: the script acknowledges first and may go on): the refusal
    made the completion run every entry again with the OOM answer, so the one completed was
    reported a duplicate (its statistics and hooks miscounted it). Now only the refused entry
    is answered with the OOM error."""
    from aiworker.execution.outcome import Outcome, StatsRecord
    from aiworker.storage import tensor_io
    from aiworker.storage.wire import Wire
    from aiworker.worker.complete import Completer, Finished
    from aiworker.worker.leases import HeldEntries

    keys = Keys(prefix="twostreams:")
    queues = [keys.queue("CPU"), keys.queue("CPU:1")]
    for queue in queues:
        r.xgroup_create(queue, "aiworker", id="0", mkstream=True)
    wire = Wire(r.connection_pool)
    completer = Completer(keys, "w1", 60, HeldEntries())
    stats = [StatsRecord("m2", duration_us=10, samples=1, calls=1)]
    big = np.ones(2 * tensor_io.LUA_VALUE_BYTES // 4, np.float32)
    items = []
    for queue, output in zip(queues, (big, np.ones(2, np.float32)), strict=True):
        r.xadd(queue, {"job": "x"})
        entry_id = r.xreadgroup("aiworker", "c", {queue: ">"})[0][1][0][0].decode()
        reply = f"reply:{queue}"
        outcome = Outcome("ok", writes={f"out:{queue}": output}, stats=stats)
        items.append(Finished(entry_id, outcome, reply=reply, queue=queue))
    wire.execute("PING")
    fill(r)
    try:
        results = completer.complete(wire, queues[0], items)
    finally:
        free(r)
    assert [(res.applied, res.duplicate) for res in results] == [(True, False), (True, False)]
    refused, done = (json.loads(r.lpop(f"reply:{queue}") or b"{}") for queue in queues)
    assert (refused["status"], refused.get("error")) == ("error", OOM), refused
    assert done["status"] == "ok", done
    assert not r.exists(f"out:{queues[0]}") and r.exists(f"out:{queues[1]}")
    assert all(r.xpending(queue, "aiworker")["pending"] == 0 for queue in queues)
