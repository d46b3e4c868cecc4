"""DAGs (AI.DAGEXECUTE): from the client's builder and from redis-cli, results and errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import stub_blob, torch_blob

import aiworker.asyncio
from aiworker import Client, JobFailed, JobTimedOut, Settings, Worker, WrongTypeError
from aiworker.embedded import cli_program
from aiworker.protocol.errors import AIError
from aiworker.protocol.replies import INLINE_LIMIT

SCRIPT = """
def pre(tensors: List[Tensor], keys: List[str], args: List[str]):
    x = tensors[0]
    return x * 2, x + float(args[0])

def legacy(a, b):
    return a - b
"""


def store_script(client: Client, key: str = "s") -> None:
    """The script through deprecated AI.SCRIPTSET: no entry points, so ``legacy`` (positional
    tensors, as AI.SCRIPTRUN called it) is callable beside ``pre``."""
    with pytest.deprecated_call():
        client.scriptset(key, "CPU", SCRIPT)


@pytest.fixture
def pipeline(client: Client, worker: Worker) -> Client:
    """x = [1, 2]; script ``s`` (pre, legacy); TorchScript model ``m`` adding its inputs."""
    pytest.importorskip("torch")
    client.tensorset("x", np.array([1, 2], dtype=np.float32))
    store_script(client)
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    return client


def test_load_script_model_persist_and_tensorget_from_the_client(pipeline: Client) -> None:
    c = pipeline
    results = (
        c.dag(load=["x"], persist=["sum"])
        .scriptexecute("s", "pre", inputs=["x"], args=["10"], outputs=["double", "shifted"])
        .modelexecute("m", ["double", "shifted"], ["sum"])
        .tensorget("shifted")
        .tensorget("sum", as_numpy=False)
        .execute()
    )
    assert results[:2] == ["OK", "OK"]
    np.testing.assert_array_equal(results[2], [11, 12])
    assert results[3] == {"dtype": "FLOAT", "shape": [2], "values": [13.0, 16.0]}
    np.testing.assert_array_equal(c.tensorget("sum"), [13, 16])
    assert not c.exists("double") and not c.exists("shifted")  # only PERSIST keys
    assert c.infoget("m")["calls"] == 1 and c.infoget("s")["calls"] == 1


def redis_cli(port: int, *args: str) -> str:
    cli = cli_program()
    if cli is None:
        pytest.skip("redis-cli not installed")
    done = subprocess.run(
        [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def test_the_same_dag_from_redis_cli(pipeline: Client, redis_server: Any) -> None:
    command = (
        "AI.DAGEXECUTE LOAD 1 x PERSIST 1 sum "
        "|> AI.SCRIPTEXECUTE s pre INPUTS 1 x ARGS 1 10 OUTPUTS 2 double shifted "
        "|> AI.MODELEXECUTE m INPUTS 2 double shifted OUTPUTS 1 sum "
        "|> AI.TENSORGET shifted VALUES"
    )
    port = redis_server.port
    redis_cli(port, "XADD", "aiworker:queue:CPU", "*", "cmd", command, "reply", "r1")
    popped = redis_cli(port, "--raw", "BLPOP", "r1", "20").splitlines()
    reply = json.loads(popped[1])
    assert reply["status"] == "ok"
    assert reply["results"] == [
        "OK",
        "OK",
        {"dtype": "FLOAT", "shape": [2], "format": ["VALUES"], "values": [11.0, 12.0]},
    ]
    assert redis_cli(port, "--raw", "HGET", "sum", "shape") == "2"
    np.testing.assert_array_equal(pipeline.tensorget("sum"), [13, 16])


def test_op_error_answers_the_rest_na_and_persists_nothing(pipeline: Client) -> None:
    c = pipeline
    c.modelstore("bad", "STUB", "CPU", stub_blob("fail", message="boom"))
    results = (
        c.dag(load=["x"], persist=["y"])
        .tensorset("t", [1, 2], dtype="float")
        .modelexecute("bad", ["x"], ["y"])
        .tensorget("y")
        .tensorset("u", [3], dtype="float")
        .execute()
    )
    assert results[0] == "OK"
    assert isinstance(results[1], JobFailed) and str(results[1]) == "boom"
    assert results[2:] == ["NA", "NA"]
    assert not c.exists("y")
    assert c.infoget("bad")["errors"] == 1


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda c: c.dag(load=["nope"]).tensorget("nope"),
            "tensor key is empty or in a different shard",
        ),
        (
            lambda c: c.dag(load=["x"]).modelexecute("nomodel", ["x"], ["y"]),
            "model key is empty",
        ),
        (
            lambda c: c.dag(load=["x"]).scriptexecute(
                "noscript", "pre", inputs=["x"], outputs=["y"]
            ),
            "script key is empty",
        ),
        (
            lambda c: c.dag(load=["x"]).scriptexecute("s", "missing", inputs=["x"], outputs=["y"]),
            "Function does not exist: missing",
        ),
    ],
    ids=["load-missing", "model-missing", "script-missing", "function-missing"],
)
def test_dag_errors(pipeline: Client, build: Any, message: str) -> None:
    with pytest.raises(AIError) as info:
        results = build(pipeline).execute()
        for result in results:  # per-op errors come back in the list
            if isinstance(result, Exception):
                raise result
    assert str(info.value) == message


def test_wrong_types(pipeline: Client) -> None:
    pipeline.set("str", "v")
    with pytest.raises(WrongTypeError):
        pipeline.dag(load=["str"]).tensorget("str").execute()
    with pytest.raises(WrongTypeError):  # PERSIST would overwrite a model
        pipeline.dag(persist=["m"]).tensorset("m", [1], dtype="float").execute()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda c: c.dag(load="x", persist="x"), "DAG is empty"),
        (lambda c: c.dag(load="x").tensorget("y"), "INPUT key cannot be found in DAG"),
        (
            lambda c: c.dag(load="x", persist="z").tensorget("x"),
            "PERSIST key cannot be found in DAG",
        ),
    ],
    ids=["empty", "input", "persist"],
)
def test_builder_errors_are_raised_before_sending(client: Client, build: Any, message: str) -> None:
    with pytest.raises(AIError) as info:
        build(client).execute()
    assert str(info.value) == message
    assert not client.exists(client.keyspace.queue("CPU"))


def test_redisai_py_checks_raise_runtime_errors(client: Client) -> None:
    with pytest.raises(RuntimeError, match=r"^READONLY requests cannot write \(duh!\)"):
        client.dag(persist="z", readonly=True)
    with pytest.raises(RuntimeError, match=r"^AI\.SCRIPTEXECUTE cannot be used in readonly mode$"):
        client.dag(load="x", readonly=True).scriptexecute("s", "pre", inputs="x", outputs="y")
    assert not client.exists(client.keyspace.queue("CPU"))


def test_readonly_dag_with_routing(pipeline: Client) -> None:
    c_blob = np.array([3, 4], np.float32).tobytes()
    results = (
        pipeline.dag(routing="x", readonly=True)
        .tensorset("a", np.array([1, 1], np.float32))
        .tensorset("b", np.array([2, 3], np.float32))
        .modelexecute("m", ["a", "b"], ["c"])
        .tensorget("c", meta_only=True)
        .execute()
    )
    # redisai-py's DAG fetched META BLOB for meta_only and kept the blob in the dict
    assert results == ["OK", "OK", "OK", {"dtype": "FLOAT", "shape": [2], "blob": c_blob}]
    assert not pipeline.exists("c")


TENSORGET_OPTIONS: list[dict[str, bool]] = [
    {},
    {"as_numpy": False},
    {"as_numpy_mutable": True},
    {"as_numpy_mutable": True, "meta_only": True},
]


@pytest.mark.parametrize("on_asyncio", [False, True], ids=["blocking", "asyncio"])
def test_tensorget_options_give_what_the_clients_give(
    client: Client, worker: Worker, redis_server: Any, on_asyncio: bool
) -> None:
    """``as_numpy``, ``as_numpy_mutable`` (a writable array: redisai-py asked for META alone)
    and ``meta_only`` with it as ``Client.tensorget`` (alone, it keeps the data: see
    ``test_readonly_dag_with_routing``)."""
    client.tensorset("x", np.array([1, 2], dtype=np.float32))

    def build(c: Any) -> Any:
        dag = c.dag(load="x")
        for options in TENSORGET_OPTIONS:
            dag = dag.tensorget("x", **options)
        return dag

    async def on_loop() -> list[Any]:
        con = aiworker.asyncio.Client.from_url(redis_server.url, reply_timeout=30)
        try:
            return list(await build(con).execute())
        finally:
            await con.aclose()

    results = asyncio.run(on_loop()) if on_asyncio else build(client).execute()
    for options, result in zip(TENSORGET_OPTIONS, results, strict=True):
        expected = client.tensorget("x", **options)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(result, expected)
            assert result.flags.writeable == expected.flags.writeable, options
        else:
            assert result == expected, options


def test_later_tensorset_does_not_disturb_earlier_reader(pipeline: Client) -> None:
    results = (
        pipeline.dag(load="x")
        .tensorset("x", np.array([5, 5], np.float32))  # shadows the LOADed x from here on
        .tensorget("x")
        .execute()
    )
    np.testing.assert_array_equal(results[1], [5, 5])


def test_legacy_script_and_deprecated_dagrun(pipeline: Client) -> None:
    with pytest.deprecated_call():
        dag = pipeline.dagrun(load=["x"])
    with pytest.deprecated_call():
        results = (
            dag.tensorset("one", np.array([1, 1], np.float32))
            .scriptrun("s", "legacy", inputs=["x", "one"], outputs=["d"])
            .modelrun("m", ["d", "d"], ["e"])
            .tensorget("e")
            .execute()
        )
    assert results[:3] == ["OK", "OK", "OK"]
    np.testing.assert_array_equal(results[3], [0, 2])
    assert dag.command()[0] == "AI.DAGRUN"


def test_large_tensorget_result_travels_through_an_expiring_key(
    client: Client, worker: Worker
) -> None:
    """A JSON reply (redis-cli's) names a key for a large tensor; the Python client's msgpack
    reply carries it inline, writing no key at all."""
    big = np.arange(INLINE_LIMIT // 4 + 10, dtype=np.float32)
    client.tensorset("big", big)
    results = client.dag(load="big").tensorget("big").execute()
    np.testing.assert_array_equal(results[0], big)
    assert not list(client.scan_iter(match=client.keyspace.dag_output("*", "*", 0)))
    client.xadd(
        client.keyspace.queue("CPU"),
        {"cmd": "AI.DAGEXECUTE LOAD 1 big |> AI.TENSORGET big BLOB", "reply": "cli"},
    )
    popped = client.blpop(["cli"], 10)
    assert popped is not None
    [entry] = json.loads(popped[1])["results"]
    stream = client.keyspace.queue("CPU")
    assert entry["key"] == client.keyspace.dag_output(stream, entry["key"].split(":")[-2], 0)
    np.testing.assert_array_equal(client.tensorget(entry["key"]), big)
    assert 0 < client.ttl(entry["key"]) <= Settings().reply_ttl


def test_a_large_result_is_not_overwritten_by_an_entry_of_the_same_id_elsewhere(
    client: Client, settings: Settings
) -> None:
    """A large TENSORGET result's key was named by the entry id alone: anyone could XADD the
    victim's id onto another queue the workers read and overwrite the result its genuine reply
    points to."""
    client.tensorset("mine", np.ones(INLINE_LIMIT // 4 + 10, np.float32))
    client.tensorset("evil", np.full(INLINE_LIMIT // 4 + 10, 666, np.float32))
    w = Worker(settings.replace(devices=("CPU", "CPU:1"))).start()
    try:
        cmd = "AI.DAGEXECUTE LOAD 1 {0} |> AI.TENSORGET {0} BLOB"
        victim = client.xadd(
            client.keyspace.queue("CPU"), {"cmd": cmd.format("mine"), "reply": "v"}
        )
        popped = client.blpop(["v"], 10)
        assert popped is not None
        key = json.loads(popped[1])["results"][0]["key"]
        attack = {"cmd": cmd.format("evil"), "reply": "a"}
        client.xadd(client.keyspace.queue("CPU:1"), attack, id=victim)
        assert client.blpop(["a"], 10) is not None
        assert client.tensorget(key).tolist()[:2] == [1.0, 1.0]
    finally:
        w.stop(timeout=10)


def test_dag_timeout(client: Client, worker: Worker) -> None:
    client.modelstore("slow", "STUB", "CPU", stub_blob("identity", sleep_ms=300))
    client.tensorset("a", np.ones(2, np.float32))
    dag = (
        client.dag(load="a", timeout=100)
        .modelexecute("slow", ["a"], ["b"])
        .modelexecute("slow", ["b"], ["c"])
    )
    with pytest.raises(JobTimedOut):
        dag.execute()


def test_a_dag_runs_one_version_of_each_model(client: Client, settings: Settings) -> None:
    """A model stored again while a DAG runs, and loaded by another job meanwhile: the DAG's
    later op of that model fails rather than run the new version (its first op ran the old
    one), and nothing is persisted (a mixed result was: 2+3=5, then 5*3)."""
    w = Worker(settings.replace(threads_per_queue=2)).start()
    try:
        client.modelstore("m", "STUB", "CPU", stub_blob("add"))
        client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
        client.tensorset("a", np.full(2, 2, np.float32))
        client.tensorset("b", np.full(2, 3, np.float32))
        dag = (
            client.dag(load=["a", "b"], persist=["d"])
            .modelexecute("m", ["a", "b"], ["c"])
            .modelexecute("slow", ["c", "b"], ["e"])
            .modelexecute("m", ["c", "b"], ["d"])
        )
        outcome: list[Any] = []
        thread = threading.Thread(target=lambda: outcome.append(_result(dag.execute)))
        thread.start()
        time.sleep(0.6)  # the first op ran, the slow one runs
        client.modelstore("m", "STUB", "CPU", stub_blob("mul"))
        two = np.full(2, 2, np.float32)
        client.tensorset("x", two)
        client.modelexecute("m", ["x", "x"], ["y"])  # the new version, loaded now
        thread.join(30)
        (results,) = outcome  # redisai-py's shape: each op's reply, a failed op's error
        assert results[:2] == ["OK", "OK"] and isinstance(results[2], JobFailed)
        assert "'m' was stored again while the job ran" in str(results[2])
        assert client.exists("d") == 0
        assert client.tensorget("y").tolist() == [4, 4]
    finally:
        w.stop(timeout=10)


def _result(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc


@pytest.fixture
def two_device_worker(client: Client, settings: Settings) -> Iterator[Worker]:
    w = Worker(settings.replace(devices=("CPU", "CPU:1"), threads_per_queue=1)).start()
    yield w
    w.stop(timeout=10)


def test_ops_on_different_devices_run_in_parallel(
    client: Client, two_device_worker: Worker
) -> None:
    client.modelstore("m0", "STUB", "CPU", stub_blob("identity", sleep_ms=1000))
    client.modelstore("m1", "STUB", "CPU:1", stub_blob("identity", sleep_ms=1000))
    client.tensorset("a", np.ones(2, np.float32))
    dag = (
        client.dag(load="a", persist=["b", "c"])
        .modelexecute("m0", ["a"], ["b"])
        .modelexecute("m1", ["a"], ["c"])
    )
    started = time.monotonic()
    assert dag.execute() == ["OK", "OK"]
    elapsed = time.monotonic() - started
    assert elapsed < 1.8, f"the two 1 s ops did not overlap ({elapsed:.2f} s)"
    assert client.exists("b", "c") == 2


def test_dag_sent_to_another_device_queue_is_forwarded(
    client: Client, two_device_worker: Worker
) -> None:
    client.modelstore("m1", "STUB", "CPU:1", stub_blob("identity"))
    client.tensorset("a", np.ones(2, np.float32))
    request = client.dag(load="a").modelexecute("m1", ["a"], ["b"]).tensorget("b").request()
    reply = client.submit_reply("CPU", request)
    assert reply.status == "ok" and reply.results is not None and reply.results[0] == "OK"


def test_dag_is_queued_on_its_first_model_or_script_device(client: Client) -> None:
    client.modelstore("m1", "STUB", "cpu:1", stub_blob("identity"))
    dag = client.dag(persist="b").tensorset("a", [1], dtype="float").modelexecute("m1", "a", "b")
    assert client.queue_of(dag.request()) == "CPU:1"
    tensors_only = client.dag(persist="a").tensorset("a", [1], dtype="float")
    assert client.queue_of(tensors_only.request()) == "CPU"
    missing = (
        client.dag(persist="b").tensorset("a", [1], dtype="float").modelexecute("no", "a", "b")
    )
    assert client.queue_of(missing.request()) == "CPU"
