"""TorchScript scripts: store/get/del/scan, SCRIPTEXECUTE through a worker, RedisAI's messages."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from aiworker import AIError, Client, JobFailed, Settings, Worker, WrongTypeError
from aiworker.client import script_ops
from aiworker.parser import parse_command
from aiworker.protocol.entries import encode_entry
from aiworker.storage.plans import Plan

torch = pytest.importorskip("torch")

SCRIPT = """
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    b = tensors[1]
    return a + b

def bar_variadic(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    rest = tensors[1:]
    return a + rest[0]

def scale(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * float(args[0]) + len(keys)

def split(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + 1, tensors[0] * 2

def as_list(tensors: List[Tensor], keys: List[str], args: List[str]):
    return [tensors[0] - 1, tensors[0]]

def helper(x: Tensor):
    return x
"""
ENTRY_POINTS = ["bar", "bar_variadic", "scale", "split", "as_list"]
OLD_SCRIPT = "def bar(a: Tensor, b: Tensor):\n    return a + b\n"
BAD_TYPES = (
    "def bar(tensors: List[Tensor], keys: List[str], args: List[int]):\n    return tensors[0]\n"
)


@pytest.fixture
def stored(client: Client) -> Client:
    client.scriptstore("s", "CPU", SCRIPT, ENTRY_POINTS, tag="v1")
    client.tensorset("a", np.array([[2, 3], [2, 3]], dtype=np.float32))
    client.tensorset("b", np.array([[2, 3], [2, 3]], dtype=np.float32))
    return client


def test_store_get_scan_del(stored: Client) -> None:
    assert stored.scriptget("s") == {
        "device": "CPU",
        "tag": "v1",
        "entry points": [name.encode() for name in ENTRY_POINTS],  # RedisAI's field, as bytes
        "source": SCRIPT,
    }
    assert "source" not in stored.scriptget("s", meta_only=True)
    stored.scriptstore("t", "cpu:1", SCRIPT.encode(), "bar")
    assert sorted(stored.scriptscan()) == [["s", "v1"], ["t", ""]]
    assert stored.scriptget("t")["device"] == "cpu:1"  # kept as given
    assert stored.scriptdel("t") == "OK"
    assert stored.scriptscan() == [["s", "v1"]]
    info = stored.infoget("s")
    assert (info["type"], info["backend"], info["samples"], info["calls"]) == (
        "SCRIPT",
        "TORCH",
        -1,
        0,
    )


def test_missing_and_wrong_type(client: Client) -> None:
    for call in (client.scriptget, client.scriptdel):
        with pytest.raises(AIError, match=r"^script key is empty$"):
            call("nope")
    client.set("plain", "x")
    with pytest.raises(WrongTypeError):
        client.scriptget("plain")
    with pytest.raises(WrongTypeError):
        client.scriptstore("plain", "CPU", SCRIPT, ["bar"])
    client.tensorset("t", [1], dtype="FLOAT")
    with pytest.raises(WrongTypeError):
        client.scriptdel("t")


def test_a_key_written_after_it_was_checked_is_not_overwritten(
    client: Client, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is checked once the script compiled, and again, atomically, as it is written: a
    tensor another client wrote in between is refused, not overwritten."""
    other = Client.from_url(redis_server.url)
    checked = script_ops.writable_plan

    def then_written(key: str, kind: str) -> Plan[None]:
        yield from checked(key, kind)
        other.tensorset(key, [1.0], dtype="FLOAT")

    monkeypatch.setattr(script_ops, "writable_plan", then_written)
    try:
        with pytest.raises(WrongTypeError):
            client.scriptstore("s", "CPU", SCRIPT, ["bar"])
    finally:
        other.close()
    assert client.tensorget("s").tolist() == [1.0]
    assert client.scriptscan() == [] and not client.keys("aiworker:tmp:*")


STORE_ERRORS = [
    ({"entry_points": []}, "Insufficient arguments, missing script entry points"),
    ({"script": ""}, "Function bar does not exist in the given script."),  # "" compiles
    ({"entry_points": ["bar", "bar1"]}, "Function bar1 does not exist in the given script."),
    ({"script": OLD_SCRIPT}, "Wrong number of inputs in function bar. Expected 3 but was 2"),
    (
        {"script": BAD_TYPES},
        "Wrong inputs type in function bar. Expected signature similar to: "
        "def bar(tensors: List[Tensor], keys: List[str], args: List[str])",
    ),
    ({"device": "CPU::1"}, "unsupported device"),
]


@pytest.mark.parametrize(("kwargs", "message"), STORE_ERRORS)
def test_store_validation(client: Client, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"device": "CPU", "script": SCRIPT, "entry_points": ["bar"], **kwargs}
    with pytest.raises(AIError) as info:
        client.scriptstore("s", **args)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert not client.exists("s")


def test_compile_error_passed_through(client: Client) -> None:
    with pytest.raises(AIError, match="undefined value y"):
        client.scriptstore("s", "CPU", "def f(x):\n    return y\n", ["f"])


def test_execute_entry_points(stored: Client, worker: Worker) -> None:
    assert stored.scriptexecute("s", "bar", inputs=["a", "b"], outputs=["c"]) == "OK"
    assert stored.tensorget("c").tolist() == [[4, 6], [4, 6]]
    stored.scriptexecute("s", "bar_variadic", keys=["{1}"], inputs=["a", "b", "b"], outputs=["d"])
    assert stored.tensorget("d").tolist() == [[4, 6], [4, 6]]
    stored.scriptexecute("s", "scale", keys=["k1", "k2"], inputs=["a"], args=["10"], outputs="e")
    assert stored.tensorget("e").tolist() == [[22, 32], [22, 32]]
    info = stored.infoget("s")
    assert (info["calls"], info["errors"], info["samples"]) == (3, 0, -1)
    assert info["duration"] > 0


def test_tuple_and_list_outputs(stored: Client, worker: Worker) -> None:
    stored.scriptexecute("s", "split", inputs=["a"], outputs=["p", "q"])
    assert stored.tensorget("p").tolist() == [[3, 4], [3, 4]]
    assert stored.tensorget("q").tolist() == [[4, 6], [4, 6]]
    stored.scriptexecute("s", "as_list", inputs=["a"], outputs=["p", "q"])
    assert stored.tensorget("p").tolist() == [[1, 2], [1, 2]]
    assert stored.tensorget("q").tolist() == [[2, 3], [2, 3]]
    assert stored.scriptexecute("s", "split", inputs=["a"]) == "OK"  # nothing stored: any result


RUN_ERRORS = [
    ({"function": "helper"}, "Function does not exist: helper"),
    ({"function": "nope"}, "Function does not exist: nope"),
    ({"inputs": ["a"]}, "list index out of range"),
    ({"outputs": ["x", "y"]}, "Function returned unexpected number of outputs - bar"),
    ({"inputs": ["a", "missing"]}, "tensor key is empty or in a different shard"),
]


@pytest.mark.parametrize(("kwargs", "message"), RUN_ERRORS)
def test_execute_errors(
    stored: Client, worker: Worker, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"function": "bar", "inputs": ["a", "b"], "outputs": ["c"], **kwargs}
    with pytest.raises(JobFailed) as info:
        stored.scriptexecute("s", **args)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert not stored.exists("c")
    assert stored.scriptexecute("s", "bar", inputs=["a", "b"], outputs=["c"]) == "OK"


def test_execute_missing_script_and_wrong_types(client: Client, worker: Worker) -> None:
    with pytest.raises(AIError, match=r"^script key is empty$"):
        client.scriptexecute("nope", "bar", inputs=["a"], outputs=["c"])
    client.set("plain", "x")
    with pytest.raises(WrongTypeError):
        client.scriptexecute("plain", "bar", inputs=["a"], outputs=["c"])
    with pytest.raises(
        ValueError, match=r"^Missing required arguments for script execute command$"
    ):
        client.scriptexecute("nope", "bar", outputs=["c"])  # redisai-py's check, before sending
    with pytest.raises(AIError, match="KEYS or INPUTS scope must be provided first"):
        parse_command("AI.SCRIPTEXECUTE nope bar ARGS 1 x OUTPUTS 1 c")  # RedisAI's check


def test_cmd_syntax_from_redis_cli(stored: Client, worker: Worker) -> None:
    """A redis-cli user XADDs RedisAI's command text; the worker runs it like the client's form."""
    cmd = "AI.SCRIPTEXECUTE s bar KEYS 1 {1} INPUTS 2 a b OUTPUTS 1 c"
    assert parse_command(cmd) == parse_command(cmd.split())
    stored.xadd(stored.keyspace.queue("CPU"), {"cmd": cmd, "reply": "r1"})
    _, raw = stored.blpop(["r1"], timeout=30)  # type: ignore[misc]
    assert json.loads(raw)["status"] == "ok"
    assert stored.tensorget("c").tolist() == [[4, 6], [4, 6]]


def test_script_replaced_in_place(stored: Client, worker: Worker) -> None:
    stored.scriptexecute("s", "bar", inputs=["a", "b"], outputs=["c"])
    stored.scriptstore("s", "CPU", SCRIPT.replace("return a + b", "return a * b"), ENTRY_POINTS)
    assert stored.infoget("s")["calls"] == 0  # a store starts fresh statistics, as RedisAI
    stored.scriptexecute("s", "bar", inputs=["a", "b"], outputs=["c"])
    assert stored.tensorget("c").tolist() == [[4, 9], [4, 9]]


def test_wrong_queue_is_forwarded(stored: Client, settings: Settings) -> None:
    """A job that reaches another device's queue is forwarded to the script's."""
    stored.scriptstore("g", "CPU:1", SCRIPT, ["bar"])
    w = Worker(settings.replace(devices=("CPU", "CPU:1"))).start()
    try:
        request = parse_command("AI.SCRIPTEXECUTE g bar INPUTS 2 a b OUTPUTS 1 c")
        assert stored.submit("CPU", request) == "OK"
        assert stored.tensorget("c").tolist() == [[4, 6], [4, 6]]
    finally:
        w.stop(timeout=10)
    assert encode_entry(request, None)  # the compact form carries every field


def test_worker_checks_scripts_stored_without_torch(stored: Client, worker: Worker) -> None:
    """A client without torch stores unchecked; the worker replies with RedisAI's message."""
    from aiworker.storage import script as script_store

    script_store.store_script(stored, stored.keyspace, "old", "CPU", OLD_SCRIPT, ["bar"])
    with pytest.raises(JobFailed, match=r"^Wrong number of inputs in function bar"):
        stored.scriptexecute("old", "bar", inputs=["a", "b"], outputs=["c"])
    assert stored.infoget("old")["errors"] == 1


def test_cli_script_group(client: Client, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from aiworker.cli import main

    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    url = ["--redis-url", redis_server.url]
    runner = CliRunner()
    store = ["script", "store", "s", "CPU", str(path), "-e", "bar", "-e", "split", "--tag", "t1"]
    result = runner.invoke(main, [*store, *url])
    assert (result.exit_code, result.output) == (0, "OK\n")
    result = runner.invoke(main, ["script", "get", "s", "--meta", *url])
    assert json.loads(result.output) == {
        "device": "CPU",
        "tag": "t1",
        "entry_points": ["bar", "split"],
    }
    assert runner.invoke(main, ["script", "list", *url]).output == "s\tt1\n"
    bad = ["script", "store", "b", "CPU", str(path), "-e", "nope", *url]
    result = runner.invoke(main, bad)
    assert result.exit_code == 1
    assert "Function nope does not exist in the given script." in result.output
    assert runner.invoke(main, ["script", "del", "s", *url]).output == "OK\n"
    assert client.scriptscan() == []


def test_script_timeout_and_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Script runs are held to MODEL_EXECUTION_TIMEOUT; a GPU script on a GPU-less host fails."""
    from aiworker.backends import util
    from aiworker.backends.base import BackendOptions
    from aiworker.backends.torch import TorchBackend
    from aiworker.devices import gpu_count, parse_device

    backend = TorchBackend(BackendOptions(model_execution_timeout_ms=5))
    script = backend.load_script(SCRIPT, ["bar"], parse_device("CPU"))
    ticks = iter(range(1000))  # each clock read is a second later: the run "takes" 1 s
    monkeypatch.setattr(util, "_clock", lambda: float(next(ticks)))
    ones = np.ones(2, np.float32)
    with pytest.raises(AIError, match=r"more than MODEL_EXECUTION_TIMEOUT \(5 ms\)"):
        script.call("bar", [ones, ones], [], [], 1)
    if gpu_count("torch"):
        return  # the refusal needs a host without a GPU
    with pytest.raises(AIError, match=r"^device GPU:0 is not available on this worker host"):
        backend.load_script(SCRIPT, ["bar"], parse_device("GPU:0"))
