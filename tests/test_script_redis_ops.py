"""RedisAI 1.2's Redis calls inside TorchScript scripts (``redis.execute``, ``redis.asList``,
``redisAI.model_execute``), at the backend level against a real Redis: the worker gives each
SCRIPTEXECUTE a ``ScriptContext``; here the tests build one the same way."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import redis
from conftest import torch_blob

from aiworker import AIError, Client
from aiworker.backends.base import BackendOptions, ModelSpec, ScriptContext
from aiworker.devices import parse_device
from aiworker.protocol.keys import Keys, hash_tag
from aiworker.storage import model as model_store
from aiworker.storage.cluster import ClusterWires
from aiworker.storage.wire import Wire

torch = pytest.importorskip("torch")

from aiworker.backends import torch_redis_ops  # noqa: E402
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
    # a declared tag is shared by aiworker's own keys, where requesters may write a hash
    client.hset("aiworker:tmp:{1}m", mapping=client.hgetall("m{1}"))
    with pytest.raises(AIError, match=r"key 'aiworker:tmp:\{1\}m' is one of aiworker's own"):
        call(script, context(client, "{1}"), "run_model", ["aiworker:tmp:{1}m"], ["1"])


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


# What a script may reach, on a single Redis and on the 3+3 cluster -------------------------

REACH = """
def run(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute(args[0], args[1:])
    return torch.zeros(1)
"""
OWN = Keys()


@pytest.fixture(params=["single", "cluster"])
def target(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(client, what the worker gives a script to call Redis with) on either deployment."""
    if request.param == "single":
        c = request.getfixturevalue("client")
        return c, Wire(c.connection_pool).execute
    c = request.getfixturevalue("cluster_client")
    return c, ClusterWires(c).execute


def reach(target: tuple[Any, Any], declared: Sequence[str], *command: str) -> None:
    _, redis_call = target
    script = TorchScript(REACH, ["run"], torch.device("cpu"))
    script.call(
        "run", [], declared, command, -1, context=ScriptContext(tuple(declared), redis_call)
    )


def tag_of(key: str) -> str:
    tag = hash_tag(key)
    assert tag is not None
    return "{" + tag + "}"


def test_a_declared_tag_does_not_reach_aiworkers_own_keys(target: tuple[Any, Any]) -> None:
    """Stats hashes, queue partitions and reply lists carry a tag a script may declare: none of
    them is the script's to write, whatever it declared."""
    c, _ = target
    stats = OWN.stats("s{t}")
    partition = OWN.queues("CPU", 3)[1]
    reply = OWN.reply("token", near="out{u}")
    c.hset(stats, "calls", "1")
    c.xadd(partition, {"cmd": "pending job"})
    attempts = [
        (stats, ["HSET", stats, "calls", "-999999"]),
        (partition, ["DEL", partition]),
        (reply, ["LPUSH", reply, "forged reply"]),
    ]
    for key, command in attempts:
        for declared in ([tag_of(key)], [key]):  # the tag, or the key itself
            with pytest.raises(AIError) as info:
                reach(target, declared, *command)
            assert str(info.value) == (
                f"Redis command returned an error: ERR key '{key}' is one of aiworker's own: "
                "no script may use it"
            )
    assert c.hget(stats, "calls") == b"1"
    assert c.xlen(partition) == 1
    assert not c.exists(reply)
    reach(target, ["{t}"], "SET", "mine{t}", "1")  # the tag's other keys are the script's
    assert c.get("mine{t}") == b"1"


def test_every_key_of_a_command_is_where_redis_says(target: tuple[Any, Any]) -> None:
    """PFCOUNT counts every key it names (it was read as one key); commands whose keys depend on
    their arguments (ZUNIONSTORE's numkeys) are asked of Redis."""
    c, _ = target
    c.pfadd("mine{h}", "a")
    c.pfadd("other{h}", "b", "c")  # the same slot: only the declaration tells them apart
    with pytest.raises(AIError, match=r"key 'other\{h\}' is not declared"):
        reach(target, ["mine{h}"], "PFCOUNT", "mine{h}", "other{h}")
    reach(target, ["mine{h}"], "PFCOUNT", "mine{h}")
    c.zadd("a{z}", {"m": 1})
    c.zadd("b{z}", {"m": 2})
    with pytest.raises(AIError, match=r"key 'b\{z\}' is not declared"):
        reach(target, ["a{z}", "out{z}"], "ZUNIONSTORE", "out{z}", "2", "a{z}", "b{z}")
    reach(target, ["a{z}", "b{z}", "out{z}"], "ZUNIONSTORE", "out{z}", "2", "a{z}", "b{z}")
    assert c.zscore("out{z}", "m") == 3
    with pytest.raises(AIError, match=r"key 'b\{z\}' is not declared"):
        reach(target, ["a{z}"], "LMOVE", "a{z}", "b{z}", "LEFT", "RIGHT")


@pytest.mark.parametrize(
    "command",
    [
        ["COPY", "x{d}", "y{d}", "DB", "1"],
        ["COPY", "x{d}", "y{d}", "REPLACE", "db", "1"],
        ["MOVE", "x{d}", "1"],
        ["SWAPDB", "0", "1"],
        ["SELECT", "1"],
    ],
)
def test_no_script_reaches_another_database(target: tuple[Any, Any], command: list[str]) -> None:
    c, _ = target
    c.set("x{d}", "1")
    with pytest.raises(AIError) as info:
        reach(target, ["x{d}", "y{d}"], *command)
    name = command[0].lower()
    assert str(info.value) == (
        f"Redis command returned an error: ERR command '{name}' names another database: "
        "scripts may not"
    )
    assert c.get("x{d}") == b"1" and not c.exists("y{d}")
    if isinstance(c, Client):  # a single Redis has other databases: nothing reached them
        other = redis.Redis(
            connection_pool=redis.ConnectionPool(**{**c.connection_pool.connection_kwargs, "db": 1})
        )
        assert other.dbsize() == 0
        other.close()
    reach(target, ["x{d}", "y{d}"], "COPY", "x{d}", "y{d}")  # in its own database, it may
    assert c.get("y{d}") == b"1"


def test_where_keys_are_is_asked_of_redis_once_per_command(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command whose keys sit at fixed places costs one round trip per call once its
    COMMAND INFO is known; one whose keys move costs a COMMAND GETKEYS each time."""
    monkeypatch.setattr(torch_redis_ops, "_SPECS", {})
    sent: list[str] = []
    wire = Wire(client.connection_pool)

    def counting(*command: Any) -> Any:
        sent.append(" ".join(map(str, command[:2])).upper())
        return wire.execute(*command)

    for _ in range(3):
        reach((client, counting), ["h"], "HSET", "h", "f", "1")
    assert sent == ["COMMAND INFO", "HSET H", "HSET H", "HSET H"]
    sent.clear()
    for _ in range(2):
        reach((client, counting), ["o", "a"], "ZUNIONSTORE", "o", "1", "a")
    assert sent == ["COMMAND INFO", *["COMMAND GETKEYS", "ZUNIONSTORE O"] * 2]


def test_a_worker_refuses_a_script_writing_its_statistics(client: Client, worker: Any) -> None:
    """End to end: AI.INFO of the script cannot be poisoned through a declared tag."""
    client.scriptstore("s{t}", "CPU", REACH, ["run"])
    stats = OWN.stats("s{t}")
    with pytest.raises(AIError, match="is one of aiworker's own"):
        client.scriptexecute(
            "s{t}", "run", keys=["{t}"], args=["HSET", stats, "calls", "-999999"], outputs=["o{t}"]
        )
    assert client.infoget("s{t}")["calls"] >= 0


def test_an_ops_error_text_is_kept_for_its_run(client: Client) -> None:
    """torch 2.1 drops the text of an exception raised by a Python op on its way through the
    interpreter ("RuntimeError:"): the run keeps it to report it."""
    with torch_redis_ops.calling(context(client, "x")):
        with pytest.raises(RuntimeError):
            torch.ops.redis.execute("SET", ["other", "1"])
        assert torch_redis_ops.raised_text() == (
            "Redis command returned an error: ERR key 'other' is not declared in the script's KEYS"
        )
    assert torch_redis_ops.raised_text() == ""  # nothing leaks into the next run


def test_a_worker_with_its_own_prefix_refuses_its_own_keys(
    redis_server: Any, settings: Any
) -> None:
    """The refusal follows the worker's key prefix, not the default one: a worker keeping its
    keys under ``ns:`` refuses a script reaching ``ns:stats:{t}``."""
    from aiworker import Client, Worker
    from aiworker.protocol.keys import Keys

    own = Keys("ns:")
    client = Client.from_url(redis_server.url, prefix="ns:", reply_timeout=30)
    client.flushall()
    worker = Worker(settings.replace(prefix="ns:")).start()
    try:
        client.scriptstore("s{t}", "CPU", REACH, ["run"])
        stats = own.stats("s{t}")
        with pytest.raises(AIError, match="is one of aiworker's own"):
            client.scriptexecute(
                "s{t}", "run", keys=["{t}"], args=["HSET", stats, "calls", "-1"], outputs=["o{t}"]
            )
        assert client.hget(stats, "calls") != b"-1"
    finally:
        worker.stop(timeout=10)
        client.close()
