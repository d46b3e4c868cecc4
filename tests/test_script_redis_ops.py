"""RedisAI 1.2's Redis calls inside TorchScript scripts (``redis.execute``, ``redis.asList``,
``redisAI.model_execute``), at the backend level against a real Redis: the worker gives each
SCRIPTEXECUTE a ``ScriptContext``; here the tests build one the same way."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from conftest import torch_blob

from aiworker import AIError, Client
from aiworker.backends.base import BackendOptions, ModelSpec, ScriptContext
from aiworker.devices import parse_device
from aiworker.storage import model as model_store
from aiworker.storage.wire import Wire

torch = pytest.importorskip("torch")

from aiworker.backends.torch import TorchBackend  # noqa: E402
from aiworker.backends.torch_script import TorchScript, compile_script  # noqa: E402

SCRIPT = """
def redis_string_int_to_tensor(redis_value: Any):
    return torch.tensor(int(str(redis_value)))

def int_set_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    redis.execute("SET", key, args[0])
    res = redis.execute("GET", key)
    return redis_string_int_to_tensor(res)

def set_incr(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])
    redis.execute("INCR", keys[0])  # result unused: the call must still happen
    return redis_string_int_to_tensor(redis.execute("GET", keys[0]))

def hash_values(tensors: List[Tensor], keys: List[str], args: List[str]):
    command_args = [keys[0]]
    for s in args:
        command_args.append(s)
    redis.execute("HSET", command_args)
    values = redis.asList(redis.execute("HVALS", keys[0]))
    l = [torch.tensor(int(str(v))).reshape(1, 1) for v in values]
    return torch.cat(l, dim=0)

def list_push(tensors: List[Tensor], keys: List[str], args: List[str]):
    for value in args:
        redis.execute("RPUSH", keys[0], value)
    redis.execute("LPUSH", keys[0], "0")
    values = redis.asList(redis.execute("LRANGE", keys[0], "0", "-1"))
    return torch.tensor([redis.asInt(v) for v in values])

def helpers(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], "2.5")
    text = redis.asString(redis.execute("GET", keys[0]))
    missing = redis.asString(redis.execute("GET", keys[1]))
    return torch.tensor([redis.asDouble(text), float(len(missing))])

def touch(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute(args[0], args[1:])
    return torch.zeros(1)

def run_model(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    b = torch.tensor([[2.0, 3.0], [2.0, 3.0]])
    return redisAI.model_execute(keys[0], [a, b], int(args[0]))

def case_insensitive(tensors: List[Tensor], keys: List[str], args: List[str]):
    Redis.execute("SET", keys[0], "1")
    return torch.zeros(1)
"""
ENTRY_POINTS = [
    "int_set_get", "set_incr", "hash_values", "list_push", "helpers", "touch", "run_model",
    "case_insensitive",
]  # fmt: skip


@pytest.fixture
def script() -> TorchScript:
    return TorchScript(SCRIPT, ENTRY_POINTS, torch.device("cpu"))


def model_runner(client: Client) -> Any:
    """``ScriptContext.run_model``: load the stored TorchScript model and run it."""
    backend = TorchBackend(BackendOptions())

    def run(key: str, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        _, blob = model_store.read_model(client, key)
        model = backend.load(blob, ModelSpec(key, parse_device("CPU")))
        return model.run(list(tensors))

    return run


def context(client: Client, *keys: str) -> ScriptContext:
    # what the worker passes: one command on its own connection, the raw reply
    return ScriptContext(keys, Wire(client.connection_pool).execute, model_runner(client))


def call(
    script: TorchScript, ctx: ScriptContext, function: str, keys: Sequence[str], args: Sequence[str]
) -> list[np.ndarray]:
    return script.call(function, [], keys, args, -1, context=ctx)


def test_set_get_and_incr_on_declared_keys(client: Client, script: TorchScript) -> None:
    out = call(script, context(client, "x{1}", "{1}"), "int_set_get", ["x{1}", "{1}"], ["3"])
    assert out[0].tolist() == 3 and client.get("x{1}") == b"3"
    out = call(script, context(client, "x"), "set_incr", ["x"], ["41"])
    assert out[0].tolist() == 42 and client.get("x") == b"42"


def test_hset_hvals_and_as_list(client: Client, script: TorchScript) -> None:
    args = ["field1", "1", "field2", "2"]
    out = call(script, context(client, "hash"), "hash_values", ["hash"], args)
    assert out[0].tolist() == [[1], [2]]
    assert client.hgetall("hash") == {b"field1": b"1", b"field2": b"2"}


def test_lists_and_helpers(client: Client, script: TorchScript) -> None:
    out = call(script, context(client, "l"), "list_push", ["l"], ["1", "2"])
    assert out[0].tolist() == [0, 1, 2]
    out = call(script, context(client, "s", "nil"), "helpers", ["s", "nil"], [])
    assert out[0].tolist() == [2.5, 0.0]  # a missing key is None, asString makes it ""


def test_an_undeclared_key_is_refused(client: Client, script: TorchScript) -> None:
    client.set("other", "keep")
    with pytest.raises(AIError) as info:
        call(script, context(client, "x"), "touch", ["x"], ["SET", "other", "new"])
    assert str(info.value) == (
        "Redis command returned an error: ERR key 'other' is not declared in the script's KEYS"
    )
    assert client.get("other") == b"keep"
    with pytest.raises(AIError, match="key 'y' is not declared"):  # one of several keys
        call(script, context(client, "x"), "touch", ["x"], ["DEL", "x", "y"])
    # a declared hash tag covers every key carrying it, and only those
    call(script, context(client, "{t}"), "touch", ["{t}"], ["SET", "a{t}", "1"])
    assert client.get("a{t}") == b"1"
    with pytest.raises(AIError, match=r"key 'a\{u\}' is not declared"):
        call(script, context(client, "{t}"), "touch", ["{t}"], ["SET", "a{u}", "1"])
    # a command outside the built-in table: its keys come from Redis (COMMAND GETKEYS)
    with pytest.raises(AIError, match="key 'other' is not declared"):
        call(script, context(client, "x"), "touch", ["x"], ["COPY", "x", "other"])


def test_commands_beyond_their_keys_are_refused(client: Client, script: TorchScript) -> None:
    client.set("survivor", "1")
    for command in (["FLUSHALL"], ["CONFIG", "SET", "maxmemory", "1"], ["KEYS", "*"],
                    ["BLPOP", "x", "0"], ["EVAL", "return 1", "0"], ["SELECT", "1"],
                    ["RANDOMKEY"], ["SCAN", "0"], ["PUBLISH", "c", "m"]):  # fmt: skip
        with pytest.raises(AIError, match=r"^Redis command returned an error: ERR command"):
            call(script, context(client, "x"), "touch", ["x"], command)
    assert client.get("survivor") == b"1"
    assert client.config_get("maxmemory") == {"maxmemory": "0"}
    client.set("x", "1")  # a container command's subcommand is looked up: OBJECT ENCODING
    call(script, context(client, "x"), "touch", ["x"], ["OBJECT", "ENCODING", "x"])
    with pytest.raises(AIError, match="key 'survivor' is not declared"):
        call(script, context(client, "x"), "touch", ["x"], ["OBJECT", "ENCODING", "survivor"])
    with pytest.raises(AIError, match="unknown command 'nosuchcommand'"):
        call(script, context(client, "x"), "touch", ["x"], ["NOSUCHCOMMAND"])


def test_redis_errors_come_back_as_redisai_did(client: Client, script: TorchScript) -> None:
    with pytest.raises(AIError) as info:
        call(script, context(client, "x"), "touch", ["x"], ["SET", "x"])
    assert str(info.value) == (
        "Redis command returned an error: ERR wrong number of arguments for 'set' command"
    )
    client.hset("h", "f", "v")
    with pytest.raises(AIError) as info:
        call(script, context(client, "h"), "touch", ["h"], ["INCR", "h"])
    assert str(info.value) == (
        "Redis command returned an error: "
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )


def test_model_execute_runs_a_stored_model(client: Client, script: TorchScript) -> None:
    client.modelstore("m{1}", "TORCH", "CPU", torch_blob("add"))
    out = call(script, context(client, "m{1}"), "run_model", ["m{1}"], ["1"])
    assert out[0].tolist() == [[4, 6], [4, 6]]
    with pytest.raises(AIError, match=r"key 'm\{1\}' is not declared"):
        call(script, context(client, "x"), "run_model", ["m{1}"], ["1"])
    with pytest.raises(AIError, match=r"^model key is empty$"):
        call(script, context(client, "nope"), "run_model", ["nope"], ["1"])
    with pytest.raises(AIError, match="OUTPUTS here does not match model definition"):
        call(script, context(client, "m{1}"), "run_model", ["m{1}"], ["2"])


def test_names_resolve_as_redisai_did(client: Client, script: TorchScript) -> None:
    """RedisAI matched ``redis``/``redisAI`` case-insensitively; the client compiles such
    scripts before storing them."""
    call(script, context(client, "k"), "case_insensitive", ["k"], [])
    assert client.get("k") == b"1"
    compile_script(SCRIPT, ENTRY_POINTS)
    assert client.scriptstore("s", "CPU", SCRIPT, ENTRY_POINTS) == "OK"


def test_without_a_context_the_calls_fail(script: TorchScript) -> None:
    with pytest.raises(AIError, match="Redis commands are not available"):
        script.call("touch", [], ["x"], ["GET", "x"], -1)


def test_concurrent_scripts_use_their_own_context(client: Client, script: TorchScript) -> None:
    """Scripts run on several worker threads at once; each call sees its own keys."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        key = f"k{n}"
        try:
            for _ in range(20):
                out = call(script, context(client, key), "int_set_get", [key], [str(n)])
                assert out[0].tolist() == n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert [client.get(f"k{n}") for n in range(4)] == [b"0", b"1", b"2", b"3"]
