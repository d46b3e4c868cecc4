"""AUTH, a least-privilege ACL worker user and TLS, each against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from conftest import ROOT, stub_blob, wait_until
from faults import KEYS, WorkerProcess, pending_ids, stub_model, tensor, wait_for_workers
from redis.backoff import NoBackoff
from redis.retry import Retry
from test_gateway import event_loops, large_tensors_in_a_pipeline, running_gateway

from aiworker import Client, ConfigError, NoLiveWorker, Settings, Worker
from aiworker import asyncio as aio
from aiworker.cli import main
from aiworker.client import reply_lists
from aiworker.embedded import free_port, server_program
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.storage.redis_options import tls_kwargs
from aiworker.worker.process import ensure_group

QUEUE = KEYS.queue("CPU")


def _redis(tmp_path: Path, args: list[str], **client: Any) -> Iterator[redis.Redis]:
    """redis-server with ``args``, ready when a client built with ``client`` answers PING."""
    executable = server_program()
    assert executable is not None
    proc = subprocess.Popen(
        [executable, "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    admin = redis.Redis(host="127.0.0.1", socket_connect_timeout=1, **client)

    def up() -> bool:
        assert proc.poll() is None, "redis-server exited"
        try:
            return bool(admin.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, timeout=15, interval=0.05)
        yield admin
    finally:
        admin.close()
        proc.terminate()
        proc.wait(10)


# AUTH ---------------------------------------------------------------------------------------


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[tuple[redis.Redis, int]]:
    port = free_port()
    yield from (
        (r, port)
        for r in _redis(
            tmp_path, ["--port", str(port), "--requirepass", "s3cret"], port=port, password="s3cret"
        )
    )


def test_requirepass(password_redis: tuple[redis.Redis, int]) -> None:
    admin, port = password_redis
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    stub_model(admin, "m")
    tensor(admin, "a", [1])
    tensor(admin, "b", [2])
    settings = Settings(redis_url=url, block_ms=100)
    assert "s3cret" not in repr(settings)
    w = Worker(settings).start()
    try:
        client = Client.from_settings(settings, reply_timeout=10)
        assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
        assert client.tensorget("c").tolist() == [3.0]
        big = np.arange(150_000, dtype=np.float32)  # 600 KB: fetched plainly, received in place
        client.tensorset("x", big)
        for _ in range(2):  # the first read learns that x is large, the second knows
            assert client.modelexecute("m", ["x", "x"], ["z"]) == "OK"
            np.testing.assert_array_equal(client.tensorget("z"), big * 2)
        runner = CliRunner()
        assert runner.invoke(main, ["check", "--redis-url", url]).exit_code == 0
        # Redis answers and refuses: said so, not "Redis unreachable"
        for refused in (f"redis://127.0.0.1:{port}/0", f"redis://:wrong@127.0.0.1:{port}/0"):
            bad = runner.invoke(main, ["check", "--redis-url", refused])
            assert bad.exit_code == 1 and "unhealthy: Redis refused the credentials" in bad.output
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).get("c")
    finally:
        w.stop(timeout=5)
    for key in admin.scan_iter(KEYS.worker("*")):
        assert b"s3cret" not in (admin.get(key) or b"")


# ACL ----------------------------------------------------------------------------------------


def acl_words(rule: str) -> list[str]:
    """A rule's ACL SETUSER arguments: each selector (``(...)``) is one."""
    return re.findall(r"\([^)]*\)|\S+", rule)


def documented_worker_rule(password: str, who: str = "worker") -> str:
    """A least-privilege rule exactly as docs/security.md gives it (``who``: worker, requester)."""
    text = (ROOT / "docs" / "security.md").read_text()
    match = re.search(rf"<!-- acl:{who} -->\s*```text\n(user \w+ .+)\n```", text)
    assert match, f"docs/security.md shows the {who}'s ACL rule"
    return match.group(1).replace(">CHANGE-ME", f">{password}")


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[redis.Redis, int]]:
    port = free_port()
    acl = tmp_path / "users.acl"
    acl.write_text(
        "user default off\n"
        "user admin on >adminpw ~* &* +@all\n"
        + documented_worker_rule("workerpw") + "\n"
        + documented_worker_rule("requesterpw", "requester") + "\n"
    )  # fmt: skip
    args = ["--port", str(port), "--aclfile", str(acl)]
    yield from (
        (r, port) for r in _redis(tmp_path, args, port=port, username="admin", password="adminpw")
    )


def _run(admin: redis.Redis, cmd: str, reply: str, timeout: float = 10) -> dict[str, Any]:
    admin.xadd(QUEUE, {"cmd": cmd, "reply": reply})
    popped = admin.blpop([reply], timeout)
    assert popped is not None, f"no reply to {cmd}"
    return json.loads(popped[1])  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_worker_runs_as_a_least_privilege_acl_user(
    acl_redis: tuple[redis.Redis, int], tmp_path: Path
) -> None:
    admin, port = acl_redis
    url = f"redis://aiworker:workerpw@127.0.0.1:{port}/0"
    stub_model(admin, "model:m")
    tensor(admin, "ai:a", [1, 2])
    tensor(admin, "ai:b", [10, 20])
    tensor(admin, "secret:t", [7, 7])
    admin.set("secret:plain", "do not read")
    ensure_group(admin, QUEUE)
    # An entry a vanished consumer took: the worker reclaims and dead-letters it (ACL-wise).
    admin.xadd(
        QUEUE,
        {
            "cmd": "AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:b OUTPUTS 1 ai:x",
            "reply": "aiworker:reply:dl",
        },
    )
    admin.xreadgroup(CONSUMER_GROUP, "gone:1:CPU:0", {QUEUE: ">"}, count=1)

    proc = WorkerProcess(url, tmp_path / "w.log", visibility_timeout=0.5, max_deliveries=1)
    try:
        wait_for_workers(admin, [proc])
        dead = admin.blpop(["aiworker:reply:dl"], 10)
        assert dead is not None and b"delivered 2 times" in dead[1]
        assert admin.xlen(KEYS.dead_letters("CPU")) == 1

        ok = _run(
            admin, "AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:b OUTPUTS 1 ai:c", "aiworker:reply:1"
        )
        assert ok["status"] == "ok", ok
        assert Client(port=port, username="admin", password="adminpw").tensorget(
            "ai:c"
        ).tolist() == [11.0, 22.0]

        leak = _run(
            admin,
            "AI.MODELEXECUTE model:m INPUTS 2 secret:t ai:b OUTPUTS 1 ai:d",
            "aiworker:reply:2",
        )
        # Redis 7.0: "...has no permissions to access one of the keys..."; 7.2+, Valkey: "No
        # permissions to access a key"
        assert leak["status"] == "error" and "no permissions" in leak["error"].lower(), leak
        assert "7" not in leak["error"], "nothing of the secret tensor leaks"
        assert not admin.exists("ai:d")

        escape = _run(
            admin,
            "AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:b OUTPUTS 1 secret:out",
            "aiworker:reply:3",
        )
        assert escape["error"] == "NOPERM this worker may not write key 'secret:out'", escape
        assert not admin.exists("secret:out"), "nothing half applied"

        # What a job may write holds for this user too: never over a model, nor the queue.
        model_before = admin.hgetall("model:m")
        over = _run(
            admin,
            "AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:b OUTPUTS 1 model:m",
            "aiworker:reply:4",
        )
        assert over["error"].startswith("WRONGTYPE") and admin.hgetall("model:m") == model_before
        queue = _run(
            admin,
            f"AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:b OUTPUTS 1 {QUEUE}",
            "aiworker:reply:5",
        )
        assert "aiworker's own keys" in queue["error"] and admin.type(QUEUE) == b"stream"

        # A reply key outside the worker's patterns: the job still completes, unanswered.
        admin.xadd(
            QUEUE,
            {
                "cmd": "AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:b OUTPUTS 1 ai:e",
                "reply": "elsewhere",
            },
        )
        wait_until(lambda: admin.exists("ai:e"), timeout=10)
        assert not admin.exists("elsewhere")

        runner = CliRunner()
        assert runner.invoke(main, ["check", "--redis-url", url]).exit_code == 0

        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.stop()
    assert not [
        c
        for c in admin.xinfo_consumers(QUEUE, CONSUMER_GROUP)
        if proc.name_prefix in c["name"].decode()
    ], "deregistered under the ACL too"
    assert admin.xlen(QUEUE) == 0 and pending_ids(admin) == []
    assert re.findall(r"WARNING .*(?:heartbeat|lease|reclaim|deregister).*", proc.log()) == []

    # The least-privilege user cannot step outside its rule.
    worker_user = redis.Redis(port=port, username="aiworker", password="workerpw")
    assert worker_user.ping()
    denied = [
        lambda: worker_user.get("secret:plain"),
        lambda: worker_user.hgetall("secret:t"),
        lambda: worker_user.set("secret:plain", "x"),
        lambda: worker_user.keys("*"),
        lambda: worker_user.flushall(),
        lambda: worker_user.config_get("*"),
        lambda: worker_user.execute_command("ACL", "LIST"),
        lambda: worker_user.execute_command("CLIENT", "LIST"),
        lambda: worker_user.execute_command("SWAPDB", "0", "1"),
        lambda: worker_user.eval("return 1", 0),
        lambda: worker_user.execute_command("SCRIPT", "FLUSH"),
        lambda: worker_user.publish("c", "m"),
    ]
    for attempt in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # Scripts it may load run with its own rights.
    sha = worker_user.script_load("return redis.call('GET', KEYS[1])")
    with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)NOPERM|no permissions"):
        worker_user.evalsha(sha, 1, "secret:plain")
    assert admin.get("secret:plain") == b"do not read"


def test_a_requester_cannot_start_a_queue_anew(acl_redis: tuple[redis.Redis, int]) -> None:
    """A stream deleted and XADDed again takes ids it gave before: a requester that could
    delete a queue could re-add another client's unread entry id naming that client's reply
    list, and the reply would be believed. The documented rule queues and reads queues only."""
    admin, port = acl_redis
    requester = redis.Redis(port=port, username="requester", password="requesterpw")
    entry = requester.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE model:m INPUTS 1 ai:a OUTPUTS 1 ai:b"})
    limit = KEYS.queue_limit(QUEUE)
    admin.set(limit, "100")
    meddling = [("DEL", QUEUE), ("PEXPIRE", QUEUE, 1), ("RENAME", QUEUE, "ai:q"),
                ("EVAL", "return redis.call('DEL', KEYS[1])", 1, QUEUE),
                ("EVAL", f"return redis.call('DEL', '{QUEUE}')", 0), ("DEL", limit),
                ("HSET", limit, "f", "v"), ("XADD", limit, "*", "f", "v"),
                ("EVAL", "return redis.call('XADD', KEYS[2], '*', 'f', 'v')", 2, QUEUE, limit)]  # fmt: skip
    for command in meddling:
        with pytest.raises(redis.ResponseError, match=r"permissions|can't access"):
            requester.execute_command(*command)
    assert [found for found, _ in admin.xrange(QUEUE)] == [entry] and admin.get(limit) == b"100"
    assert requester.xrange(QUEUE) and requester.xadd(QUEUE, {"cmd": "x"})
    assert requester.get(limit) == b"100" and requester.xlen(QUEUE) == 2


@pytest.mark.slow
def test_a_requester_with_the_documented_rule(acl_redis: tuple[redis.Redis, int]) -> None:
    """Everything a requester does, as the least-privilege requester of docs/security.md, next
    to a worker with the worker's rule: directly and through the gateway."""
    admin_redis, port = acl_redis
    admin = Client(port=port, username="admin", password="adminpw", reply_timeout=20)
    admin.modelstore("model:m", "STUB", "CPU", stub_blob("add"))
    admin.tensorset("ai:secret-of-admin", np.ones(2, np.float32))
    worker_settings = Settings(redis_url=f"redis://aiworker:workerpw@127.0.0.1:{port}/0",
                               threads_per_queue=1, block_ms=100)  # fmt: skip
    url = f"redis://requester:requesterpw@127.0.0.1:{port}/0"
    w = Worker(worker_settings).start()
    try:
        con = Client.from_url(url, reply_timeout=20)
        small, large = np.arange(4, dtype=np.float32), np.arange(150_000, dtype=np.float32)
        assert con.tensorset("ai:a", small) == "OK"
        assert con.tensorset("ai:big", large) == "OK"
        assert con.tensorget("ai:big").tolist() == large.tolist()
        assert con.modelget("model:m", meta_only=True)["backend"] == "STUB"
        assert con.modelexecute("model:m", ["ai:a", "ai:a"], ["ai:b"]) == "OK"
        assert con.tensorget("ai:b").tolist() == (small * 2).tolist()
        dag = con.dag(load=["ai:a"], persist=["ai:c"])
        dag.modelexecute("model:m", ["ai:a", "ai:a"], ["ai:c"])
        assert dag.execute() == ["OK"]
        assert (
            con.run("model:m", {"a": small, "b": small}, ["out"])["out"].tolist()
            == (small * 2).tolist()
        )
        assert con.infoget("model:m")["calls"] >= 3
        admin.modelstore("model:gpu", "STUB", "GPU", stub_blob("add"))
        with pytest.raises(NoLiveWorker):  # nobody serves GPU: taken back
            con.modelexecute("model:gpu", ["ai:a", "ai:a"], ["ai:d"])
        con.close()
        with running_gateway(worker_settings) as gw:
            host, gw_port = gw.address()
            through = redis.Redis(host=host, port=gw_port, username="requester",
                                  password="requesterpw", protocol=2)  # fmt: skip
            assert (
                through.execute_command(
                    "AI.MODELEXECUTE", "model:m", "INPUTS", 2, "ai:a", "ai:a", "OUTPUTS", 1, "ai:e"
                )
                == b"OK"
            )
            assert through.execute_command("AI.TENSORGET", "ai:e", "VALUES") == [
                b"0",
                b"2",
                b"4",
                b"6",
            ]
    finally:
        w.stop(timeout=10)
        admin.close()
    assert admin_redis.exists("ai:d") == 0


@pytest.mark.parametrize(
    "withheld",
    [("blmove", "lrem", "lrange", "ltrim"), ("lrem",), ("lrange",), ("ltrim",)],
    ids=["rule-before", "no-lrem", "no-lrange", "no-ltrim"],
)
def test_a_requester_without_the_commands_that_read_replies_still_gets_them(
    acl_redis: tuple[redis.Redis, int],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    withheld: tuple[str, ...],
) -> None:
    """A requester still granted the rule of before the clients read replies with BLMOVE
    (``+blpop``), or only part of this one: its waits take the replies with BLPOP, as they did,
    with a warning that says what to grant - not a NOPERM after the job ran (a retry would run it
    again), nor replies read again and again. A forwarded job (a notice, then the reply) too."""
    monkeypatch.setattr(reply_lists, "_warned", False)  # warned once per process
    admin_redis, port = acl_redis
    admin_redis.execute_command("ACL", "SETUSER", "requester", *(f"-{c}" for c in withheld))
    admin = Client(port=port, username="admin", password="adminpw")
    admin.modelstore("model:m", "STUB", "CPU", stub_blob("add"))
    worker_settings = Settings(redis_url=f"redis://aiworker:workerpw@127.0.0.1:{port}/0",
                               devices=("CPU", "CPU:1"), threads_per_queue=1,
                               block_ms=100)  # fmt: skip
    url = f"redis://requester:requesterpw@127.0.0.1:{port}/0"
    small = np.arange(4, dtype=np.float32)
    w = Worker(worker_settings).start()
    try:
        with caplog.at_level("WARNING", logger="aiworker.client"):
            con = Client.from_url(url, reply_timeout=10)
            assert con.tensorset("ai:a", small) == "OK"
            assert con.modelexecute("model:m", ["ai:a", "ai:a"], ["ai:b"]) == "OK"
            # the model moves to CPU:1: the client's cached device sends the next job to CPU,
            # whose worker forwards it (a notice on the reply list, then the reply)
            admin.modelstore("model:m", "STUB", "CPU:1", stub_blob("add"))
            assert con.modelexecute("model:m", ["ai:a", "ai:a"], ["ai:c"]) == "OK"
            out = con.run("model:m", {"a": small, "b": small}, ["out"])
            assert out["out"].tolist() == (small * 2).tolist()
            con.close()
            shared = Client.from_url(url, reply_timeout=10, shared_replies=True)
            for n in range(30):
                assert shared.modelexecute("model:m", ["ai:a", "ai:a"], [f"ai:s{n}"]) == "OK"
            shared.close()

            async def calls() -> Any:
                async with aio.Client.from_url(url, reply_timeout=10) as acon:
                    jobs = [acon.modelexecute("model:m", ["ai:a"] * 2, ["ai:c"]) for _ in range(10)]
                    return await asyncio.gather(*jobs)

            assert asyncio.run(calls()) == ["OK"] * 10
    finally:
        w.stop(timeout=10)
        admin.close()
    assert any("+blmove +lrem +lrange +ltrim" in r.getMessage() for r in caplog.records)
    assert not admin_redis.keys("aiworker:reply:*") or "ltrim" in withheld  # removed (DEL)


def documented_owner_extra() -> list[str]:
    """What docs/security.md says a model or script owner adds to the requester's rule."""
    text = (ROOT / "docs" / "security.md").read_text()
    extra = re.search(r"<!-- acl:owner -->\s*```text\n(.+)\n```", text)
    assert extra, "docs/security.md shows what an owner adds to the requester's rule"
    return extra.group(1).split()


@pytest.mark.slow
def test_an_owner_with_the_documented_rule(acl_redis: tuple[redis.Redis, int]) -> None:
    """Stores, lists and deletes models and scripts as the requester's rule plus the owner's
    line: directly (checked here) and through the gateway (checked by a worker: the blob staged
    under aiworker:verify:*). A store resets statistics that the requester may only read."""
    admin_redis, port = acl_redis
    rule = acl_words(documented_worker_rule("ownerpw", "requester"))[2:] + documented_owner_extra()
    admin_redis.execute_command("ACL", "SETUSER", "owner", *rule)
    worker_settings = Settings(redis_url=f"redis://aiworker:workerpw@127.0.0.1:{port}/0",
                               threads_per_queue=1, block_ms=100)  # fmt: skip
    source = (
        "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n"
    )
    w = Worker(worker_settings).start()
    try:
        owner = Client(port=port, username="owner", password="ownerpw", reply_timeout=20)
        assert owner.modelstore("model:m", "STUB", "CPU", stub_blob("add")) == "OK"
        assert owner.modelstore("model:m", "STUB", "CPU", stub_blob("mul")) == "OK"  # again
        assert owner.scriptstore("model:s", "CPU", source, "bar") == "OK"
        assert owner.modelscan() == [["model:m", ""]] and owner.scriptscan() == [["model:s", ""]]
        owner.tensorset("ai:a", np.ones(2, np.float32))
        assert owner.modelexecute("model:m", ["ai:a", "ai:a"], ["ai:b"]) == "OK"
        assert owner.modeldel("model:m") == "OK" and owner.scriptdel("model:s") == "OK"
        assert owner.modelscan() == [] and owner.scriptscan() == []
        owner.close()
        with running_gateway(worker_settings) as gw:
            host, gw_port = gw.address()
            through = redis.Redis(host=host, port=gw_port, username="owner",
                                  password="ownerpw", protocol=2)  # fmt: skip
            store = ("AI.MODELSTORE", "model:g", "STUB", "CPU", "BLOB", stub_blob("add"))
            assert through.execute_command(*store) == b"OK"
            assert through.execute_command("AI.SCRIPTSTORE", "model:t", "CPU", "ENTRY_POINTS", 1,
                                           "bar", "SOURCE", source) == b"OK"  # fmt: skip
            assert through.execute_command("AI.MODELDEL", "model:g") == b"OK"
            assert through.execute_command("AI.SCRIPTDEL", "model:t") == b"OK"
    finally:
        w.stop(timeout=10)
    assert admin_redis.exists("model:m", "model:s", "model:g", "model:t") == 0


@pytest.mark.slow
def test_a_requester_runs_models_and_scripts_but_cannot_change_them(
    acl_redis: tuple[redis.Redis, int],
) -> None:
    """Models and scripts are code: the documented requester runs the stored ones, directly and
    through the gateway, but may not overwrite or delete one, neither with hash commands (a
    model's chunks written with HSET would be a store), nor in a script of its own, nor with
    AI.* stores and deletes. Its rule once granted HSET, DEL and RENAME on the models' keys."""
    pytest.importorskip("torch")
    admin_redis, port = acl_redis
    admin = Client(port=port, username="admin", password="adminpw", reply_timeout=20)
    admin.modelstore("model:m", "STUB", "CPU", stub_blob("add"))
    admin.scriptstore("model:s", "CPU", ADD_SCRIPT, ["add"])
    stored = {key: admin_redis.hgetall(key) for key in ("model:m", "model:s")}
    worker_settings = Settings(redis_url=f"redis://aiworker:workerpw@127.0.0.1:{port}/0",
                               threads_per_queue=1, block_ms=100)  # fmt: skip
    requester = redis.Redis(port=port, username="requester", password="requesterpw")
    denied = r"(?i)NOPERM|no permissions|can.t access"
    requester.hset("ai:x", mapping={"kind": "model", "chunk:0": "x"})
    for key in stored:
        meddling = [("HSET", key, "chunk:0", "code"), ("HSET", key, "size", 4),
                    ("HSET", key, "digest", "0" * 64), ("HSET", key, "source", "code"),
                    ("HDEL", key, "chunk:0"), ("DEL", key), ("PEXPIRE", key, 1),
                    ("RENAME", key, "ai:y"), ("RENAME", "ai:x", key),
                    ("EVAL", "return redis.call('HSET', KEYS[1], 'chunk:0', 'code')", 1, key),
                    ("EVAL", f"return redis.call('DEL', '{key}')", 0)]  # fmt: skip
        for command in meddling:
            with pytest.raises(redis.ResponseError, match=denied):
                requester.execute_command(*command)
    url = f"redis://requester:requesterpw@127.0.0.1:{port}/0"
    w = Worker(worker_settings).start()
    try:
        con = Client.from_url(url, reply_timeout=20)
        refused: list[Callable[[], Any]] = [
            lambda: con.modelstore("model:m", "STUB", "CPU", stub_blob("mul")),
            lambda: con.modeldel("model:m"),
            lambda: con.scriptstore("model:s", "CPU", ADD_SCRIPT, ["add"]),
            lambda: con.scriptdel("model:s"),
            # a key it may not read: refused, not taken for one holding another kind of value
            lambda: con.modelstore("secret:m", "STUB", "CPU", stub_blob("mul")),
            lambda: con.scriptstore("secret:s", "CPU", ADD_SCRIPT, ["add"]),
        ]
        for attempt in refused:
            with pytest.raises(redis.ResponseError, match=denied):
                attempt()
        con.tensorset("ai:a", np.arange(3, dtype=np.float32))
        assert con.modelexecute("model:m", ["ai:a", "ai:a"], ["ai:b"]) == "OK"
        assert con.scriptexecute("model:s", "add", inputs=["ai:a", "ai:b"], outputs=["ai:c"])
        assert con.tensorget("ai:c").tolist() == [0.0, 3.0, 6.0]
        con.close()
        with running_gateway(worker_settings) as gw:
            host, gw_port = gw.address()
            through = redis.Redis(host=host, port=gw_port, username="requester",
                                  password="requesterpw", protocol=2)  # fmt: skip
            ai = through.execute_command
            refused_through = [
                ("AI.MODELSTORE", "model:m", "STUB", "CPU", "BLOB", stub_blob("mul")),
                ("AI.MODELDEL", "model:m"),
                ("AI.SCRIPTSTORE", "model:s", "CPU", "ENTRY_POINTS", 1, "add",
                 "SOURCE", ADD_SCRIPT),
                ("AI.SCRIPTDEL", "model:s"),
                ("AI.TENSORSET", "model:m", "FLOAT", 1, "VALUES", 1),
                ("HSET", "model:m", "chunk:0", "code"),
                ("DEL", "model:s"),
            ]  # fmt: skip
            for command in refused_through:
                with pytest.raises(redis.ResponseError, match=denied):
                    ai(*command)
            run = ("AI.MODELEXECUTE", "model:m", "INPUTS", 2, "ai:a", "ai:a", "OUTPUTS", 1, "ai:d")
            assert ai(*run) == b"OK"
            assert ai("AI.SCRIPTEXECUTE", "model:s", "add", "INPUTS", 2, "ai:a", "ai:d",
                      "OUTPUTS", 1, "ai:e") == b"OK"  # fmt: skip
            assert ai("AI.TENSORGET", "ai:e", "VALUES") == [b"0", b"3", b"6"]
    finally:
        w.stop(timeout=10)
        admin.close()
    assert {key: admin_redis.hgetall(key) for key in stored} == stored
    assert not list(admin_redis.scan_iter("aiworker:verify:*"))


@pytest.mark.slow
def test_a_requester_with_the_documented_rule_on_a_cluster(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker, cluster_settings: Settings
) -> None:
    """The requester's rule and its cluster line, exactly as docs/security.md gives them,
    through the gateway and (adding +info) with ``Client.from_url``. The gateway asked each user
    whether Redis is a cluster (INFO, which this rule denies): such a user got a client of one
    node, whose commands on the other masters' keys were answered "ERR <slot> <host:port>", and
    kept it after it was granted INFO."""
    nodes = [redis_cluster.node(port) for port in redis_cluster.ports]
    rule = acl_words(documented_worker_rule("requesterpw", "requester"))[2:]
    keys = [f"ai:t{n}" for n in range(12)]
    assert len({redis_cluster.master_of(key) for key in keys}) == 3  # every master
    big = np.arange(150_000, dtype=np.float32)
    cluster_client.modelstore("model:m", "STUB", "CPU", stub_blob("add"))
    try:
        for node in nodes:
            node.execute_command("ACL", "SETUSER", "requester", *rule)
        with running_gateway(cluster_settings) as gw:
            host, port = gw.address()
            through = redis.Redis(host=host, port=port, username="requester",
                                  password="requesterpw", protocol=2, socket_timeout=30)  # fmt: skip
            ai = through.execute_command
            # without the cluster line: Redis' refusal of what the cluster client needs
            with pytest.raises(redis.exceptions.NoPermissionError, match=r"'cluster\|slots'"):
                ai("AI.TENSORSET", keys[0], "FLOAT", 1, "VALUES", 1)
            extra = cluster_rule_extra("requester")
            for node in nodes:
                node.execute_command("ACL", "SETUSER", "requester", *extra)
            for n, key in enumerate(keys):  # the same gateway: the refused client was not kept
                assert ai("AI.TENSORSET", key, "FLOAT", 1, "VALUES", n) == b"OK"
                assert ai("AI.TENSORGET", key, "VALUES") == [str(n).encode()]
            assert ai("AI.TENSORSET", "ai:big", "FLOAT", big.size, "BLOB", big.tobytes()) == b"OK"
            assert ai("AI.TENSORGET", "ai:big", "BLOB") == big.tobytes()
            assert ai("AI.MODELEXECUTE", "model:m", "INPUTS", 2, keys[3], keys[3],
                      "OUTPUTS", 1, "ai:o") == b"OK"  # fmt: skip
            assert ai("AI.TENSORGET", "ai:o", "VALUES") == [b"6"]
        for node in nodes:  # the Python clients ask whether Redis is a cluster
            node.execute_command("ACL", "SETUSER", "requester", "+info")
        url = f"redis://requester:requesterpw@127.0.0.1:{redis_cluster.ports[0]}/0"
        con = Client.from_url(url, reply_timeout=20)
        try:
            assert [con.tensorget(key).tolist() for key in keys] == [[n] for n in range(12)]
            assert con.tensorset("ai:big2", big) == "OK"
            assert con.tensorget("ai:big2").tolist() == big.tolist()
        finally:
            con.close()
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "requester")


# Every path that writes, under the documented rule ------------------------------------------

ADD_SCRIPT = """
def add(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[1]
"""
BIG = np.arange(150_000, dtype=np.float32)  # 600 KB: its output is staged, then renamed


@dataclass
class AclDeployment:
    """A Redis (single or the 3+3 cluster) where ``aiworker`` has exactly the documented rule."""

    admin: Any  # an aiworker client with every right
    url: str  # the worker user's
    cluster: bool


def cluster_rule_extra(who: str = "worker") -> list[str]:
    """What docs/security.md says ``who`` (worker, requester) needs on a cluster besides its rule."""
    text = (ROOT / "docs" / "security.md").read_text()
    extra = re.search(rf"<!-- acl:{who}-cluster -->\s*```text\n(.+)\n```", text)
    assert extra, f"docs/security.md shows what a cluster {who} needs besides the rule"
    return extra.group(1).split()


@pytest.fixture(params=["single", "cluster"])
def acl_deployment(
    request: pytest.FixtureRequest, acl_redis: tuple[redis.Redis, int]
) -> Iterator[AclDeployment]:
    if request.param == "single":
        _admin, port = acl_redis
        admin = Client(port=port, username="admin", password="adminpw", reply_timeout=20)
        yield AclDeployment(admin, f"redis://aiworker:workerpw@127.0.0.1:{port}/0", False)
        admin.close()
        return
    cluster = request.getfixturevalue("redis_cluster")
    admin = request.getfixturevalue("cluster_client")
    rule = documented_worker_rule("workerpw").split()[2:] + cluster_rule_extra()
    nodes = [cluster.node(port) for port in cluster.ports]
    for node in nodes:
        node.execute_command("ACL", "SETUSER", "aiworker", *rule)
    try:
        url = f"redis://aiworker:workerpw@127.0.0.1:{cluster.ports[1]}/0"
        yield AclDeployment(admin, url, True)
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "aiworker")


def _concurrently(*calls: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result(30) for future in [pool.submit(call) for call in calls]]


def _raw_reply(admin: Any, queue: str, cmd: str, reply: str) -> dict[str, Any]:
    """Queue a redis-cli style entry and wait for its final reply (a forward may come first)."""
    admin.xadd(queue, {"cmd": cmd, "reply": reply})
    while True:
        popped = admin.blpop([reply], 20)
        assert popped is not None, f"no reply to {cmd}"
        answer: dict[str, Any] = json.loads(popped[1])
        if answer["status"] != "forwarded":
            return answer


@pytest.mark.slow
def test_every_path_that_writes_works_under_the_documented_acl(
    acl_deployment: AclDeployment,
) -> None:
    """MODELEXECUTE twice onto the same outputs (serving loops reuse them), a large output, a
    SCRIPTEXECUTE, DAG PERSIST, batched jobs, Client.run and a forward, each twice, then dead
    letters: with the worker's documented least-privilege rule, on one Redis and on a cluster."""
    pytest.importorskip("torch")
    d = acl_deployment
    c = d.admin
    c.modelstore("model:m", "STUB", "CPU", stub_blob("add"))
    c.modelstore(
        "model:b", "STUB", "CPU", stub_blob("add"), batch=4, minbatch=2, minbatchtimeout=2000
    )
    c.modelstore("model:m1", "STUB", "CPU:1", stub_blob("add"))
    c.scriptstore("model:s", "CPU", ADD_SCRIPT, ["add"])
    c.tensorset("ai:a", np.array([1, 2], dtype=np.float32))
    c.tensorset("ai:big", BIG)
    c.tensorset("ai:row", np.array([[1, 2]], dtype=np.float32))
    partitions = 3 if d.cluster else 1
    settings = Settings(
        redis_url=d.url,
        devices=("CPU", "CPU:1"),
        threads_per_queue=3,
        block_ms=100,
        queue_partitions=partitions,
    )
    queue = c.keyspace.queue("CPU")
    io = "INPUTS 2 ai:a ai:a OUTPUTS 1 ai:o"
    row = "INPUTS 2 ai:row ai:row OUTPUTS 1 ai:o"  # one row: two of them make a batch
    w = Worker(settings).start()
    try:
        wait_until(lambda: c.zcard(c.keyspace.workers) > 0, timeout=10)
        for run in range(2):  # the second run replaces every tensor the first one wrote
            assert c.modelexecute("model:m", ["ai:a", "ai:a"], ["ai:o{1}"]) == "OK", run
            assert c.modelexecute("model:m", ["ai:big", "ai:big"], ["ai:o{2}"]) == "OK"
            assert c.scriptexecute("model:s", "add", inputs=["ai:a", "ai:a"], outputs=["ai:o{3}"])
            results = (
                c.dag(load=["ai:a"], persist=["ai:o{4}"])
                .modelexecute("model:m", ["ai:a", "ai:a"], ["ai:o{4}"])
                .execute()
            )
            assert results == ["OK"]
            batched = _concurrently(
                *(
                    lambda n=n: _raw_reply(
                        c, queue, f"AI.MODELEXECUTE model:b {row}{{{n}}}", f"ai:r{{{n}}}"
                    )
                    for n in (5, 6)
                )
            )
            assert [answer["batch"]["requests"] for answer in batched] == [2, 2], batched
            ran = c.run(
                "model:m", {"x": np.ones(2, np.float32), "y": np.ones(2, np.float32)}, ["z"]
            )
            assert ran["z"].tolist() == [2.0, 2.0]
            answer = _raw_reply(c, queue, f"AI.MODELEXECUTE model:m1 {io}{{7}}", "ai:r{7}")
            assert answer["status"] == "ok", answer
        for n in (1, 3, 4, 7):
            assert c.tensorget(f"ai:o{{{n}}}").tolist() == [2.0, 4.0], n
        for n in (5, 6):
            assert c.tensorget(f"ai:o{{{n}}}").tolist() == [[2.0, 4.0]], n
        np.testing.assert_array_equal(c.tensorget("ai:o{2}"), BIG * 2)
    finally:
        w.stop(timeout=10)
    assert not list(c.scan_iter("aiworker:tmp:*")), "no stage key left"

    # Dead letters: an entry a vanished consumer took is reclaimed and dead-lettered.
    c.xadd(queue, {"cmd": f"AI.MODELEXECUTE model:m {io}{{8}}", "reply": "ai:r{8}"})
    c.xreadgroup(CONSUMER_GROUP, "gone:1:CPU:0", {queue: ">"}, count=1)
    w = Worker(settings.replace(visibility_timeout=0.3, max_deliveries=1)).start()
    try:
        popped = c.blpop(["ai:r{8}"], 20)
        assert popped is not None and b"delivered 2 times" in popped[1], popped
    finally:
        w.stop(timeout=10)
    assert c.xlen(c.keyspace.dead_letters("CPU")) == 1 and not c.exists("ai:o{8}")


def test_a_denied_probe_is_never_taken_for_another_type(tmp_path: Path) -> None:
    """A rule without HGET cannot ask an output key whether it holds a tensor: the job is
    refused with NOPERM, never WRONGTYPE, and the tensor is left as it was."""
    port = free_port()
    acl = tmp_path / "users.acl"
    rule = documented_worker_rule("workerpw").replace(" +hget ", " ")
    acl.write_text("user default off\nuser admin on >adminpw ~* &* +@all\n" + rule + "\n")
    args = ["--port", str(port), "--aclfile", str(acl)]
    for admin in _redis(tmp_path, args, port=port, username="admin", password="adminpw"):
        stub_model(admin, "model:m")
        tensor(admin, "ai:a", [1, 2])
        tensor(admin, "ai:o", [7, 7])
        before = admin.hgetall("ai:o")
        url = f"redis://aiworker:workerpw@127.0.0.1:{port}/0"
        w = Worker(Settings(redis_url=url, block_ms=100)).start()
        try:
            reply = _run(admin, "AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:a OUTPUTS 1 ai:o", "ai:r")
        finally:
            w.stop(timeout=10)
        assert reply["error"] == "NOPERM this worker may not write key 'ai:o'", reply
        assert admin.hgetall("ai:o") == before


def test_a_rule_without_time_keeps_the_worker_serving(
    acl_redis: tuple[redis.Redis, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A user made by the rule before TIME was in it: the worker counts TIMEOUTs by its own host's
    clock and says so once; its heartbeat (it asked TIME with each beat) and jobs go on."""
    from aiworker import Settings, Worker

    admin, port = acl_redis
    admin.execute_command("ACL", "SETUSER", "aiworker", "-time")
    stub_model(admin, "model:m")
    tensor(admin, "ai:a", [1, 2])
    tensor(admin, "ai:b", [10, 20])
    url = f"redis://aiworker:workerpw@127.0.0.1:{port}/0"
    worker = Worker(Settings(redis_url=url)).start()
    try:
        reply = _run(
            admin, "AI.MODELEXECUTE model:m INPUTS 2 ai:a ai:b OUTPUTS 1 ai:c TIMEOUT 5000",
            "aiworker:reply:t",
        )  # fmt: skip
        assert reply["status"] == "ok", reply
        assert worker.clock.denied and worker.clock.offset_s == 0.0
        worker.heartbeat.publish()  # no error: beats go on
        assert admin.zcard(KEYS.workers) == 1
    finally:
        worker.stop(timeout=10)
    refused = [r for r in caplog.records if "TIME refused" in r.getMessage()]
    assert len(refused) == 1, "said once"


# TLS ----------------------------------------------------------------------------------------


def test_the_worker_user_may_size_models(acl_redis: tuple[redis.Redis, int]) -> None:
    """Sizing a model before fetching it (HSTRLEN in a script, under WATCH) works with the
    documented rule, refusals included (they UNWATCH)."""
    from aiworker.protocol.errors import LimitExceeded
    from aiworker.storage import model as model_store

    admin, port = acl_redis
    stub_model(admin, "model:m", op="identity")
    worker = redis.Redis(port=port, username="aiworker", password="workerpw")
    meta, blob = model_store.read_model(worker, "model:m", max_bytes=1 << 20)
    assert json.loads(blob) == {"op": "identity"} and meta.backend == "STUB"
    with pytest.raises(LimitExceeded):
        model_store.read_model(worker, "model:m", max_bytes=4)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        "-new",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=aiworker test CA",
        cwd=d,
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-new",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Path) -> Iterator[tuple[redis.Redis, int]]:
    port = free_port()
    args = [
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "yes",
    ]  # fmt: skip
    client = {
        "port": port,
        "ssl": True,
        "ssl_ca_certs": str(certs / "ca.crt"),
        "ssl_certfile": str(certs / "client.crt"),
        "ssl_keyfile": str(certs / "client.key"),
    }
    try:
        yield from ((r, port) for r in _redis(tmp_path, args, **client))
    except AssertionError as exc:
        if "redis-server exited" in str(exc):
            pytest.skip("this redis-server was built without TLS (BUILD_TLS=yes)")
        raise


def test_tls_with_client_certificates(tls_redis: tuple[redis.Redis, int], certs: Path) -> None:
    admin, port = tls_redis
    stub_model(admin, "m")
    tensor(admin, "a", [1])
    tensor(admin, "b", [2])
    url = f"rediss://127.0.0.1:{port}/0"
    files = {
        "tls_ca_cert": str(certs / "ca.crt"),
        "tls_cert": str(certs / "client.crt"),
        "tls_key": str(certs / "client.key"),
    }
    settings = Settings(redis_url=url, block_ms=100, **files)
    w = Worker(settings).start()
    try:
        client = Client.from_settings(settings, reply_timeout=10)
        assert client.modelexecute("m", ["a", "b"], ["c"]) == "OK"
        assert client.tensorget("c").tolist() == [3.0]
        big = np.arange(150_000, dtype=np.float32)  # 600 KB: fetched plainly, received in place
        client.tensorset("x", big)
        for _ in range(2):  # the first read learns that x is large, the second knows
            assert client.modelexecute("m", ["x", "x"], ["z"]) == "OK"
            np.testing.assert_array_equal(client.tensorget("z"), big * 2)
        runner = CliRunner()
        flags = [
            "--tls-ca-cert",
            files["tls_ca_cert"],
            "--tls-cert",
            files["tls_cert"],
            "--tls-key",
            files["tls_key"],
        ]
        result = runner.invoke(main, ["check", "--redis-url", url, *flags])
        assert result.exit_code == 0, result.output
        env = {f"AIWORKER_{k.upper()}": v for k, v in files.items()}
        assert runner.invoke(main, ["check", "--redis-url", url], env=env).exit_code == 0
        no_cert = runner.invoke(
            main, ["check", "--redis-url", url, "--tls-ca-cert", files["tls_ca_cert"]]
        )
        assert no_cert.exit_code == 1, "the server requires a client certificate"
        plain = runner.invoke(main, ["check", "--redis-url", f"redis://127.0.0.1:{port}/0"])
        assert plain.exit_code == 1
    finally:
        w.stop(timeout=5)


def test_tls_files_need_a_rediss_url() -> None:
    with pytest.raises(ConfigError, match="rediss://"):
        tls_kwargs(Settings(redis_url="redis://h:1/0", tls_ca_cert="/ca.crt"))
    assert tls_kwargs(Settings(redis_url="rediss://h:1/0", tls_ca_cert="/ca.crt")) == {
        "ssl_ca_certs": "/ca.crt"
    }
    assert tls_kwargs(Settings()) == {}


def test_settings_never_print_passwords() -> None:
    settings = Settings(redis_url="redis://aiworker:hunter2@h:1/0")
    assert "hunter2" not in repr(settings) and "***" in repr(settings)


@pytest.mark.parametrize("new_loop", event_loops())
def test_gateway_over_tls_both_ways(
    tls_redis: tuple[redis.Redis, int], certs: Path, new_loop: Any
) -> None:
    """A gateway listening with TLS in front of a Redis reached over TLS: large tensors are
    received in place through TLS transports too, on either event loop."""
    _admin, port = tls_redis
    settings = Settings(
        redis_url=f"rediss://127.0.0.1:{port}/0",
        tls_ca_cert=str(certs / "ca.crt"),
        tls_cert=str(certs / "client.crt"),
        tls_key=str(certs / "client.key"),
    )
    listen = {"tls_cert": str(certs / "server.crt"), "tls_key": str(certs / "server.key")}
    with running_gateway(settings, new_loop, **listen) as gw:
        host, gw_port = gw.address()
        con = redis.Redis(
            host=host, port=gw_port, ssl=True, ssl_ca_certs=str(certs / "ca.crt"), protocol=2
        )
        client = Client.from_settings(settings, reply_timeout=10)
        large_tensors_in_a_pipeline(con, client)
        con.close()
        client.close()


@contextlib.contextmanager
def _through_a_gateway(settings: Settings) -> Iterator[tuple[Client, redis.Redis]]:
    """A client of ``settings`` that stored tensor ``a``, and a connection to a gateway of the
    same settings that read it back (the gateway's own connections to Redis work)."""
    client = Client.from_settings(settings, reply_timeout=10)
    client.tensorset("a", np.arange(3, dtype=np.float32))
    with running_gateway(settings) as gw:
        host, gw_port = gw.address()
        con = redis.Redis(host=host, port=gw_port, protocol=2)
        assert con.execute_command("AI.TENSORGET", "a", "VALUES") == [b"0", b"1", b"2"]
        yield client, con
        con.close()
    client.close()


def test_gateway_honours_the_urls_tls_options(
    tls_redis: tuple[redis.Redis, int], certs: Path
) -> None:
    """``rediss://...?ssl_cert_reqs=none`` (a managed Redis' self-signed certificate) is honoured
    by redis-py, so by workers and clients: the gateway's own connections to Redis verified the
    certificate anyway, and every AI.* command failed through it."""
    _admin, port = tls_redis
    settings = Settings(
        redis_url=f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none",
        tls_cert=str(certs / "client.crt"),
        tls_key=str(certs / "client.key"),
    )  # no CA: the server's certificate cannot be verified, and is not to be
    with _through_a_gateway(settings) as (client, con):
        assert con.execute_command("AI.TENSORSET", "b", "INT8", 1, "VALUES", 7) == b"OK"
        assert client.tensorget("b").tolist() == [7]
    wrong = dataclasses.replace(settings, redis_url=f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=no")
    with pytest.raises(ConfigError, match="ssl_cert_reqs='no'"), running_gateway(wrong):
        pass


@pytest.mark.parametrize("option", ["ssl_ca_path", "ssl_password"])
def test_gateway_honours_the_urls_other_tls_options(
    tls_redis: tuple[redis.Redis, int], certs: Path, tmp_path: Path, option: str
) -> None:
    """The URL's ``ssl_ca_path`` (a directory of CA certificates) and ``ssl_password`` (of an
    encrypted client key), which redis-py honours for workers and clients, are honoured by the
    gateway's own connections too: it verified against the system's CAs only, or asked for the
    key's pass phrase on the terminal."""
    _admin, port = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    files = {"tls_ca_cert": str(certs / "ca.crt"), "tls_cert": str(certs / "client.crt")}
    files["tls_key"] = str(certs / "client.key")
    if option == "ssl_ca_path":
        cas = tmp_path / "cas"
        cas.mkdir()
        shutil.copy(certs / "ca.crt", cas / "ca.crt")
        _openssl("rehash", str(cas), cwd=tmp_path)
        url += f"?ssl_ca_path={cas}"
        del files["tls_ca_cert"]
    else:
        _openssl("ec", "-in", str(certs / "client.key"), "-out", "enc.key", "-aes256",
                 "-passout", "pass:secret", cwd=tmp_path)  # fmt: skip
        url += "?ssl_password=secret"
        files["tls_key"] = str(tmp_path / "enc.key")
    with _through_a_gateway(Settings(redis_url=url, **files)):
        pass


@pytest.mark.parametrize("given", [{"tls_key": "server.key"}, {"tls_ca_cert": "ca.crt"}])
def test_listening_tls_files_without_a_certificate_are_refused(
    settings: Settings, certs: Path, given: dict[str, str]
) -> None:
    """A key or a CA for the gateway's listening TLS without its certificate started a gateway
    listening in plain text, asking no client for a certificate."""
    files = {option: str(certs / name) for option, name in given.items()}
    with pytest.raises(ConfigError, match="--tls-listen-cert"), running_gateway(settings, **files):
        pass
