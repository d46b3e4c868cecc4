"""A model that cannot load, or a script that does not compile, is refused at store time, as
RedisAI did.

Where the backend's framework is importable the client loads the blob itself (the backend tests
show RedisAI's messages: ``Invalid GraphDef``, ...). Here the framework is made unimportable in a
client process (``sys.modules["onnxruntime"] = None``, ``sys.modules["torch"] = None``): the
client then asks a live worker serving the device (MODELVERIFY, SCRIPTVERIFY), or stores with an
``UnverifiedModelWarning`` / ``UnverifiedScriptWarning``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from builders import onnx_mul
from conftest import worker_env

from aiworker import Client, Worker
from aiworker.client.job_ops import MAX_LISTED_NAMES, MAX_NAME_CHARS, listed_names
from aiworker.embedded import RedisServer
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.requests import ModelVerify

pytest.importorskip("onnxruntime")

CLIENT = """
import json, sys, warnings
sys.modules["onnxruntime"] = None  # the framework cannot be imported in this process
from aiworker import Client, UnverifiedModelWarning
url, path = sys.argv[1], sys.argv[2]
client = Client.from_url(url)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        client.modelstore("m", "ONNX", "CPU", open(path, "rb").read())
        result = "stored"
    except Exception as exc:
        result = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "result": result,
    "warnings": [str(w.message) for w in caught if w.category is UnverifiedModelWarning],
    "exists": bool(client.exists("m")),
    "names": (
        [client.modelget("m", meta_only=True)[f] for f in ("inputs", "outputs")]
        if result == "stored" else None
    ),
    "onnxruntime": "onnxruntime" in sys.modules and sys.modules["onnxruntime"] is not None,
}))
"""


def run_client(program: str, *args: str) -> dict[str, Any]:
    """The JSON line a client program (run in a process of its own) printed last."""
    done = subprocess.run(
        [sys.executable, "-c", program, *args],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def store_without_framework(url: str, blob: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "model.onnx"
    path.write_bytes(blob)
    result = run_client(CLIENT, url, str(path))
    assert not result["onnxruntime"]
    return result


def test_no_framework_and_no_live_worker_stores_with_a_warning(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    result = store_without_framework(redis_server.url, b"\xff\xfe garbage", tmp_path)
    assert result["result"] == "stored" and result["exists"]
    assert result["names"] == [[], []]  # nobody loaded it: no names to list
    assert result["warnings"] == [
        "model m was stored without being verified: backend ONNX cannot be imported in this "
        "process and no live worker serves queue CPU"
    ]


def test_a_good_model_is_stored_through_a_live_worker(
    client: Client, worker: Worker, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Stored whether the worker checked it or, not able to yet, said so (then with a
    warning)."""
    result = store_without_framework(redis_server.url, onnx_mul(), tmp_path)
    assert result["result"] == "stored" and result["exists"]
    for message in result["warnings"]:
        assert "the worker serving queue CPU could not check it" in message
    if not result["warnings"]:  # the worker loaded it and reported its graph's names
        assert result["names"] == [["a", "b"], ["c"]]


def test_only_names_a_check_could_report_are_kept() -> None:
    """A MODELVERIFY reply's names end up in MODELGET META: lists of short strings only."""
    assert listed_names({"loaded": True, "inputs": ["a"], "outputs": [""]}) == (("a",), ("",))
    assert listed_names({"loaded": True}) is None  # an older worker: no names
    for forged in (
        {"inputs": "a", "outputs": []},
        {"inputs": [1], "outputs": []},
        {"inputs": ["x" * (MAX_NAME_CHARS + 1)], "outputs": []},
        {"inputs": ["a"] * (MAX_LISTED_NAMES + 1), "outputs": []},
    ):
        assert listed_names(forged) is None, forged


def test_modelstore_asks_a_live_worker_to_verify(
    client: Client, worker: Worker, redis_server: RedisServer, tmp_path: Path
) -> None:
    result = store_without_framework(redis_server.url, b"\xff\xfe garbage", tmp_path)
    assert result["result"] == ("JobFailed: Failed to load model because protobuf parsing failed.")
    assert not result["exists"] and not result["warnings"]


SCRIPT_CLIENT = """
import json, sys, warnings
sys.modules["torch"] = None  # torch cannot be imported in this process
from aiworker import Client, UnverifiedScriptWarning
url, source, entry_point = sys.argv[1], sys.argv[2], sys.argv[3]
client = Client.from_url(url)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        client.scriptstore("s", "CPU", source, entry_points=[entry_point])
        result = "stored"
    except Exception as exc:
        result = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "result": result,
    "warnings": [str(w.message) for w in caught if w.category is UnverifiedScriptWarning],
    "exists": bool(client.exists("s")),
    "torch": "torch" in sys.modules and sys.modules["torch"] is not None,
}))
"""
SCRIPT = """
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[0]
"""


def store_script_without_torch(url: str, source: str, entry_point: str) -> dict[str, Any]:
    result = run_client(SCRIPT_CLIENT, url, source, entry_point)
    assert not result["torch"]
    return result


def test_scriptstore_asks_a_live_worker_to_compile(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    pytest.importorskip("torch")
    for source, entry_point, error in [
        (SCRIPT, "nope", "Function nope does not exist in the given script."),
        ("", "bar", "Function bar does not exist in the given script."),  # "" compiles
        ("def bar(a: Tensor):\n    return a\n", "bar",
         "Wrong number of inputs in function bar. Expected 3 but was 1"),
    ]:  # fmt: skip
        result = store_script_without_torch(redis_server.url, source, entry_point)
        assert result["result"] == f"JobFailed: {error}"
        assert not result["exists"] and not result["warnings"]
    result = store_script_without_torch(redis_server.url, SCRIPT, "bar")
    assert result == {"result": "stored", "warnings": [], "exists": True, "torch": False}
    client.tensorset("a", np.array([1.0, 2.0], np.float32))
    client.scriptexecute("s", "bar", inputs=["a"], outputs=["b"])
    assert client.tensorget("b").tolist() == [2.0, 4.0]


def test_no_torch_and_no_live_worker_stores_the_script_with_a_warning(
    client: Client, redis_server: RedisServer
) -> None:
    result = store_script_without_torch(redis_server.url, "not a script", "bar")
    assert result["result"] == "stored" and result["exists"]
    assert result["warnings"] == [
        "script s was stored without being verified: torch cannot be imported in this process "
        "and no live worker serves queue CPU"
    ]


def test_a_worker_loads_only_blobs_staged_for_a_check(client: Client, worker: Worker) -> None:
    """A MODELVERIFY entry carried its blob (up to max_model_bytes) and a worker loaded it:
    anyone who may XADD had the worker run a framework's parsers on a blob of its making (a
    model owner's right). Now a blob is loaded only from a staging key, which a client writes
    (only model owners may), and an entry stays within 1 MiB."""
    client.hset("ai:mine", "blob", onnx_mul())  # a key a requester may write
    queue = client.keyspace.queue("CPU")
    for key in ("ai:mine", client.keyspace.verifying("gone")):
        client.xadd(queue, encode_entry(ModelVerify("ONNX", "CPU", key), "r"))
        popped = client.blpop(["r"], 10)
        assert popped is not None
        reply = json.loads(popped[1])
        assert reply["status"] == "error" and "loaded" not in reply, reply  # no verdict
        assert "MODELVERIFY" in reply["error"], reply
    entry = {"op": "MODELVERIFY", "backend": "ONNX", "device": "CPU", "blob": b"x" * 2_000_000}
    client.xadd(queue, {"job": msgpack.packb(entry), "reply": "r"})
    popped = client.blpop(["r"], 10)
    assert popped is not None and "more than 1,048,576" in json.loads(popped[1])["error"]
    assert not list(client.scan_iter(match=client.keyspace.verifying("*")))
