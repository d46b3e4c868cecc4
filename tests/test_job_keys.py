"""What a job may write and read: outputs only over tensors, replies only onto lists, statistics of
their own, and size limits on every path (scripts, DAGs, batches), checked before allocating."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest import stub_blob, wait_until
from faults import QUEUE, WorkerProcess, content, stub_model, tensor, wait_for_workers

from aiworker import Client, Settings, Worker
from aiworker.embedded import RedisServer
from aiworker.protocol.errors import WRONGTYPE
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import DagExecute, ModelExecute, ScriptExecute, TensorGet, TensorSet

KEYS = Keys()
SCRIPT = """
def twice(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * 2

def big(tensors: List[Tensor], keys: List[str], args: List[str]):
    return torch.zeros(1000)
"""


def run(client: Client, cmd: str | bytes, reply: str = "r", **fields: Any) -> dict[str, Any]:
    client.xadd(QUEUE, {"cmd": cmd, "reply": reply, **fields})
    popped = client.blpop([reply], 15)
    assert popped is not None, "answered"
    return json.loads(popped[1])  # type: ignore[no-any-return]


@pytest.fixture
def ready(client: Client, worker: Worker) -> Client:
    stub_model(client, "m", op="identity")
    tensor(client, "a", [1, 2])
    return client


# 1. outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model", "list", "string", "script", "hash", "hash_with_kind"])
def test_an_output_over_anything_but_a_tensor_is_wrongtype(ready: Client, kind: str) -> None:
    client = ready
    if kind == "model":
        stub_model(client, "target", op="identity")
    elif kind == "list":
        client.rpush("target", "someone else's")
    elif kind == "string":
        client.set("target", "someone else's")
    elif kind == "hash":  # another application's hash: no kind field at all
        client.hset("target", mapping={"name": "someone else's"})
    elif kind == "hash_with_kind":  # one whose own 'kind' is not ours
        client.hset("target", mapping={"kind": "customer", "name": "someone else's"})
    else:
        pytest.importorskip("torch")
        client.scriptstore("target", "CPU", SCRIPT, "twice")
    before = content(client, "target")
    reply = run(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 target")
    assert reply == {**reply, "status": "error", "error": WRONGTYPE}
    assert content(client, "target") == before, "nothing written"
    assert client.infoget("m")["errors"] == 1
    if kind == "model":  # still a model that runs
        assert run(client, "AI.MODELEXECUTE target INPUTS 1 a OUTPUTS 1 ok", "r2")["status"] == "ok"


def test_an_output_may_replace_a_tensor(ready: Client) -> None:
    tensor(ready, "t", [9, 9, 9])
    assert run(ready, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 t")["status"] == "ok"
    assert ready.tensorget("t").tolist() == [1.0, 2.0]


def test_the_job_queue_is_no_output(ready: Client) -> None:
    """``OUTPUTS 1 aiworker:queue:CPU`` once replaced the queue itself: its group vanished, a
    pending job was never answered, and every later XADD failed."""
    client = ready
    reply = run(client, f"AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 {QUEUE}")
    assert reply["status"] == "error" and "aiworker's own keys" in reply["error"], reply
    assert client.type(QUEUE) == b"stream" and client.xinfo_groups(QUEUE)
    for own in (KEYS.config, KEYS.models, KEYS.stats("m"), KEYS.reply("x")):
        reply = run(client, f"AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 {own}", "r2")
        assert reply["status"] == "error" and "aiworker's own keys" in reply["error"]
    assert run(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 fine", "r3")["status"] == "ok"


def test_script_dag_and_batch_outputs_follow_the_same_rule(client: Client, worker: Worker) -> None:
    pytest.importorskip("torch")
    stub_model(client, "m", op="identity")
    stub_model(client, "batched", batch=(4, 0, 0), op="identity")
    tensor(client, "a", [1, 2])
    client.scriptstore("s", "CPU", SCRIPT, ["twice", "big"])
    client.rpush("theirs", "x")
    cases = [
        "AI.SCRIPTEXECUTE s twice INPUTS 1 a OUTPUTS 1 theirs",
        "AI.DAGEXECUTE LOAD 1 a PERSIST 1 theirs |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 theirs",
        "AI.MODELEXECUTE batched INPUTS 1 a OUTPUTS 1 theirs",
    ]
    for n, cmd in enumerate(cases):
        reply = run(client, cmd, f"r{n}")
        assert reply["status"] == "error" and reply["error"] == WRONGTYPE, (cmd, reply)
    assert client.lrange("theirs", 0, -1) == [b"x"]


def test_a_persist_key_is_checked_again_when_written(client: Client, worker: Worker) -> None:
    """A DAG checks its PERSIST keys when it starts and writes them when it ends: a key that
    changes type in between is still refused, in the same atomic step that would write it."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("identity", sleep_ms=500))
    tensor(client, "a", [1, 2])
    client.xadd(
        QUEUE,
        {
            "cmd": "AI.DAGEXECUTE LOAD 1 a PERSIST 1 p |> AI.MODELEXECUTE slow INPUTS 1 a OUTPUTS 1 p",
            "reply": "r",
        },
    )
    time.sleep(0.25)  # the DAG runs now
    client.rpush("p", "arrived meanwhile")
    popped = client.blpop(["r"], 10)
    assert popped is not None and json.loads(popped[1])["error"] == WRONGTYPE
    assert client.lrange("p", 0, -1) == [b"arrived meanwhile"]


# 2. reply keys ---------------------------------------------------------------------------


def test_a_reply_onto_an_existing_list_sets_no_expiry(ready: Client) -> None:
    ready.rpush("inbox", "theirs")
    ready.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 o", "reply": "inbox"})
    wait_until(lambda: ready.llen("inbox") == 2)
    assert ready.lindex("inbox", 0) == b"theirs" and ready.ttl("inbox") == -1
    # appended (RPUSH): BLPOP reads replies in the order they came
    assert json.loads(ready.lindex("inbox", 1))["status"] == "ok"  # type: ignore[arg-type]


def test_a_reply_list_the_completion_creates_expires(ready: Client, worker: Worker) -> None:
    ready.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 o", "reply": "fresh"})
    wait_until(lambda: ready.exists("fresh"))
    assert 0 < ready.ttl("fresh") <= worker.settings.reply_ttl


@pytest.mark.parametrize("kind", ["string", "hash", "own"])
def test_a_reply_key_that_is_no_list_gets_nothing(
    ready: Client, worker: Worker, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    key = {"string": "s", "hash": "h", "own": KEYS.models}[kind]
    if kind == "string":
        ready.set(key, "theirs")
    elif kind == "hash":
        ready.hset(key, "f", "theirs")
    else:
        ready.sadd(key, "m")
    before = content(ready, key)
    ready.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 o", "reply": key})
    wait_until(lambda: ready.exists("o"), timeout=10)  # the job ran and completed
    wait_until(lambda: ready.xlen(QUEUE) == 0)
    assert content(ready, key) == before and ready.ttl(key) == -1
    assert worker.completer.jobs_done == 1
    if kind != "own":  # an own key is not even taken as a reply key: no reply to drop
        text = worker.metrics.render().decode()
        assert 'aiworker_replies_dropped_total{device="CPU"} 1.0' in text


# 3. statistics keys ------------------------------------------------------------------------


def test_every_model_has_statistics_of_its_own(ready: Client) -> None:
    for key in ("x", "{x}y", "{x}z"):
        stub_model(ready, key, op="identity")
    for n, (key, runs) in enumerate((("x", 1), ("{x}y", 2), ("{x}z", 3))):
        for m in range(runs):
            run(ready, f"AI.MODELEXECUTE {key} INPUTS 1 a OUTPUTS 1 o", f"r{n}{m}")
    assert [ready.infoget(k)["calls"] for k in ("x", "{x}y", "{x}z")] == [1, 2, 3]
    assert len({KEYS.stats(k) for k in ("x", "{x}y", "{x}z", "{x}")}) == 4


@pytest.mark.parametrize("gone", ["deleted", "replaced"])
def test_a_model_gone_while_its_job_runs_leaves_no_statistics(ready: Client, gone: str) -> None:
    """MODELDEL deletes a model's statistics; a job that was running it still completes, but
    counting it would make the statistics hash again, for a model nobody will delete."""
    stub_model(ready, "slow", op="identity", sleep_ms=500)
    answered: list[dict[str, Any]] = []
    job = threading.Thread(
        target=lambda: answered.append(run(ready, "AI.MODELEXECUTE slow INPUTS 1 a OUTPUTS 1 o"))
    )
    job.start()
    wait_until(lambda: ready.xpending(QUEUE, "aiworker")["pending"] == 1)
    time.sleep(0.25)  # read, and running its 500 ms
    if gone == "deleted":
        assert ready.modeldel("slow") == "OK"
    else:  # the key holds a tensor now
        ready.delete("slow")
        tensor(ready, "slow", [1])
    job.join(15)
    assert answered and answered[0]["status"] == "ok"
    assert not ready.exists(KEYS.stats("slow"))
    assert ready.tensorget("o").tolist() == [1, 2]


# 4. limits on every path -----------------------------------------------------------------


@pytest.fixture
def limited(client: Client, settings: Settings) -> Any:
    pytest.importorskip("torch")
    stub_model(client, "m", op="identity")
    stub_model(client, "batched", batch=(4, 0, 0), op="identity")
    client.scriptstore("s", "CPU", SCRIPT, ["twice", "big"])
    client.tensorset("small", np.ones(4, np.float32))
    client.tensorset("large", np.ones(100, np.float32))  # 400 bytes > 256
    w = Worker(settings.replace(max_tensor_bytes=256)).start()
    yield w
    w.stop(timeout=5)


@pytest.mark.parametrize(
    "cmd",
    [
        "AI.SCRIPTEXECUTE s twice INPUTS 1 large OUTPUTS 1 o",
        "AI.DAGEXECUTE LOAD 1 large |> AI.TENSORGET large META",
        "AI.DAGEXECUTE ROUTING m |> AI.TENSORSET z FLOAT 5000 10000 |> AI.TENSORGET z META",
        "AI.SCRIPTEXECUTE s big INPUTS 1 small OUTPUTS 1 o",
        "AI.MODELEXECUTE batched INPUTS 1 large OUTPUTS 1 o",
        "AI.DAGEXECUTE LOAD 1 small |> AI.SCRIPTEXECUTE s big INPUTS 1 small OUTPUTS 1 o",
    ],
)
def test_max_tensor_bytes_holds_on_every_path(client: Client, limited: Worker, cmd: str) -> None:
    reply = run(client, cmd)
    assert reply["status"] == "error" and "max_tensor_bytes (256)" in reply["error"], reply
    assert not client.exists("o")


# 5. repeated names ----------------------------------------------------------------------


def test_one_tensor_named_300_times_is_read_once_and_capped(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    stub_model(client, "m", op="identity")
    client.tensorset("mb", np.zeros(1 << 18, np.float32))  # 1 MiB
    proc = WorkerProcess(redis_server.url, tmp_path / "w.log", max_job_bytes=64 << 20)
    try:
        wait_for_workers(client, [proc])
        assert run(client, "AI.MODELEXECUTE m INPUTS 1 mb OUTPUTS 1 o", "warm")["status"] == "ok"
        status = Path(f"/proc/{proc.proc.pid}/status")
        before = _kb(status.read_text(), "VmRSS")
        reply = run(client, "AI.MODELEXECUTE m INPUTS 300 " + "mb " * 300 + "OUTPUTS 1 o")
        assert reply["status"] == "error" and "max_job_bytes" in reply["error"], reply
        grown_mb = (_kb(status.read_text(), "VmHWM") - before) / 1024
        assert grown_mb < 64, f"peak grew {grown_mb:.0f} MiB for a 640-byte entry"
    finally:
        proc.stop()


def _kb(status: str, field: str) -> int:
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])


# 10. structured entries -------------------------------------------------------------------


def test_structured_dag_entries_meet_the_parsers_rules(ready: Client) -> None:
    client = ready
    readonly_persist = DagExecute(
        (ModelExecute("m", ("a",), ("b",)),), load=("a",), persist=("b",), readonly=True
    )
    unknown_input = DagExecute(
        (ModelExecute("m", ("nowhere",), ("b",)), TensorGet("b")), load=("a",)
    )
    readonly_script_keys = DagExecute(  # its script could write through the keys it declares
        (ScriptExecute("s", "f", keys=("k",), inputs=("a",), outputs=("b",)),),
        load=("a",),
        readonly=True,
    )
    cases = [
        (readonly_persist, "PERSIST cannot be specified in a read-only DAG"),
        (unknown_input, "INPUT key cannot be found in DAG"),
        (readonly_script_keys, "AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG"),
    ]
    from aiworker.protocol.entries import encode_entry

    for n, (request, message) in enumerate(cases):
        client.xadd(QUEUE, encode_entry(request, f"d{n}"))  # type: ignore[arg-type]
        popped = client.blpop([f"d{n}"], 10)
        assert popped is not None
        assert json.loads(popped[1])["error"] == message
    assert not client.exists("b"), "nothing persisted"
    raw = msgpack.packb({"op": "DAGEXECUTE", "ops": [{"op": "TENSORSET", "key": "t",
                         "dtype": "FLOAT", "shape": [1], "blob": 5}], "routing": "m"})  # fmt: skip
    client.xadd(QUEUE, {"job": raw, "reply": "d9"})
    popped = client.blpop(["d9"], 10)
    assert popped is not None and "malformed" in json.loads(popped[1])["error"]
    ok = DagExecute((TensorSet("t", "FLOAT", (2,), b"\0" * 8), TensorGet("t")), routing="m")
    assert client.submit_reply("CPU", ok).status == "ok"


# leases ---------------------------------------------------------------------------------


def test_an_entry_is_leased_from_the_moment_it_is_read(client: Client, settings: Settings) -> None:
    """Entries are registered for lease renewal inside the read itself, before their inputs are
    read, so a slow input read cannot let a lease lapse."""
    from aiworker.worker.consume import Consumer

    w = Worker(settings)  # not started: drive one consumer by hand
    try:
        from aiworker.worker.consume import ensure_group

        ensure_group(client, QUEUE)
        entry_id = client.xadd(QUEUE, {"cmd": "x"}).decode()  # type: ignore[union-attr]
        consumer = Consumer("c1", [QUEUE], w.held, w.metrics, threading.Event())
        [(read_id, _fields)] = consumer.read(w.wires.get(), 1, None, QUEUE)
        assert read_id == entry_id and (QUEUE, entry_id) in w.held
    finally:
        w.wires.close()
