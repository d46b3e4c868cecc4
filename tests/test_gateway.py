"""``aiworker gateway`` driven by redis-py's ``execute_command``: every AI.* command with RedisAI's
reply types and errors, pass-through, pipelines mixing both, MULTI/EXEC, BLPOP, SUBSCRIBE, AUTH
and SELECT, a client leaving mid-pipeline. The gateway runs in this process on its own event loop
(``running_gateway``), in front of the session's private redis-server."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import redis
from conftest import stub_blob, wait_until

from aiworker import Client, ConfigError, Settings, Worker
from aiworker.embedded import RedisServer
from aiworker.gateway import Gateway, GatewayConfig
from aiworker.gateway.inplace import InPlace
from aiworker.gateway.resp import command, reply_end
from aiworker.gateway.session import HELLO_NOAUTH

# helpers shared by the other test_gateway* modules ---------------------------------------


def event_loops() -> list[Any]:
    """The event loops the gateway runs on: asyncio's, and uvloop's where it is installed (the
    ``aiworker gateway`` default)."""
    loops: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return loops
    return [*loops, pytest.param(uvloop.new_event_loop, id="uvloop")]


@contextmanager
def running_gateway(
    settings: Settings, new_loop: Any = asyncio.new_event_loop, **config: Any
) -> Iterator[Gateway]:
    """A gateway on a free port, served by an event loop (``new_loop()``) in a thread of its
    own."""
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
    thread.start()
    gateway = Gateway(settings, GatewayConfig(**{"listen": "127.0.0.1:0", **config}))
    try:
        asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(30)
        try:
            yield gateway
        finally:
            asyncio.run_coroutine_threadsafe(gateway.close(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def connect(gateway: Gateway, protocol: int = 2, **kwargs: Any) -> redis.Redis:
    host, port = gateway.address()
    return redis.Redis(host=host, port=port, socket_timeout=30, protocol=protocol, **kwargs)


def raw_socket(gateway: Gateway) -> socket.socket:
    sock = socket.create_connection(gateway.address(), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


@pytest.fixture(params=event_loops())
def gateway(
    client: Client, settings: Settings, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """A gateway on each event loop it runs on (uvloop is ``aiworker gateway``'s default)."""
    with running_gateway(settings, request.param) as gw:
        yield gw


@pytest.fixture
def con(gateway: Gateway) -> Iterator[redis.Redis]:
    c = connect(gateway)
    yield c
    c.close()


def cmd(con: redis.Redis, *args: Any) -> Any:
    return con.execute_command(*args)


def error_of(con: redis.Redis, *args: Any) -> str:
    with pytest.raises(redis.ResponseError) as info:
        con.execute_command(*args)
    return str(info.value)


# tensors ---------------------------------------------------------------------------------


def test_tensorset_and_tensorget_reply_types(con: redis.Redis, client: Client) -> None:
    assert cmd(con, "AI.TENSORSET", "t", "FLOAT", 2, 2, "VALUES", 1, 2, 3, 4) == b"OK"
    assert cmd(con, "AI.TENSORGET", "t", "META") == [b"dtype", b"FLOAT", b"shape", [2, 2]]
    blob = np.array([[1, 2], [3, 4]], np.float32).tobytes()
    assert cmd(con, "AI.TENSORGET", "t", "BLOB") == blob
    assert cmd(con, "AI.TENSORGET", "t") == [b"dtype", b"FLOAT", b"shape", [2, 2], b"blob", blob]
    assert cmd(con, "AI.TENSORGET", "t", "META", "VALUES") == [
        b"dtype", b"FLOAT", b"shape", [2, 2], b"values", [b"1", b"2", b"3", b"4"],
    ]  # fmt: skip
    assert cmd(con, "AI.TENSORGET", "t", "VALUES") == [b"1", b"2", b"3", b"4"]
    # the tensor is the user's key: the Python client and plain commands see it
    assert client.tensorget("t").tolist() == [[1, 2], [3, 4]]
    assert cmd(con, "TYPE", "t") == b"hash"
    assert cmd(con, "EXISTS", "t") == 1


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        ("DOUBLE", ["0.5", "-1"], [b"0.5", b"-1"]),
        ("INT8", ["-3", "4"], [-3, 4]),
        ("INT16", ["300", "-2"], [300, -2]),
        ("INT32", ["7", "8"], [7, 8]),
        ("INT64", ["-9", "10"], [-9, 10]),
        ("UINT8", ["255", "0"], [255, 0]),
        ("UINT16", ["65535", "1"], [65535, 1]),
        ("BOOL", ["1", "0"], [1, 0]),
        ("STRING", ["ab", "c"], [b"ab", b"c"]),
    ],
)
def test_every_dtype(
    con: redis.Redis, client: Client, dtype: str, values: list[str], expected: list[Any]
) -> None:
    assert cmd(con, "AI.TENSORSET", "t", dtype, 2, "VALUES", *values) == b"OK"
    assert cmd(con, "AI.TENSORGET", "t", "VALUES") == expected
    blob = cmd(con, "AI.TENSORGET", "t", "BLOB")
    assert cmd(con, "AI.TENSORSET", "u", dtype, 2, "BLOB", blob) == b"OK"
    assert cmd(con, "AI.TENSORGET", "u", "META", "VALUES")[-1] == expected
    assert client.tensorget("u").shape == (2,)


def test_tensor_errors(con: redis.Redis, client: Client) -> None:
    assert error_of(con, "AI.TENSORSET", "t", "BAD", 1) == "invalid data type"
    assert error_of(con, "AI.TENSORSET", "t", "FLOAT", -1) == (
        "invalid or negative value found in tensor shape"
    )
    assert error_of(con, "AI.TENSORSET", "t", "FLOAT", 2, "BLOB", b"\0" * 7) == (
        "data length does not match tensor shape and type"
    )
    assert error_of(con, "AI.TENSORSET", "t", "FLOAT", 2, "VALUES", 1) == (
        "wrong number of values was given in 'AI.TENSORSET' command"
    )
    assert error_of(con, "AI.TENSORGET", "nope") == "tensor key is empty or in a different shard"
    client.tensorset("t", [1.0], dtype="FLOAT")
    assert error_of(con, "AI.TENSORGET", "t", "BLOB", "VALUES") == "both BLOB and VALUES specified"
    assert error_of(con, "AI.TENSORGET", "t", "unsupported") == "unsupported data format"
    client.set("s", "x")
    assert error_of(con, "AI.TENSORGET", "s").startswith("WRONGTYPE")
    assert error_of(con, "AI.TENSORSET", "s", "FLOAT", 1).startswith("WRONGTYPE")
    # RedisAI opened the key before it read the arguments after it (its own tests pin this):
    # a key holding something else, or for TENSORGET no key, is the error a bad argument gets
    client.hset("h", "f", "v")
    wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert error_of(con, "AI.TENSORSET", "s", "INT32", 2, "unsupported", 2, 3) == wrongtype
    assert error_of(con, "AI.TENSORSET", "h", "INT128", 2, "VALUES", 2, 3) == wrongtype
    assert error_of(con, "AI.TENSORGET", "s", "unsupported") == wrongtype
    assert error_of(con, "AI.TENSORGET", "nope", "unsupported") == (
        "tensor key is empty or in a different shard"
    )
    assert error_of(con, "AI.TENSORSET", "nope", "INT32", 2, "unsupported", 2, 3) == (
        "invalid or negative value found in tensor shape"
    )
    assert error_of(con, "AI.TENSORGET", "nope", "META", "BLOB", "VALUES", "X").startswith(
        "wrong number of arguments"
    )  # arity first, as RedisAI
    assert error_of(con, "AI.TENSORSET") == "wrong number of arguments for 'AI.TENSORSET' command"
    assert error_of(con, "AI.NOPE") == "unknown command 'AI.NOPE'"
    assert client.get("s") == b"x"


def test_pass_through_commands_act_on_tensors(con: redis.Redis) -> None:
    cmd(con, "AI.TENSORSET", "t", "INT32", 1, "VALUES", 5)
    assert cmd(con, "RENAME", "t", "t2") is True
    assert cmd(con, "AI.TENSORGET", "t2", "VALUES") == [5]
    assert cmd(con, "EXPIRE", "t2", 100) == 1
    assert cmd(con, "UNLINK", "t2") == 1
    assert error_of(con, "AI.TENSORGET", "t2") == "tensor key is empty or in a different shard"


def test_large_tensor_round_trip(con: redis.Redis, client: Client) -> None:
    array = np.random.default_rng(0).random((512, 1024), np.float32)  # 2 MB
    assert cmd(con, "AI.TENSORSET", "big", "FLOAT", 512, 1024, "BLOB", array.tobytes()) == b"OK"
    assert cmd(con, "AI.TENSORGET", "big", "BLOB") == array.tobytes()
    assert np.array_equal(client.tensorget("big"), array)


def large_tensors_in_a_pipeline(con: redis.Redis, client: Client) -> None:
    """Large tensors set and read back in one pipeline with small commands, through a gateway
    that receives their blobs in place (a read ends inside most of them)."""
    arrays = [np.random.default_rng(n).random(n * 100_000 + 20_000, np.float32) for n in range(4)]
    pipe = con.pipeline(transaction=False)
    for n, array in enumerate(arrays):
        pipe.execute_command("AI.TENSORSET", f"t{n}", "FLOAT", array.size, "BLOB", array.tobytes())
        pipe.execute_command("SET", f"k{n}", b"v" * 100_000)
        pipe.execute_command("AI.TENSORGET", f"t{n}", "META", "BLOB")
        pipe.execute_command("EXISTS", f"t{n}")
    out = pipe.execute()
    for n, array in enumerate(arrays):
        assert out[4 * n : 4 * n + 4] == [
            b"OK",
            True,
            [b"dtype", b"FLOAT", b"shape", [array.size], b"blob", array.tobytes()],
            1,
        ]
        assert np.array_equal(client.tensorget(f"t{n}"), array)
    assert cmd(con, "GET", "k3") == b"v" * 100_000


@pytest.mark.parametrize("new_loop", event_loops())
def test_large_tensors_on_either_event_loop(
    client: Client, settings: Settings, new_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs are received in place both ways: from the client (the AI.TENSORSETs) and from
    Redis (the AI.TENSORGETs' reads), on asyncio's and uvloop's transports."""
    owners: list[str] = []
    start = InPlace.start.__func__  # type: ignore[attr-defined]

    def counted(cls: type[InPlace], owner: Any, *args: Any) -> None:
        owners.append(type(owner).__name__)
        start(cls, owner, *args)

    monkeypatch.setattr(InPlace, "start", classmethod(counted))
    with running_gateway(settings, new_loop) as gw:
        con = connect(gw)
        large_tensors_in_a_pipeline(con, client)
        con.close()
    assert owners.count("Session") >= 3 and owners.count("Upstream") >= 1, owners


# models, scripts, execution --------------------------------------------------------------


def test_models_and_execution(con: redis.Redis, worker: Worker, client: Client) -> None:
    blob = stub_blob("add")
    assert cmd(con, "AI.MODELSTORE", "m", "STUB", "CPU", "TAG", "v1", "BLOB", blob) == b"OK"
    meta = cmd(con, "AI.MODELGET", "m", "META")
    assert meta == [
        b"backend", b"STUB", b"device", b"CPU", b"tag", b"v1", b"batchsize", 0,
        b"minbatchsize", 0, b"inputs", [], b"outputs", [], b"minbatchtimeout", 0,
    ]  # fmt: skip
    assert cmd(con, "AI.MODELGET", "m", "BLOB") == blob
    assert cmd(con, "AI.MODELGET", "m")[-2:] == [b"blob", blob]
    assert cmd(con, "AI._MODELSCAN") == [[b"m", b"v1"]]
    cmd(con, "AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 2, 3)
    assert cmd(con, "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b") == b"OK"
    assert cmd(con, "AI.TENSORGET", "b", "VALUES") == [b"4", b"6"]
    assert cmd(con, "AI.MODELRUN", "m", "INPUTS", "a", "b", "OUTPUTS", "c") == b"OK"
    assert cmd(con, "AI.TENSORGET", "c", "VALUES") == [b"6", b"9"]
    info = cmd(con, "AI.INFO", "m")
    assert info[:10] == [b"key", b"m", b"type", b"MODEL", b"backend", b"STUB", b"device", b"CPU",
                         b"tag", b"v1"]  # fmt: skip
    assert info[14:] == [b"calls", 2, b"errors", 0]
    assert isinstance(info[11], int) and info[13] == 4  # duration, samples
    assert cmd(con, "AI.INFO", "m", "RESETSTAT") == b"OK"
    assert cmd(con, "AI.INFO", "m")[15] == 0
    # RedisAI 1.2.3 answered AI.INFO without a key with its versions (1.2.7 wanted a key and
    # moved them to INFO MODULES): the gateway answers the older clients too
    assert cmd(con, "AI.INFO")[:2] == [b"Version", b"1.2.7"]
    # the deprecated MODELSET, and a model in chunks of MODEL_CHUNK_SIZE both ways
    assert cmd(con, "AI.CONFIG", "MODEL_CHUNK_SIZE", 4) == b"OK"
    assert cmd(con, "AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") == 4
    assert cmd(con, "AI.MODELSET", "m2", "STUB", "CPU", "BLOB", blob[:5], blob[5:]) == b"OK"
    chunks = cmd(con, "AI.MODELGET", "m2", "BLOB")
    assert b"".join(chunks) == blob and all(len(c) <= 4 for c in chunks)
    assert cmd(con, "AI.MODELDEL", "m") == b"OK"
    assert error_of(con, "AI.MODELGET", "m") == "model key is empty"
    assert error_of(con, "AI.MODELEXECUTE", "m", "INPUTS", 1, "a", "OUTPUTS", 1, "b") == (
        "model key is empty"
    )


def test_stored_text_that_is_not_utf8_is_refused_with_its_name(con: redis.Redis) -> None:
    """A model's or script's tag, names and source are kept as text: bytes that are not UTF-8
    are refused, saying which argument (not Python's codec error), and nothing is stored."""
    source = (
        "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n"
    )
    blob = ("BLOB", stub_blob("add"))
    assert error_of(con, "AI.MODELSTORE", "m", "STUB", "CPU", "TAG", b"v\xff", *blob) == (
        "TAG is not valid UTF-8"
    )
    assert error_of(con, "AI.MODELSTORE", "m", "TF", "CPU", "INPUTS", 1, b"a\xff", "OUTPUTS", 1,
                    "b", *blob) == "INPUTS name is not valid UTF-8"  # fmt: skip
    script = ("AI.SCRIPTSTORE", "s", "CPU")
    assert error_of(con, *script, "TAG", b"\xff", "ENTRY_POINTS", 1, "bar", "SOURCE", source) == (
        "TAG is not valid UTF-8"
    )
    assert error_of(con, *script, "ENTRY_POINTS", 1, b"b\xff", "SOURCE", source) == (
        "ENTRY_POINTS name is not valid UTF-8"
    )
    assert error_of(con, *script, "ENTRY_POINTS", 1, "bar", "SOURCE",
                    source.encode() + b"# caf\xe9\n") == "SOURCE is not valid UTF-8"  # fmt: skip
    assert cmd(con, "EXISTS", "m", "s") == 0


def test_a_store_no_worker_could_check_is_logged(
    con: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """No live worker serves the device: the store is accepted unchecked, as the client's is
    with a warning, and the gateway says so in its log (its client can only be told OK)."""
    with caplog.at_level(logging.WARNING, logger="aiworker.gateway"):
        assert cmd(con, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", b"not a model") == b"OK"
    assert any(
        "model m was stored without being verified" in r.getMessage()
        and "no live worker serves queue CPU" in r.getMessage()
        for r in caplog.records
    ), caplog.records


def test_model_errors_at_store_time(con: redis.Redis, worker: Worker) -> None:
    assert error_of(con, "AI.MODELSTORE", "m", "NOPE", "CPU", "BLOB", b"x") == "unsupported backend"
    assert error_of(con, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB") == (
        "wrong number of arguments for 'AI.MODELSTORE' command"
    )
    assert error_of(con, "AI.MODELSTORE", "m", "TF", "CPU", "BLOB", b"x") == (
        "INPUTS not specified for TF"
    )
    # batch settings larger than a model hash's readers take back, with RedisAI's messages
    store = ("AI.MODELSTORE", "m", "STUB", "CPU", "BATCHSIZE")
    blob = ("BLOB", stub_blob("add"))
    assert error_of(con, *store, 10**30, *blob) == "Invalid argument for BATCHSIZE"
    assert error_of(con, *store, 2**63 - 1, *blob) == "Invalid argument for BATCHSIZE"
    assert error_of(con, *store, 2, "MINBATCHSIZE", 1, "MINBATCHTIMEOUT", 10**25, *blob) == (
        "Invalid argument for MINBATCHTIMEOUT"
    )
    assert cmd(con, "EXISTS", "m") == 0
    # a model that does not load is refused before anything is stored (a worker checked it)
    message = error_of(con, "AI.MODELSTORE", "m", "ONNX", "CPU", "BLOB", b"not a model" * 500)
    assert message
    assert cmd(con, "EXISTS", "m") == 0
    assert cmd(con, "AI.CONFIG", "GET", "BACKENDSPATH") is None
    assert cmd(con, "AI.CONFIG", "LOADBACKEND", "TORCH", "libtorch.so") == b"OK"
    assert error_of(con, "AI.CONFIG", "LOADBACKEND", "NOPE", "x.so") == "unsupported backend"
    assert error_of(con, "AI.CONFIG", "MODEL_CHUNK_SIZE", "x") == (
        "MODEL_CHUNK_SIZE: invalid chunk size"
    )


def test_scripts(con: redis.Redis, worker: Worker) -> None:
    pytest.importorskip("torch")
    source = (
        "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        "    return tensors[0] + tensors[1]\n"
    )
    assert cmd(con, "AI.SCRIPTSTORE", "s", "CPU", "TAG", "t1", "ENTRY_POINTS", 1, "bar",
               "SOURCE", source) == b"OK"  # fmt: skip
    assert cmd(con, "AI.SCRIPTGET", "s", "META") == [
        b"device", b"CPU", b"tag", b"t1", b"Entry Points", [b"bar"],
    ]  # fmt: skip
    assert cmd(con, "AI.SCRIPTGET", "s", "SOURCE") == source.encode()
    assert cmd(con, "AI._SCRIPTSCAN") == [[b"s", b"t1"]]
    cmd(con, "AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 1, 2)
    assert cmd(con, "AI.SCRIPTEXECUTE", "s", "bar", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b") == (
        b"OK"
    )
    assert cmd(con, "AI.TENSORGET", "b", "VALUES") == [b"2", b"4"]
    old = "def bar(a: Tensor, b: Tensor):\n    return a * b\n"
    assert cmd(con, "AI.SCRIPTSET", "o", "CPU", "SOURCE", old) == b"OK"
    assert cmd(con, "AI.SCRIPTRUN", "o", "bar", "INPUTS", "a", "b", "OUTPUTS", "c") == b"OK"
    assert cmd(con, "AI.TENSORGET", "c", "VALUES") == [b"2", b"8"]
    assert error_of(con, "AI.SCRIPTSTORE", "x", "CPU", "ENTRY_POINTS", 1, "nope",
                    "SOURCE", source) == "Function nope does not exist in the given script."  # fmt: skip
    assert cmd(con, "AI.SCRIPTDEL", "s") == b"OK"
    assert error_of(con, "AI.SCRIPTGET", "s") == "script key is empty"


def test_dags(con: redis.Redis, worker: Worker) -> None:
    cmd(con, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", stub_blob("add"))
    cmd(con, "AI.MODELSTORE", "f", "STUB", "CPU", "BLOB", stub_blob("fail", message="boom"))
    cmd(con, "AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 2, 3)
    reply = cmd(
        con, "AI.DAGEXECUTE", "LOAD", 1, "a", "PERSIST", 1, "c", "|>",
        "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "c", "|>",
        "AI.TENSORGET", "c", "VALUES", "|>", "AI.TENSORGET", "c", "META",
    )  # fmt: skip
    assert reply == [b"OK", [b"4", b"6"], [b"dtype", b"FLOAT", b"shape", [2]]]
    assert cmd(con, "AI.TENSORGET", "c", "VALUES") == [b"4", b"6"]
    failed = cmd(con, "AI.DAGEXECUTE_RO", "LOAD", 1, "a", "|>", "AI.MODELEXECUTE", "f",
                 "INPUTS", 1, "a", "OUTPUTS", 1, "x", "|>", "AI.TENSORGET", "x")  # fmt: skip
    assert isinstance(failed[0], redis.ResponseError) and str(failed[0]) == "boom"
    assert failed[1] == b"NA"
    assert cmd(con, "AI.DAGRUN", "|>", "AI.TENSORSET", "t", "INT32", 2, "VALUES", 1, 2,
               "|>", "AI.TENSORGET", "t", "VALUES") == [b"OK", [1, 2]]  # fmt: skip
    assert cmd(con, "AI.DAGRUN_RO", "|>", "AI.TENSORSET", "t", "INT8", 1, "VALUES", 1,
               "|>", "AI.TENSORGET", "t", "META") == [b"OK", [b"dtype", b"INT8", b"shape", [1]]]  # fmt: skip
    assert error_of(con, "AI.DAGEXECUTE", "LOAD", 1, "a", "|>", "AI.TENSORGET", "zz") == (
        "INPUT key cannot be found in DAG"
    )


def test_timeout_is_a_simple_string(con: redis.Redis, client: Client) -> None:
    """No worker here: a request whose TIMEOUT passes is answered TIMEDOUT, not an error."""
    from conftest import stalled_worker

    cmd(con, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", stub_blob("add"))
    cmd(con, "AI.TENSORSET", "a", "FLOAT", 1, "VALUES", 1)
    stalled_worker(client)
    reply = cmd(con, "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b",
                "TIMEOUT", 50)  # fmt: skip
    assert reply == b"TIMEDOUT"


def test_names_are_checked(con: redis.Redis) -> None:
    """The workers' rules: UTF-8 names, nothing written under aiworker's prefix."""
    assert "not valid UTF-8" in error_of(con, "AI.TENSORSET", b"\xff\xfe", "FLOAT", 1)
    assert error_of(con, "AI.TENSORSET", "aiworker:config", "FLOAT", 1).startswith("WRONGTYPE")
    assert error_of(con, "AI.TENSORSET", "aiworker:x", "INT8", 1, "BLOB", b"\1").startswith(
        "WRONGTYPE"
    )
    cmd(con, "AI.TENSORSET", "a", "FLOAT", 1, "VALUES", 1)
    assert error_of(
        con, "AI.MODELEXECUTE", "m", "INPUTS", 1, "a", "OUTPUTS", 1, "aiworker:queue:CPU"
    ).startswith("WRONGTYPE")
    assert cmd(con, "EXISTS", "aiworker:x") == 0


# pass-through, ordering, transactions ----------------------------------------------------


def test_pipeline_mixing_ai_and_plain_commands_keeps_order(
    con: redis.Redis, worker: Worker
) -> None:
    cmd(con, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", stub_blob("add"))
    pipe = con.pipeline(transaction=False)
    pipe.execute_command("SET", "k", "1")
    pipe.execute_command("AI.TENSORSET", "a", "INT32", 2, "VALUES", 1, 2)
    pipe.execute_command("EXISTS", "a")
    pipe.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b")
    pipe.execute_command("INCR", "k")
    pipe.execute_command("AI.TENSORGET", "b", "VALUES")
    pipe.execute_command("DEL", "a")
    pipe.execute_command("AI.TENSORGET", "a")
    pipe.execute_command("GET", "k")
    out = pipe.execute(raise_on_error=False)
    assert out[:7] == [True, b"OK", 1, b"OK", 2, [2, 4], 1]
    assert isinstance(out[7], redis.ResponseError)
    assert out[8] == b"2"


def test_many_pipelined_commands(con: redis.Redis) -> None:
    pipe = con.pipeline(transaction=False)
    for n in range(2000):
        if n % 3 == 0:
            pipe.execute_command("AI.TENSORSET", f"t{n}", "INT32", 1, "VALUES", n)
        else:
            pipe.execute_command("SET", f"k{n}", n)
        pipe.execute_command("EXISTS", f"t{n}" if n % 3 == 0 else f"k{n}")
    out = pipe.execute()
    assert out == [x for n in range(2000) for x in ((b"OK" if n % 3 == 0 else True), 1)]


def test_multi_exec(gateway: Gateway, con: redis.Redis) -> None:
    pipe = con.pipeline(transaction=True)
    pipe.execute_command("SET", "x", "1")
    pipe.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "a", "OUTPUTS", 1, "b")
    pipe.execute_command("INCR", "x")
    with pytest.raises(redis.ResponseError) as info:
        pipe.execute()
    assert "Cannot run RedisAI command within a transaction or a LUA script" in str(info.value)
    assert cmd(con, "GET", "x") == b"2"  # as with RedisAI, the rest of the transaction ran
    # the reply shape, command by command
    sock = raw_socket(gateway)
    sock.sendall(
        b"MULTI\r\nSET y 1\r\nAI.SCRIPTEXECUTE s f\r\nGET y\r\nAI.DAGRUN |> AI.TENSORGET a\r\n"
        b"EXEC\r\nQUIT\r\n"
    )
    refused = b"-ERR Cannot run RedisAI command within a transaction or a LUA script\r\n"
    assert read_until_closed(sock) == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n+OK\r\n"
        + refused
        + b"$1\r\n1\r\n"
        + refused
        + b"+OK\r\n"
    )
    # DISCARD, and WATCH aborting a transaction
    cmd(con, "MULTI")
    cmd(con, "AI.TENSORGET", "t")
    assert cmd(con, "DISCARD") == b"OK"
    assert cmd(con, "AI.TENSORSET", "t", "FLOAT", 1) == b"OK"  # runs again after DISCARD


def test_ai_commands_other_than_jobs_run_inside_the_transaction(
    gateway: Gateway, con: redis.Redis, client: Client
) -> None:
    """As in RedisAI 1.2.7: at EXEC, atomically and in order with the client's own commands."""
    sock = raw_socket(gateway)
    sock.sendall(
        b"MULTI\r\nAI.TENSORSET t INT8 2 VALUES 1 2\r\nEXISTS t\r\nAI.TENSORGET t VALUES\r\n"
        b"AI.TENSORGET nope\r\nAI.TENSORSET t2 INT8 x\r\nDEL t\r\nEXEC\r\nQUIT\r\n"
    )
    assert read_until_closed(sock) == (
        b"+OK\r\n" + b"+QUEUED\r\n" * 6 + b"*6\r\n+OK\r\n:1\r\n*2\r\n:1\r\n:2\r\n"
        b"-ERR tensor key is empty or in a different shard\r\n-ERR invalid or negative value found in tensor shape\r\n"
        b":1\r\n+OK\r\n"
    )
    # what takes more than one round trip finishes right after EXEC, before the next command:
    # a tensor over 1 MB, a model store (run whole, off the event loop)
    big = np.arange(300_000, dtype=np.float32)
    pipe = con.pipeline(transaction=True)
    pipe.execute_command("AI.TENSORSET", "big", "FLOAT", big.size, "BLOB", big.tobytes())
    pipe.execute_command("AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", stub_blob("add"))
    pipe.execute_command("SET", "x", "1")
    assert pipe.execute() == [b"OK", b"OK", True]
    assert cmd(con, "AI.TENSORGET", "big", "META") == [b"dtype", b"FLOAT", b"shape", [300_000]]
    assert cmd(con, "AI.MODELGET", "m", "META")[:4] == [b"backend", b"STUB", b"device", b"CPU"]
    assert np.array_equal(client.tensorget("big"), big)
    # nothing runs when EXEC does not: EXECABORT, DISCARD
    cmd(con, "MULTI")
    cmd(con, "AI.TENSORSET", "t3", "INT8", 1, "VALUES", 1)
    with pytest.raises(redis.ResponseError):
        cmd(con, "NOSUCHCOMMAND")
    assert "discarded because of previous errors" in error_of(con, "EXEC")  # EXECABORT
    cmd(con, "MULTI")
    cmd(con, "AI.TENSORSET", "t3", "INT8", 1, "VALUES", 1)
    assert cmd(con, "DISCARD") == b"OK"
    assert client.exists("t3") == 0


def test_ai_commands_in_a_transaction_keep_their_order_on_a_fresh_redis(
    gateway: Gateway, client: Client
) -> None:
    """Redis without aiworker's scripts loaded (a restart, SCRIPT FLUSH): an AI.* command queued
    in MULTI still runs in its place (its script went by SHA, NOSCRIPT, and ran again only after
    EXEC: the commands after it did not see the tensor)."""
    # as a user granted what docs/security.md names for a requester writing its own tensors
    # (EVALSHA and SCRIPT LOAD, not EVAL)
    client.acl_setuser("writer", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+evalsha", "+script|load", "+hget", "+hset", "+exists",
                                 "+del", "+type", "+rename", "+persist", "+hgetall", "+hmget",
                                 "+hstrlen", "+multi", "+exec", "+auth", "+quit"])  # fmt: skip
    try:
        client.script_flush()
        sock = raw_socket(gateway)
        sock.sendall(
            b"AUTH writer pw\r\nMULTI\r\nAI.TENSORSET t INT8 1 VALUES 7\r\n"
            b"AI.TENSORGET t VALUES\r\nEXISTS t\r\nEXEC\r\nQUIT\r\n"
        )
        assert read_until_closed(sock) == (
            b"+OK\r\n+OK\r\n" + b"+QUEUED\r\n" * 3
            + b"*3\r\n+OK\r\n*1\r\n:7\r\n:1\r\n+OK\r\n"
        )  # fmt: skip
    finally:
        client.acl_deluser("writer")
    # a script is loaded once a transaction, however many commands call it
    client.config_resetstat()
    pipe = connect(gateway).pipeline(transaction=True)
    for n in range(5):
        pipe.execute_command("AI.TENSORSET", f"t{n}", "INT8", 1, "VALUES", n)
    assert pipe.execute() == [b"OK"] * 5
    assert client.info("commandstats")["cmdstat_script|load"]["calls"] == 1


def test_watch_survives_ai_commands(gateway: Gateway, client: Client) -> None:
    """An AI.* command of a connection that WATCHes runs off its connection: a plan's own
    MULTI/EXEC (here a tensor over 1 MB) would end the client's WATCH."""
    con = connect(gateway)
    big = np.zeros(300_000, dtype=np.float32)
    cmd(con, "WATCH", "w")
    assert cmd(con, "AI.TENSORSET", "big", "FLOAT", big.size, "BLOB", big.tobytes()) == b"OK"
    client.set("w", "changed")
    cmd(con, "MULTI")
    cmd(con, "SET", "x", "1")
    assert cmd(con, "EXEC") is None  # the WATCH held
    # and, as with RedisAI, writing a watched key through AI.TENSORSET aborts the transaction
    cmd(con, "WATCH", "t")
    cmd(con, "AI.TENSORSET", "t", "INT8", 1, "VALUES", 1)
    cmd(con, "MULTI")
    cmd(con, "SET", "x", "2")
    assert cmd(con, "EXEC") is None
    assert client.get("x") is None
    # without WATCH, AI.* commands run on the connection's own Redis connection again
    assert cmd(con, "AI.TENSORGET", "t", "VALUES") == [1]


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_select_queued_in_a_transaction_moves_ai_commands_after_exec(
    gateway: Gateway, client: Client, redis_server: Any, protocol: int
) -> None:
    """SELECT inside MULTI changes the DB when EXEC runs it: AI.* commands after EXEC use it on
    every connection they run on (a WATCHing client's in threads, a RESP3 client's on a second
    connection); an AI.* command queued after it in the same transaction runs there too."""
    con = connect(gateway, protocol)
    pipe = con.pipeline(transaction=True)
    pipe.execute_command("SELECT", 5)
    pipe.execute_command("AI.TENSORSET", "inside", "INT8", 1, "VALUES", 1)
    pipe.execute_command("AI.MODELSTORE", "stored", "STUB", "CPU", "BLOB", stub_blob("add"))
    assert pipe.execute() == [True, b"OK", b"OK"]
    cmd(con, "AI.TENSORSET", "own", "INT8", 1, "VALUES", 1)
    cmd(con, "WATCH", "w")
    cmd(con, "AI.TENSORSET", "watched", "INT8", 1, "VALUES", 1)
    db5 = redis.Redis(host="127.0.0.1", port=redis_server.port, db=5)
    try:
        # a store runs whole after EXEC, yet in the DB the transaction selected before it
        assert sorted(k for k in db5.scan_iter() if not k.startswith(b"aiworker:")) == [
            b"inside",
            b"own",
            b"stored",
            b"watched",
        ]
        assert client.exists("inside", "own", "stored", "watched") == 0
    finally:
        db5.flushdb()


def test_a_subscribe_queued_in_a_transaction_subscribes_when_exec_runs(
    gateway: Gateway, redis_server: Any, client: Client
) -> None:
    """As on Redis: SUBSCRIBE inside MULTI is QUEUED, EXEC's reply holds the subscription, and
    from there the connection gets the channel's messages (the gateway made it a pipe at once,
    so that a DISCARD left it one and AI.* commands went to Redis as unknown commands)."""
    stream = b"MULTI\r\nSET x 1\r\nSUBSCRIBE ch\r\nEXEC\r\nPING\r\n"
    answers = []
    for address in (("127.0.0.1", redis_server.port), gateway.address()):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(stream)
        received = read_replies(sock, 5)
        wait_until(lambda: client.publish("ch", "hi") == 1)
        answers.append(received + read_replies(sock, 1))
        sock.close()
        wait_until(lambda: client.publish("ch", "-") == 0)
    direct, through = answers
    assert through == direct
    assert direct.endswith(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
    # a DISCARDed one, or one a WATCH aborts, subscribes nothing: AI.* commands still work
    sock = raw_socket(gateway)
    sock.sendall(b"MULTI\r\nSUBSCRIBE ch\r\nDISCARD\r\nAI.TENSORSET t INT8 1 VALUES 1\r\n")
    assert read_replies(sock, 4) == b"+OK\r\n+QUEUED\r\n+OK\r\n+OK\r\n"
    sock.sendall(b"WATCH w\r\n")
    assert read_replies(sock, 1) == b"+OK\r\n"
    client.set("w", "changed")
    sock.sendall(b"MULTI\r\nPSUBSCRIBE c*\r\nEXEC\r\nAI.TENSORGET t VALUES\r\n")
    assert read_replies(sock, 4) == b"+OK\r\n+QUEUED\r\n*-1\r\n*1\r\n:1\r\n"
    sock.close()


def test_more_commands_than_the_gateway_holds_after_a_subscribing_exec(
    gateway: Gateway, redis_server: Any
) -> None:
    """The commands pipelined behind an EXEC that subscribes wait for its reply; past 4,096 the
    client's socket is not read, and the pipe the EXEC starts must read it again (it stopped
    after ~9,000 of 10,000 PINGs, for good)."""
    stream = b"MULTI\r\nSUBSCRIBE c\r\nEXEC\r\n" + b"PING\r\n" * 10_000
    answers = []
    for address in (("127.0.0.1", redis_server.port), gateway.address()):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(stream)
        received = read_replies(sock, 3 + 10_000)
        sock.sendall(b"PING x\r\n")
        answers.append(received + read_replies(sock, 1))
        sock.close()
    assert answers[1] == answers[0]


@pytest.mark.parametrize(
    "stream", [b"SUBSCRIBE c\r\nPING\r\n", b"MULTI\r\nSUBSCRIBE c\r\nEXEC\r\nPING\r\n"]
)
def test_a_subscribed_client_that_half_closes_gets_its_replies(
    gateway: Gateway, redis_server: Any, stream: bytes
) -> None:
    """A client shuts its side after subscribing and a PING: Redis answers both, then closes.
    Through the pipe the end goes on to Redis after what came before it (the gateway closed at
    once: nothing, or EXEC's reply without the PING's)."""
    answers = []
    for address in (("127.0.0.1", redis_server.port), gateway.address()):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(stream)
        sock.shutdown(socket.SHUT_WR)
        answers.append(read_until_closed(sock))
        sock.close()
    assert answers[1] == answers[0] and answers[0].endswith(b"$4\r\npong\r\n$0\r\n\r\n")


def test_a_transaction_either_subscribes_or_runs_ai_commands(
    gateway: Gateway, client: Client
) -> None:
    """An AI.* command's plan may make Redis calls after EXEC, which a pipe would mistake for
    pub/sub traffic: whichever of the two comes second gets an error in EXEC's reply. A store
    runs on a connection of its own: it mixes with a SUBSCRIBE in either order."""
    sock = raw_socket(gateway)
    store = command(b"AI.MODELSTORE", b"m", b"STUB", b"CPU", b"BLOB", stub_blob("add"))
    sock.sendall(b"MULTI\r\nSUBSCRIBE ch\r\n" + store + b"EXEC\r\n")
    assert read_replies(sock, 4) == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n+OK\r\n"
    )
    assert client.exists("m")
    sock.close()
    sock = raw_socket(gateway)
    sock.sendall(b"MULTI\r\nAI.TENSORSET t INT8 1 VALUES 1\r\nSUBSCRIBE ch\r\nEXEC\r\nPING\r\n")
    refused = b"-ERR gateway: a transaction cannot both subscribe and run RedisAI commands\r\n"
    assert read_replies(sock, 5) == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n" + refused + b"+PONG\r\n"
    )
    sock.sendall(b"MULTI\r\nSUBSCRIBE ch\r\nAI.TENSORGET t VALUES\r\nEXEC\r\nPING\r\n")
    assert read_replies(sock, 5) == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
        + refused
        + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"  # subscribed: PING as Redis answers it then
    )
    sock.close()


def test_exec_without_multi_keeps_the_watch(gateway: Gateway, client: Client) -> None:
    """A stray EXEC is refused and changes nothing: the WATCH before it still aborts the
    transaction after it (it was taken as ended, and AI.* commands ran as if unwatched)."""
    con = connect(gateway)
    cmd(con, "WATCH", "w")
    assert "EXEC without MULTI" in error_of(con, "EXEC")
    client.set("w", "changed")
    big = np.zeros(300_000, np.float32)  # its write takes a MULTI of its own on the connection
    assert cmd(con, "AI.TENSORSET", "big", "FLOAT", big.size, "BLOB", big.tobytes()) == b"OK"
    cmd(con, "MULTI")
    cmd(con, "SET", "x", "1")
    assert cmd(con, "EXEC") is None and client.get("x") is None


def test_replies_the_gateway_gives_itself_are_queued_in_a_transaction(
    client: Client, settings: Settings
) -> None:
    """COMMAND GETKEYS of an AI.* command and the emulated CLUSTER KEYSLOT answer QUEUED inside
    MULTI and take their place in EXEC's reply, as Redis' own commands do."""
    with running_gateway(settings, emulate_cluster=True) as gw:
        sock = raw_socket(gw)
        sock.sendall(b"MULTI\r\nCOMMAND GETKEYS AI.TENSORGET a\r\nCLUSTER KEYSLOT foo\r\n"
                     b"SET k v\r\nEXEC\r\nQUIT\r\n")  # fmt: skip
        assert read_until_closed(sock) == (
            b"+OK\r\n" + b"+QUEUED\r\n" * 3 + b"*3\r\n*1\r\n$1\r\na\r\n:12182\r\n+OK\r\n+OK\r\n"
        )


def test_ai_commands_cost_no_second_redis_connection(
    gateway: Gateway, worker: Worker, client: Client
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.ones(2, np.float32))
    for _ in range(4):  # the worker's threads have their connections
        client.modelexecute("m", ["a", "a"], ["b"])
    before = len(client.client_list())
    con = connect(gateway)
    cmd(con, "SET", "k", "v")
    cmd(con, "AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 1, 2)
    assert cmd(con, "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b") == b"OK"
    assert cmd(con, "AI.TENSORGET", "b", "VALUES") == [b"2", b"4"]
    assert len(client.client_list()) == before + 1


def test_jobs_believe_only_their_own_reply(
    gateway: Gateway, client: Client, settings: Settings
) -> None:
    """The Python client's wait plan, driven on the client's connection: a forged reply naming
    the job's id does not end its wait, a worker's forward is followed (issue "reply identity")."""
    from test_reply_identity import X, beside, forged, victim_entry

    w = Worker(settings.replace(devices=("CPU", "CPU:1"))).start()
    try:
        wait_until(lambda: client.zcard(client.keyspace.workers) > 0, timeout=10)
        client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
        client.tensorset("a", X)
        con = connect(gateway)
        replies: list[Any] = []
        job = threading.Thread(target=lambda: replies.append(
            cmd(con, "AI.MODELEXECUTE", "slow", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "c")))  # fmt: skip
        job.start()
        stream, entry_id, fields = victim_entry(client)
        client.xadd(beside(client, stream), {**forged(fields[b"reply"]), "origin": entry_id})
        job.join(30)
        assert replies == [b"OK"]
        assert client.tensorget("c").tolist() == (X + X).tolist(), "it returned once its job ran"
        # the model moves to another device: the gateway's cached queue is stale, the worker
        # forwards the job there and the gateway follows
        client.modelstore("slow", "STUB", "CPU:1", stub_blob("mul"))
        assert cmd(con, "AI.MODELEXECUTE", "slow", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "c") == (
            b"OK"
        )
        assert client.tensorget("c").tolist() == (X * X).tolist()
    finally:
        w.stop(timeout=10)


def test_a_model_moved_off_a_retired_device_runs_on_every_connection(
    gateway: Gateway, client: Client, settings: Settings
) -> None:
    """The gateway caches each model's device queue (per identity, for all its connections):
    once no live worker serves the cached queue, the model's device is read again and the job,
    taken back unread, goes where the model is now."""
    job = ("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "c")
    x = np.array([2, 3], np.float32)
    old = Worker(settings.replace(devices=("CPU:1",))).start()
    new = Worker(settings).start()
    try:
        client.modelstore("m", "STUB", "CPU:1", stub_blob("add"))
        client.tensorset("a", x)
        assert cmd(connect(gateway), *job) == b"OK"
        client.modelstore("m", "STUB", "CPU", stub_blob("mul"))
        old.stop(timeout=10)
        for _ in range(2):
            assert cmd(connect(gateway), *job) == b"OK"
            assert client.tensorget("c").tolist() == [4, 9]
        assert client.infoget("m")["calls"] == 2
    finally:
        old.stop(timeout=10)
        new.stop(timeout=10)


def test_a_job_longer_than_the_first_wait(gateway: Gateway, worker: Worker, client: Client) -> None:
    """A reply that does not come within the job's first BLPOP is waited for off the event
    loop, which keeps serving the other clients."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
    client.tensorset("a", np.ones(2, np.float32))
    con, other = connect(gateway), connect(gateway)
    replies: list[Any] = []
    job = threading.Thread(target=lambda: replies.append(
        cmd(con, "AI.MODELEXECUTE", "slow", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b")))  # fmt: skip
    job.start()
    time.sleep(0.8)
    started = time.monotonic()
    assert cmd(other, "AI.TENSORGET", "a", "VALUES") == [b"1", b"1"]
    assert time.monotonic() - started < 0.5
    job.join(30)
    assert replies == [b"OK"]
    assert cmd(con, "AI.TENSORGET", "b", "VALUES") == [b"2", b"2"]


@pytest.mark.parametrize("protocol", [2, 3])
def test_blpop_and_subscribe_through_the_gateway(
    gateway: Gateway, client: Client, protocol: int
) -> None:
    waiter = connect(gateway, protocol=protocol)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(waiter.blpop(["q"], timeout=10)))
    thread.start()
    time.sleep(0.2)
    client.rpush("q", "hello")
    thread.join(10)
    assert [list(item) for item in result] == [[b"q", b"hello"]]  # a list in RESP3
    sub = connect(gateway, protocol=protocol).pubsub()
    sub.subscribe("news")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    wait_until(lambda: client.publish("news", "hi") == 1)
    message = sub.get_message(timeout=5)
    assert message is not None and message["data"] == b"hi"
    sub.close()


def busy_script(seconds: int) -> bytes:
    """A Lua script that keeps Redis busy for about ``seconds`` (every later command waits).
    By CPU time where scripts have ``os.clock`` (Redis 7.2+, Valkey: there TIME is the script's
    start time, and the loop would spin until Redis' busy reply), else by TIME (Redis 7.0)."""
    return (
        b"local ok, clock = pcall(function() return os.clock end) "
        b"if ok then local t = clock() + %d while clock() < t do end "
        b"else local t = redis.call('TIME')[1] + %d "
        b"while tonumber(redis.call('TIME')[1]) < t do end end" % (seconds, seconds)
    )


def read_replies(sock: socket.socket, count: int) -> bytes:
    """What a socket receives until ``count`` RESP replies are complete."""
    sock.settimeout(10)
    data = b""
    while True:
        pos, found = 0, 0
        while found < count and (end := reply_end(data, pos)) > 0:
            pos, found = end, found + 1
        if found == count:
            return data[:pos]
        received = sock.recv(65536)
        assert received, f"closed after {found} of {count} replies: {data[-300:]!r}"
        data += received


@pytest.mark.parametrize("size", [10, 200_000])
def test_a_command_cut_when_subscribe_starts_the_pipe(
    gateway: Gateway, redis_server: Any, size: int
) -> None:
    """SUBSCRIBE makes the connection a pipe to Redis; a command whose first part came in the
    same read goes on to Redis whole (small, or an AI.* argument that was being received in
    place), and Redis answers it as it answers a direct client."""
    later = command(b"AI.TENSORSET", b"t", b"UINT8", b"%d" % size, b"BLOB", b"\1" * size)
    later += command(b"PING")
    cut = len(later) // 3
    answers = []
    for address in (("127.0.0.1", redis_server.port), gateway.address()):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(command(b"SUBSCRIBE", b"ch") + later[:cut])
        time.sleep(0.2)
        sock.sendall(later[cut:])
        answers.append(read_replies(sock, 3))
        sock.close()
    direct, through = answers
    assert through == direct and direct.count(b"\r\n-ERR") == 1


def test_subscribe_after_a_job_while_an_argument_comes_in_place(
    gateway: Gateway, worker: Worker, client: Client
) -> None:
    """A pipeline held behind a slow job: the large argument of a command after SUBSCRIBE
    starts coming in place meanwhile; when SUBSCRIBE makes the connection a pipe, what came of
    that command and what comes later go to Redis as they are."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=700))
    client.tensorset("a", np.ones(2, np.float32))
    later = command(b"AI.TENSORSET", b"t", b"UINT8", b"300000", b"BLOB", b"\1" * 300_000)
    later += command(b"PING")
    stream = command(
        b"AI.MODELEXECUTE", b"slow", b"INPUTS", b"2", b"a", b"a", b"OUTPUTS", b"1", b"b"
    )
    stream += command(b"SUBSCRIBE", b"ch") + later[:100_000]
    sock = raw_socket(gateway)
    sock.sendall(stream)
    time.sleep(0.2)
    sock.sendall(later[100_000:200_000])  # into the argument's own buffer, the job still runs
    time.sleep(1.0)
    sock.sendall(later[200_000:])
    replies = read_replies(sock, 4)
    assert replies.startswith(b"+OK\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n-ERR ")
    assert b"AI.TENSORSET" in replies and replies.endswith(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
    assert not client.exists("t")
    sock.close()


def test_a_client_that_half_closes_gets_every_reply(
    gateway: Gateway, client: Client, worker: Worker
) -> None:
    """A pipeline then shutdown(SHUT_WR) (``nc -N``): Redis runs what it received and answers,
    then closes; so does the gateway (it once dropped them all). Behind a job, for which RedisAI
    blocked the client, nothing runs once the end came (Redis frees a blocked client at its
    end): a client that gave up on its job and closed finds nothing it sent after it done
    later (the job itself finishes and is answered)."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("identity", sleep_ms=300))
    client.tensorset("a", np.ones(2, np.float32))
    sock = raw_socket(gateway)
    sock.sendall(b"SET x 1\r\nAI.TENSORSET t INT8 1 VALUES 7\r\nAI.TENSORGET t VALUES\r\n"
                 b"AI.MODELEXECUTE slow INPUTS 1 a OUTPUTS 1 b\r\nSET y 1\r\n"
                 b"AI.TENSORSET u INT8 1 VALUES 7\r\n")  # fmt: skip
    sock.shutdown(socket.SHUT_WR)
    assert read_until_closed(sock) == b"+OK\r\n+OK\r\n*1\r\n:7\r\n+OK\r\n"
    assert client.exists("x", "t", "b") == 3
    time.sleep(0.3)
    assert client.exists("y", "u") == 0
    sock.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_select_and_auth_decide_where_ai_commands_run(
    gateway: Gateway, client: Client, redis_server: Any, protocol: int
) -> None:
    """In RESP3 too (HELLO 3 AUTH ...)."""
    con = connect(gateway, protocol, db=3)
    assert cmd(con, "AI.TENSORSET", "t3", "INT8", 1, "VALUES", 3) == b"OK"
    assert client.exists("t3") == 0
    db3 = redis.Redis(host="127.0.0.1", port=redis_server.port, db=3)
    assert db3.exists("t3") == 1
    db3.flushdb()
    # ACL users: AI.* commands run with the credentials the client authenticated with
    client.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+@read", "+auth", "+select", "+hello"])  # fmt: skip
    try:
        limited = connect(gateway, protocol, username="reader", password="pw")
        cmd(con, "SELECT", 0)
        cmd(con, "AI.TENSORSET", "r", "INT8", 1, "VALUES", 1)
        assert cmd(limited, "AI.TENSORGET", "r", "VALUES") == [1]
        with pytest.raises(redis.exceptions.NoPermissionError):  # -NOPERM, as Redis sends it
            cmd(limited, "AI.TENSORSET", "r", "INT8", 1, "VALUES", 2)
        with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
            cmd(limited, "AUTH", "reader", "wrong")
        assert cmd(limited, "AI.TENSORGET", "r", "VALUES") == [1]
    finally:
        client.acl_deluser("reader")


# ACL user ``lim``: keys ``pub:*`` and aiworker's own, ``ro:*`` read only, nothing else.
LIMITED_RULE = ("lim", "on", ">pw", "~pub:*", "~aiworker:*", "%R~ro:*", "+@all")


@pytest.fixture
def limited_user(client: Client) -> Iterator[tuple[str, str]]:
    """The ACL user of ``LIMITED_RULE``."""
    client.execute_command("ACL", "SETUSER", *LIMITED_RULE)
    try:
        yield "lim", "pw"
    finally:
        client.acl_deluser("lim")


def test_jobs_read_and_write_only_keys_the_clients_acl_allows(
    gateway: Gateway, settings: Settings, worker: Worker, limited_user: tuple[str, str]
) -> None:
    """A worker reads and writes a job's keys with its own credentials: the gateway checks
    them against the client's ACL first, as Redis checked the keys RedisAI declared (a user
    denied a key read it through ``AI.DAGEXECUTE_RO LOAD`` and overwrote it through OUTPUTS)."""
    con = connect(gateway)
    cmd(con, "AI.MODELSTORE", "pub:m", "STUB", "CPU", "BLOB", stub_blob("add"))
    for key, value in (("pub:a", 1), ("ro:a", 2), ("ro:b", 3), ("secret", 42)):
        cmd(con, "AI.TENSORSET", key, "FLOAT", 1, "VALUES", value)
    cmd(con, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", stub_blob("add"))
    username, password = limited_user
    lim = connect(gateway, username=username, password=password)
    denied = redis.Redis.from_url(settings.redis_url, username=username, password=password)
    with pytest.raises(redis.exceptions.NoPermissionError) as direct:
        denied.hget("secret", "dtype")
    refused = [
        ("AI.DAGEXECUTE_RO", "LOAD", 1, "secret", "|>", "AI.TENSORGET", "secret", "VALUES"),
        ("AI.DAGEXECUTE", "PERSIST", 1, "secret", "|>",
         "AI.TENSORSET", "secret", "FLOAT", 1, "VALUES", 7),
        ("AI.MODELEXECUTE", "pub:m", "INPUTS", 2, "secret", "pub:a", "OUTPUTS", 1, "pub:o"),
        ("AI.MODELEXECUTE", "pub:m", "INPUTS", 2, "pub:a", "pub:a", "OUTPUTS", 1, "secret"),
        ("AI.MODELEXECUTE", "pub:m", "INPUTS", 2, "ro:a", "pub:a", "OUTPUTS", 1, "ro:b"),
        ("AI.MODELEXECUTE", "m", "INPUTS", 2, "pub:a", "pub:a", "OUTPUTS", 1, "pub:o"),
        ("AI.DAGEXECUTE", "LOAD", 1, "pub:a", "|>",
         "AI.MODELEXECUTE", "m", "INPUTS", 2, "pub:a", "pub:a", "OUTPUTS", 1, "o"),
    ]  # fmt: skip
    for args in refused:
        with pytest.raises(redis.exceptions.NoPermissionError) as info:
            cmd(lim, *args)
        assert str(info.value) == str(direct.value), args  # Redis' own refusal
    assert cmd(lim, "AI.MODELEXECUTE", "pub:m", "INPUTS", 2, "ro:a", "pub:a",
               "OUTPUTS", 1, "pub:b") == b"OK"  # fmt: skip
    assert cmd(lim, "AI.TENSORGET", "pub:b", "VALUES") == [b"3"]
    assert cmd(con, "AI.TENSORGET", "secret", "VALUES") == [b"42"]
    assert cmd(con, "AI.TENSORGET", "ro:b", "VALUES") == [b"3"]
    assert not denied.exists("pub:o")


def refused_by_redis() -> list[tuple[Any, ...]]:
    """AI.* commands of the ``limited_user`` that Redis refuses, each its own way through the
    gateway (``ro:*`` may be read only, ``secret:*`` not at all): a tensor set in one script
    call, one staged under a temporary key in a MULTI, a model's metadata read, a model stored
    by a blocking client."""
    return [
        ("AI.TENSORSET", "ro:t", "FLOAT", 1, "VALUES", 1),
        ("AI.TENSORSET", "ro:t", "FLOAT", 10_000, "BLOB", bytes(40_000)),
        ("AI.INFO", "secret:m"),
        ("AI.MODELGET", "secret:m", "META"),
        ("AI.MODELSTORE", "ro:m2", "STUB", "CPU", "BLOB", stub_blob("add")),
    ]


def test_refusals_are_answered_in_redis_own_words(
    gateway: Gateway, settings: Settings, client: Client, limited_user: tuple[str, str]
) -> None:
    """Whatever path a refused AI.* command takes, its reply is Redis' NOPERM, as RedisAI's
    was: a 40 KB TENSORSET, AI.INFO and MODELDEL (a MULTI on the client's connection) were
    answered EXECABORT's "Transaction discarded because of previous errors.", a store redis-py's
    "Command # 1 (DEL ro:m2) of pipeline caused error: ...", which names aiworker's commands."""
    con = connect(gateway)
    cmd(con, "AI.MODELSTORE", "secret:m", "STUB", "CPU", "BLOB", stub_blob("add"))
    cmd(con, "AI.MODELSTORE", "ro:m", "STUB", "CPU", "BLOB", stub_blob("add"))
    username, password = limited_user
    lim = connect(gateway, username=username, password=password)
    denied = redis.Redis.from_url(settings.redis_url, username=username, password=password)
    with pytest.raises(redis.exceptions.NoPermissionError) as direct:
        denied.hget("secret:m", "backend")
    for args in [*refused_by_redis(), ("AI.MODELDEL", "ro:m")]:
        with pytest.raises(redis.exceptions.NoPermissionError) as info:
            cmd(lim, *args)
        assert str(info.value) == str(direct.value), args[:2]
    assert client.exists("ro:m") and not client.exists("ro:t", "ro:m2")


REACH = """
def run(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute(args[0], args[1:])
    return torch.zeros(1)
"""


def test_through_the_gateway_a_script_reaches_its_declared_keys_only(
    con: redis.Redis, client: Client, worker: Worker
) -> None:
    """A script's KEYS ``{t}`` reaches every key of the tag (RedisAI's rule): Redis was asked
    about the client's rights to ``{t}`` only, so through the gateway the script reached keys
    the client's ACL may deny. There it reaches what it declared; a direct client's, the tag."""
    pytest.importorskip("torch")
    cmd(con, "AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "run", "SOURCE", REACH)
    through_tag = ("AI.SCRIPTEXECUTE", "s", "run", "KEYS", 1, "{t}", "ARGS", 3, "SET", "x{t}", 1,
                   "OUTPUTS", 1, "o{t}")  # fmt: skip
    assert "not declared" in error_of(con, *through_tag)
    assert not client.exists("x{t}")
    declared = ("AI.SCRIPTEXECUTE", "s", "run", "KEYS", 1, "x{t}", "ARGS", 3, "SET", "x{t}", 1,
                "OUTPUTS", 1, "o{t}")  # fmt: skip
    assert cmd(con, *declared) == b"OK" and client.get("x{t}") == b"1"
    client.delete("x{t}")
    assert client.scriptexecute("s", "run", keys=["{t}"], args=["SET", "x{t}", "2"],
                                outputs=["o{t}"]) == "OK"  # fmt: skip
    assert client.get("x{t}") == b"2"


def test_a_model_store_whose_blob_cannot_be_staged_for_a_check_fails(
    gateway: Gateway, client: Client, worker: Worker
) -> None:
    """A model owner who may not write aiworker:verify:* had its staging refused unnoticed: the
    worker found nothing to check and the model was stored unverified, answered OK."""
    client.execute_command("ACL", "SETUSER", "owner", "on", ">pw", "~pub:*", "~aiworker:queue:*",
                           "~aiworker:reply:*", "~aiworker:models", "%R~aiworker:worker*",
                           "%R~aiworker:config", "+@all")  # fmt: skip
    try:
        owner = connect(gateway, username="owner", password="pw")
        with pytest.raises(redis.exceptions.NoPermissionError):
            cmd(owner, "AI.MODELSTORE", "pub:m", "STUB", "CPU", "BLOB", stub_blob("add"))
        assert not client.exists("pub:m")
    finally:
        client.acl_deluser("owner")


def test_writes_of_ai_commands_refused_by_redis_are_errors(
    gateway: Gateway, client: Client, worker: Worker
) -> None:
    """AI.CONFIG and AI.INFO ... RESETSTAT answered OK although Redis refused their write."""
    con = connect(gateway)
    cmd(con, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", stub_blob("add"))
    client.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+@read", "+@connection"])  # fmt: skip
    try:
        reader = connect(gateway, username="reader", password="pw")
        for args in (("AI.CONFIG", "MODEL_CHUNK_SIZE", 1000), ("AI.INFO", "m", "RESETSTAT")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                cmd(reader, *args)
        assert cmd(reader, "AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") != 1000
    finally:
        client.acl_deluser("reader")


def test_a_password_of_any_bytes_reaches_redis_exactly(gateway: Gateway, client: Client) -> None:
    """Redis' passwords are any bytes: AI.* commands that run off the client's own connection
    (a WATCHing client's, on a blocking client; a RESP3 client's, on a second connection) log in
    with the very bytes the client sent (they were decoded with U+FFFD in their place)."""
    password = b"p\xff\xfe"
    client.execute_command("ACL", "SETUSER", "bin", "on", b">" + password, "~*", "&*", "+@all")
    try:
        sock = raw_socket(gateway)
        sock.sendall(command(b"AUTH", b"bin", password) + b"AI.TENSORSET t INT8 1 VALUES 1\r\n"
                     b"WATCH w\r\nAI.TENSORGET t VALUES\r\nUNWATCH\r\n"
                     + command(b"HELLO", b"3", b"AUTH", b"bin", password)
                     + b"AI.TENSORGET t VALUES\r\nQUIT\r\n")  # fmt: skip
        replies = read_until_closed(sock)
        assert replies.startswith(b"+OK\r\n+OK\r\n+OK\r\n*1\r\n:1\r\n+OK\r\n%")
        assert replies.endswith(b"*1\r\n:1\r\n+OK\r\n"), replies[-200:]
    finally:
        client.acl_deluser("bin")


def test_a_password_in_the_urls_query_leaves_a_client_its_own(
    client: Client, settings: Settings
) -> None:
    """The gateway's URL may give its password as ``?password=`` (redis-py reads it there too):
    the AI.* commands run off a signed-in client's connection (a WATCHing client's, model and
    script stores) logged in with that password and the client's user name: WRONGPASS."""
    client.execute_command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "&*", "+@all")
    try:  # the default user has no password: it takes any
        with running_gateway(settings.replace(redis_url=settings.redis_url + "?password=x")) as gw:
            sock = raw_socket(gw)
            sock.sendall(b"AUTH alice alicepw\r\nWATCH w\r\nAI.TENSORSET t INT8 1 VALUES 1\r\n"
                         b"AI.TENSORGET t VALUES\r\nQUIT\r\n")  # fmt: skip
            assert read_until_closed(sock) == b"+OK\r\n+OK\r\n+OK\r\n*1\r\n:1\r\n+OK\r\n"
    finally:
        client.acl_deluser("alice")


def test_a_selecting_client_watches_through_a_unix_socket_url(tmp_path: Any) -> None:
    """Before a Redis reached over its unix socket, the pooled client a WATCHing (or storing)
    client's AI.* commands run on was made from ``unix:/path``, which redis-py refuses: a
    client that had SELECTed a DB got "Redis URL must specify one of the following schemes"."""
    path = tmp_path / "redis.sock"
    with RedisServer(extra_args=["--unixsocket", str(path), "--unixsocketperm", "700"]):
        settings = Settings(redis_url=f"unix://{path}")
        with running_gateway(settings) as gw:
            sock = raw_socket(gw)
            sock.sendall(b"SELECT 5\r\nWATCH w\r\nAI.TENSORSET t INT8 1 VALUES 1\r\nQUIT\r\n")
            assert read_until_closed(sock) == b"+OK\r\n" * 4
        assert redis.Redis(unix_socket_path=str(path), db=5).exists("t") == 1


def test_a_selecting_client_keeps_its_db_before_a_urls_query_db(
    client: Client, settings: Settings
) -> None:
    """A URL may name its DB in the query (``?db=3``, which redis-py reads before the path's):
    a client that SELECTed DB 4 and WATCHes had its AI.* commands run in DB 3."""
    with running_gateway(settings.replace(redis_url=settings.redis_url + "?db=3")) as gw:
        sock = raw_socket(gw)
        sock.sendall(b"SET u 1\r\nSELECT 4\r\nWATCH w\r\nAI.TENSORSET t INT8 1 VALUES 1\r\n"
                     b"QUIT\r\n")  # fmt: skip
        assert read_until_closed(sock) == b"+OK\r\n" * 5
    base = settings.redis_url.rpartition("/")[0]
    keys = {db: sorted(redis.Redis.from_url(f"{base}/{db}").keys()) for db in (0, 3, 4)}
    assert keys == {0: [], 3: [b"u"], 4: [b"t"]}


@contextmanager
def requiring_auth(client: Client, settings: Settings) -> Iterator[Gateway]:
    """A gateway with ``--require-auth`` before a Redis whose password is ``secret`` (the
    gateway's URL carries it)."""
    client.config_set("requirepass", "secret")
    try:
        with running_gateway(settings.replace(redis_url=_with_password(settings)),
                             require_auth=True) as gw:  # fmt: skip
            yield gw
    finally:
        redis.Redis.from_url(_with_password(settings)).config_set("requirepass", "")


def test_require_auth(client: Client, settings: Settings) -> None:
    with requiring_auth(client, settings) as gw:
        sock = raw_socket(gw)
        sock.sendall(b"PING\r\nAI.TENSORGET t\r\nGET x\r\nAUTH wrong\r\nGET x\r\n"
                     b"AUTH secret\r\nAI.TENSORSET t INT8 1 VALUES 1\r\nQUIT\r\n")  # fmt: skip
        noauth = b"-NOAUTH Authentication required.\r\n"
        assert read_until_closed(sock) == noauth * 3 + (
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
            + noauth
            + b"+OK\r\n+OK\r\n+OK\r\n"
        )
        with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
            cmd(connect(gw, password="wrong"), "PING")
        authed = connect(gw, password="secret")
        assert cmd(authed, "AI.TENSORGET", "t", "VALUES") == [1]
        resp3 = connect(gw, protocol=3, password="secret")  # HELLO 3 AUTH default secret
        assert cmd(resp3, "AI.TENSORGET", "t", "VALUES") == [1]
        with pytest.raises(redis.AuthenticationError):
            cmd(connect(gw, protocol=3, password="wrong"), "PING")


def test_a_redis_wanting_a_password_the_gateways_url_lacks(
    client: Client, settings: Settings
) -> None:
    """Without --require-auth, before a Redis with a password the gateway's URL does not give:
    an AI.* command before AUTH got Redis' internal errors ("Protocol error: unauthenticated
    multibulk length", "connection to Redis lost") and the client was dropped. It gets NOAUTH,
    as every other command does, and works once the client has authenticated."""
    client.config_set("requirepass", "secret")
    try:
        with running_gateway(settings) as gw:
            sock = raw_socket(gw)
            sock.sendall(b"AI.TENSORSET t INT8 1 VALUES 1\r\nAI.DAGEXECUTE |> AI.TENSORGET t\r\n"
                         b"AI.INFO t\r\nGET t\r\nAUTH secret\r\n"
                         b"AI.TENSORSET t INT8 1 VALUES 1\r\nQUIT\r\n")  # fmt: skip
            noauth = b"-NOAUTH Authentication required.\r\n"
            assert read_until_closed(sock) == noauth * 4 + b"+OK\r\n+OK\r\n+OK\r\n"
    finally:
        redis.Redis.from_url(_with_password(settings)).config_set("requirepass", "")


@pytest.mark.parametrize(
    ("login", "logged"),
    [
        ("", "Redis wants a password the gateway's URL does not give"),
        (":wrong@", "Redis refused the credentials of the gateway's URL (invalid username"),
    ],
)
def test_a_refused_url_login_is_logged_as_such(
    client: Client, settings: Settings, caplog: pytest.LogCaptureFixture, login: str, logged: str
) -> None:
    """Redis answered and refused the gateway's URL's login: the gateway logged "Redis not
    reachable yet", with a text about a HELLO it never sent."""
    client.config_set("requirepass", "secret")
    base = _with_password(settings).rpartition("/")[0]
    try:
        url = base.replace(":secret@", login)
        with (
            caplog.at_level("WARNING", "aiworker.gateway"),
            running_gateway(settings.replace(redis_url=url)),
        ):
            pass
        assert logged in caplog.text
        assert "not reachable" not in caplog.text
    finally:
        redis.Redis.from_url(base).config_set("requirepass", "")


@pytest.mark.parametrize("login", ["", ":wrong@"])
def test_a_client_that_signs_in_uses_the_urls_db(
    client: Client, settings: Settings, login: str
) -> None:
    """A gateway whose URL names DB 3 but no password (or a wrong one), before a Redis that
    wants one: Redis refuses the URL's SELECT until the client signs in, so the client's keys
    went to DB 0 while the model stores the gateway runs for it went to DB 3 (its job then found
    no model). After each AUTH (or HELLO with AUTH, a RESET's too) until one passes, the URL's
    DB is selected."""
    client.config_set("requirepass", "secret")
    base = _with_password(settings).rpartition("/")[0]
    url = base.replace(":secret@", login) + "/3"
    try:
        with running_gateway(settings.replace(redis_url=url), require_auth=True) as gw:
            sock = raw_socket(gw)
            sock.sendall(b"AUTH wrong\r\nAUTH secret\r\nSET a 1\r\n"
                         b"AI.TENSORSET t INT8 1 VALUES 1\r\nRESET\r\n"
                         b"HELLO 2 AUTH default secret\r\nSET b 1\r\nSELECT 4\r\nSET c 1\r\n"
                         b"QUIT\r\n")  # fmt: skip
            assert read_until_closed(sock).endswith(b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n")
        keys = {db: sorted(redis.Redis.from_url(f"{base}/{db}").keys()) for db in (0, 3, 4)}
        assert keys == {0: [], 3: [b"a", b"b", b"t"], 4: [b"c"]}
    finally:
        redis.Redis.from_url(base).config_set("requirepass", "")


def test_a_failed_auth_pipelined_behind_other_commands_keeps_its_reply(
    client: Client, settings: Settings
) -> None:
    """Redis 7.2+ and Valkey drop the error of a failed AUTH (or HELLO ... AUTH) that follows
    commands not answered yet (redis/redis#15640): the gateway, which opens its connection with
    its own AUTH, lost the client's first failed AUTH's reply and waited for it for good. It
    sends an AUTH once what came before is answered: every reply comes, in order."""
    with requiring_auth(client, settings) as gw:
        sock = raw_socket(gw)
        sock.sendall(b"AUTH secret\r\nPING\r\nAUTH wrong\r\nPING\r\n"
                     b"HELLO 2 AUTH default wrong\r\nAI.TENSORSET t INT8 1 VALUES 1\r\nQUIT\r\n")  # fmt: skip
        wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        assert read_until_closed(sock) == (
            b"+OK\r\n+PONG\r\n" + wrongpass + b"+PONG\r\n" + wrongpass + b"+OK\r\n+OK\r\n"
        )


def test_require_auth_reads_hello_as_redis_does(client: Client, settings: Settings) -> None:
    """HELLO's options are read left to right, AUTH taking two values, SETNAME one: in
    ``HELLO 2 SETNAME AUTH SETNAME x`` no AUTH is given (a client name ``AUTH``, then ``x``),
    so nothing passes after it; a HELLO without AUTH before one gets Redis' own refusal."""
    with requiring_auth(client, settings) as gw:
        sock = raw_socket(gw)
        sock.sendall(b"HELLO 2 SETNAME AUTH SETNAME x\r\nHELLO 2\r\nSET stolen yes\r\n"
                     b"AI.TENSORSET t INT8 1 VALUES 1\r\nHELLO 2 SETNAME a AUTH default "
                     b"secret\r\nGET stolen\r\nQUIT\r\n")  # fmt: skip
        data, replies, pos = read_replies(sock, 7), [], 0
        while pos < len(data):
            end = reply_end(data, pos)
            replies.append(data[pos:end])
            pos = end
        assert replies[:2] == [HELLO_NOAUTH] * 2
        assert replies[2:4] == [b"-NOAUTH Authentication required.\r\n"] * 2
        assert replies[4].startswith(b"*14\r\n") and replies[5:] == [b"$-1\r\n", b"+OK\r\n"]
        assert not client.exists("stolen", "t")


def _with_password(settings: Settings) -> str:
    return settings.redis_url.replace("redis://", "redis://:secret@")


def test_client_reply_off_and_skip(gateway: Gateway) -> None:
    sock = raw_socket(gateway)
    sock.sendall(
        b"CLIENT REPLY SKIP\r\nSET a 1\r\nGET a\r\nCLIENT REPLY OFF\r\nSET b 2\r\n"
        b"AI.TENSORSET t INT8 1 VALUES 1\r\nCLIENT REPLY ON\r\nEXISTS t\r\nQUIT\r\n"
    )
    assert read_until_closed(sock) == b"$1\r\n1\r\n+OK\r\n:1\r\n+OK\r\n"


def answered_both(stream: bytes, gateway: Gateway, redis_server: Any) -> tuple[bytes, bytes]:
    """What Redis, then the gateway, answer ``stream`` (which ends the connection: QUIT)."""
    answers = []
    for address in (("127.0.0.1", redis_server.port), gateway.address()):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(stream)
        answers.append(read_until_closed(sock))
        sock.close()
    return answers[0], answers[1]


def test_client_reply_on_ends_a_pending_skip_as_redis_does(
    gateway: Gateway, redis_server: Any
) -> None:
    """ON after SKIP is answered (the SKIP is over), and SKIP while OFF is ignored: the same
    bytes as Redis'."""
    stream = (b"CLIENT REPLY SKIP\r\nCLIENT REPLY ON\r\nPING\r\nCLIENT REPLY OFF\r\n"
              b"CLIENT REPLY SKIP\r\nCLIENT REPLY ON\r\nPING\r\nQUIT\r\n")  # fmt: skip
    direct, through = answered_both(stream, gateway, redis_server)
    assert through == direct == b"+OK\r\n+PONG\r\n+OK\r\n+PONG\r\n+OK\r\n"


def test_reset_turns_replies_on_again_as_redis_does(gateway: Gateway, redis_server: Any) -> None:
    """RESET ends CLIENT REPLY OFF and is answered (the gateway kept OFF for good: the client
    got no reply again); a SKIP just before it skips its reply, as in Redis."""
    stream = (b"CLIENT REPLY OFF\r\nSET x 1\r\nRESET\r\nPING\r\nCLIENT REPLY SKIP\r\n"
              b"RESET\r\nGET x\r\nQUIT\r\n")  # fmt: skip
    direct, through = answered_both(stream, gateway, redis_server)
    assert through == direct == b"+RESET\r\n+PONG\r\n$1\r\n1\r\n+OK\r\n"


def test_reset_makes_the_connection_as_a_new_one_is(
    settings: Settings, limited_user: tuple[str, str]
) -> None:
    """A new connection through the gateway is the URL's user in the URL's DB; after RESET
    (which leaves a Redis connection the default user in DB 0) it is that again, the user AI.*
    commands then run as."""
    user, password = limited_user
    url = settings.redis_url.replace("redis://", f"redis://{user}:{password}@")
    url = url.rsplit("/", 1)[0] + "/2"
    with running_gateway(settings.replace(redis_url=url)) as gw:
        con = connect(gw)
        assert cmd(con, "ACL", "WHOAMI") == b"lim"
        cmd(con, "AUTH", "default", "any")  # the tests' default user takes any password
        cmd(con, "SELECT", 0)
        assert cmd(con, "ACL", "WHOAMI") == b"default"
        assert cmd(con, "RESET") == "RESET"  # (redis-py decodes it)
        assert cmd(con, "ACL", "WHOAMI") == b"lim"
        assert cmd(con, "CLIENT", "INFO").split(b" db=")[1].startswith(b"2 ")


def test_client_unblock_does_not_end_a_job(
    gateway: Gateway, client: Client, worker: Worker
) -> None:
    """RedisAI's blocked clients could not be unblocked (CLIENT UNBLOCK answered 0): a job's
    wait on the client's connection ended by CLIENT UNBLOCK ... ERROR goes on to its reply (it
    gave the client an UNBLOCKED error while the job ran on and wrote its output)."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("identity", sleep_ms=1500))
    client.tensorset("a", np.ones(2, np.float32))
    con, other = connect(gateway), connect(gateway)
    replies: list[Any] = []
    job = threading.Thread(target=lambda: replies.append(
        cmd(con, "AI.MODELEXECUTE", "slow", "INPUTS", 1, "a", "OUTPUTS", 1, "b")))  # fmt: skip
    ident = con.client_id()
    job.start()
    time.sleep(0.3)
    wait_until(lambda: other.client_unblock(ident, error=True), timeout=1)  # its wait's BLPOP
    time.sleep(0.1)
    wait_until(lambda: other.client_unblock(ident), timeout=1)  # the next one: a timeout
    job.join(30)
    assert replies == [b"OK"]
    assert cmd(con, "AI.TENSORGET", "b", "VALUES") == [b"1", b"1"]


def test_commands_after_exec_wait_for_its_ai_commands(
    gateway: Gateway, client: Client, worker: Worker
) -> None:
    """A store in a transaction runs after EXEC (it is verified first): a command pipelined
    after EXEC runs once it is done, as the transaction's own would have (it went to Redis
    at once and did not see the model)."""
    slow_load = stub_blob("add", load_ms=500)  # a worker loads it to verify it
    sock = raw_socket(gateway)
    sock.sendall(b"MULTI\r\n" + command(b"AI.MODELSTORE", b"m", b"STUB", b"CPU", b"BLOB", slow_load)
                 + b"EXEC\r\nEXISTS m\r\nQUIT\r\n")  # fmt: skip
    assert read_until_closed(sock) == b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n:1\r\n+OK\r\n"


def test_quit_closes(gateway: Gateway) -> None:
    sock = raw_socket(gateway)
    sock.sendall(b"PING\r\nQUIT\r\nPING\r\n")
    assert read_until_closed(sock) == b"+PONG\r\n+OK\r\n"


def test_a_client_leaving_mid_pipeline_leaves_nothing_half_written(
    gateway: Gateway, client: Client
) -> None:
    blob = np.ones(256 * 1024, np.float32).tobytes()  # 1 MB each
    frame = b"".join(
        b"*6\r\n$12\r\nAI.TENSORSET\r\n$%d\r\nt%d\r\n$5\r\nFLOAT\r\n$6\r\n262144\r\n"
        b"$4\r\nBLOB\r\n$%d\r\n%s\r\n" % (len(b"t%d" % n), n, len(blob), blob)
        for n in range(20)
    )
    sock = raw_socket(gateway)
    sock.sendall(frame[: len(frame) // 2 + 12345])  # ends inside a blob
    sock.close()
    con = connect(gateway)
    assert cmd(con, "PING") is True  # the gateway goes on
    time.sleep(0.5)
    for n in range(20):
        if client.exists(f"t{n}"):
            assert np.array_equal(client.tensorget(f"t{n}"), np.ones(262144, np.float32))
    assert not client.exists("t19")


def test_a_client_leaving_after_exec_leaves_its_transaction_whole(
    gateway: Gateway, client: Client
) -> None:
    """A transaction's AI.* command may need a round trip after EXEC (here Redis lost the script
    that moves a staged tensor into place): a client lost (a reset) after sending EXEC, before
    its reply, no longer leaves the transaction half applied (the SETs done, the tensor staged,
    never moved): what the gateway started finishes. (A client that only closes its side is
    served as Redis serves it: ``test_a_client_that_half_closes_gets_every_reply``.)"""
    big = np.arange(500_000, dtype=np.float32)  # 2 MB: staged, then moved by a script
    client.script_flush()
    sock = raw_socket(gateway)
    sock.sendall(b"MULTI\r\nSET before 1\r\n"
                 + command(b"AI.TENSORSET", b"t", b"FLOAT", b"500000", b"BLOB", big.tobytes())
                 + b"SET after 1\r\n")  # fmt: skip
    time.sleep(0.2)  # the gateway has queued them all (their QUEUED replies stay unread)
    client.execute_command("CLIENT", "PAUSE", 500, "WRITE")  # EXEC's reply comes late
    sock.sendall(b"EXEC\r\n")
    time.sleep(0.2)  # EXEC reaches Redis, which holds it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset: the gateway loses the client before EXEC's reply
    wait_until(lambda: not gateway.sessions, timeout=10)
    assert client.exists("before", "after") == 2
    assert np.array_equal(client.tensorget("t"), big)
    assert not client.keys(client.keyspace.prefix + "tmp:*")


def test_a_client_leaving_during_a_blocking_command_is_let_go(
    client: Client, settings: Settings
) -> None:
    """Clients that close while BLPOP k 0 waits: Redis frees them at once. Through the
    gateway each kept its Redis connection blocked for good and its place among
    --max-connections (3 here): three such clients locked everyone out."""
    with running_gateway(settings, max_connections=3) as gw:
        for n in range(4):
            sock = raw_socket(gw)
            sock.sendall(command(b"BLPOP", b"nothing%d" % n, b"0"))
            wait_until(lambda: client.info("clients")["blocked_clients"] == 1)
            sock.close()
            wait_until(lambda: client.info("clients")["blocked_clients"] == 0)
            wait_until(lambda: not gw.sessions)
        assert cmd(connect(gw), "PING") is True


def leave_jobs_running(gw: Gateway, clients: int) -> None:
    """``clients`` clients that each send a job of the slow model and leave at once."""
    for _ in range(clients):
        sock = raw_socket(gw)
        sock.sendall(command(b"AI.MODELEXECUTE", b"slow", b"INPUTS", b"1", b"a",
                             b"OUTPUTS", b"1", b"b"))  # fmt: skip
        sock.close()


def test_clients_gone_while_their_job_runs_leave_their_place_at_once(
    client: Client, settings: Settings, worker: Worker
) -> None:
    """A client that sent a job and left kept its place among --max-connections until the job
    ended (or ``reply_timeout``): three such clients locked everyone else out."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("identity", sleep_ms=3000))
    client.tensorset("a", np.ones(1, np.float32))
    with running_gateway(settings, max_connections=3) as gw:
        leave_jobs_running(gw, 3)
        wait_until(lambda: len(gw.sessions) == 3 and not gw.connected)
        con = connect(gw)
        assert cmd(con, "PING") is True
        assert len(gw.sessions) >= 3  # still finishing their jobs
        con.close()
        wait_until(lambda: len(gw.sessions) == 3)
        # but no more than as many again: each holds its connection to Redis until then
        leave_jobs_running(gw, 3)
        wait_until(lambda: len(gw.sessions) == 6 and not gw.connected)
        assert read_until_closed(raw_socket(gw)) == b"-ERR max number of clients reached\r\n"


def test_a_gateway_on_a_unix_socket_only(client: Client, settings: Settings, tmp_path: Any) -> None:
    """``--listen '' --unix-socket PATH`` crashed at start; the socket's file was left behind
    (Redis removes it on shutdown)."""
    path = tmp_path / "gw.sock"
    with running_gateway(settings, listen="", unix_socket=str(path)) as gw:
        assert gw.address() == ("", 0)
        assert redis.Redis(unix_socket_path=str(path)).ping() is True
    assert not path.exists()
    emulating = {"listen": "", "unix_socket": str(path), "emulate_cluster": True}
    with pytest.raises(ConfigError, match="--listen"), running_gateway(settings, **emulating):
        pass


def test_emulated_cluster(client: Client, settings: Settings) -> None:
    with running_gateway(settings, emulate_cluster=True) as gw:
        con = connect(gw)
        host, port = gw.address()
        slots = cmd(con, "CLUSTER", "SLOTS")
        assert slots[0][:2] == [0, 16383] and slots[0][2][:2] == [host.encode(), port]
        shards = cmd(con, "CLUSTER", "SHARDS")
        assert shards[0][:2] == [b"slots", [0, 16383]]
        assert b"myself,master" in cmd(con, "CLUSTER", "NODES")
        assert b"cluster_state:ok" in cmd(con, "CLUSTER", "INFO")
        assert cmd(con, "CLUSTER", "KEYSLOT", "foo") == 12182
        assert cmd(con, "READONLY") is True
        # redis-py's cluster client works through it, AI.* commands included
        rc = redis.RedisCluster(host=host, port=port)
        rc.set("a", "1")
        assert rc.get("a") == b"1"
        node = rc.get_random_node()  # redis-py does not know where AI.* keys are
        assert rc.execute_command("AI.TENSORSET", "t", "INT8", 1, "VALUES", 4, target_nodes=node)
        assert client.tensorget("t").tolist() == [4]
        rc.close()


def test_many_idle_connections(gateway: Gateway) -> None:
    socks = [raw_socket(gateway) for _ in range(300)]
    con = connect(gateway)
    assert cmd(con, "PING") is True
    wait_until(lambda: len(gateway.sessions) >= 301)
    for sock in socks:
        sock.close()


def test_large_replies_between_pipelined_commands(con: redis.Redis) -> None:
    """Large tensors read back in one pipeline with small AI.* and plain commands: each reply in
    its place, whatever reads Redis' replies arrive in."""
    arrays = [np.random.default_rng(n).random(size, np.float32) for n, size in enumerate(
        (300_000, 16, 1 << 20, 70_000)
    )]  # fmt: skip
    pipe = con.pipeline(transaction=False)
    for n, array in enumerate(arrays):
        pipe.execute_command("AI.TENSORSET", f"t{n}", "FLOAT", array.size, "BLOB", array.tobytes())
    pipe.execute_command("SET", "k", b"v" * 200_000)
    for n in (0, 1, 2, 3, 2):
        pipe.execute_command("AI.TENSORGET", f"t{n}", "BLOB")
        pipe.execute_command("AI.TENSORGET", f"t{n}", "META", "BLOB")
        pipe.execute_command("GET", "k")
    pipe.execute_command("AI.TENSORGET", "missing", "BLOB")
    out = pipe.execute(raise_on_error=False)
    assert out[:5] == [b"OK"] * 4 + [True]
    for m, n in enumerate((0, 1, 2, 3, 2)):
        blob, meta, value = out[5 + 3 * m : 8 + 3 * m]
        assert blob == arrays[n].tobytes()
        assert meta == [b"dtype", b"FLOAT", b"shape", [arrays[n].size], b"blob", blob]
        assert value == b"v" * 200_000
    assert str(out[-1]) == "tensor key is empty or in a different shard"
