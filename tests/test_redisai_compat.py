"""redisai-py 1.3's public surface, method by method, against a real worker.

Written from redisai-py 1.3's source (``client.py``, ``dag.py``, ``pipeline.py``,
``command_builder.py``, ``postprocessor.py``, ``utils.py``) and RedisAI's ``commands.md``: the
constructor, every method's signature, its return value (post-processed and raw), the exceptions
redisai-py raised itself (types and messages word for word) and the server errors RedisAI sent.
Where redisai-py had a quirk, the expected value says so.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
import pytest
from conftest import stalled_worker, stub_blob, torch_blob
from redis.exceptions import ResponseError

from aiworker import Client, Worker
from aiworker.embedded import RedisServer

SCRIPT = """
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    b = tensors[1]
    return a + b

def bar_variadic(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    l = tensors[1:]
    return a + l[0]
"""
SCRIPT_OLD = """
def bar(a, b):
    return a + b

def bar_variadic(a, args : List[Tensor]):
    return args[0] + args[1]
"""
DEPRECATED = "Call to deprecated method {}. (Use {} instead) -- Deprecated since version 1.2.0."
NO_EXECUTE = (
    "You are using deprecated version of DAG, that does not supports {}.The new version requires "
    "giving at least one of LOAD, PERSIST and ROUTINGarguments when constructing the Dag"
)


@pytest.fixture
def con(client: Client) -> Client:
    """A worker-backed client with redisai-py's ``pt-minimal`` (a + b) at ``pt_model``."""
    client.modelstore("pt_model", "torch", "cpu", torch_blob("add"), tag="v7.0")
    return client


def store_pair(c: Client) -> None:
    c.tensorset("a", [2, 3, 2, 3], shape=(2, 2), dtype="float")
    c.tensorset("b", [2, 3, 2, 3], shape=(2, 2), dtype="float")


# the constructor ---------------------------------------------------------------------------


def test_constructor_takes_debug_and_enable_postprocess_first(redis_server: RedisServer) -> None:
    params = list(inspect.signature(Client).parameters)
    assert params[:3] == ["debug", "enable_postprocess", "args"]
    con = Client(True)  # redisai-py's test suite made its clients this way
    assert con.debug and con.enable_postprocess
    con.close()
    con = Client(False, False, "127.0.0.1", redis_server.port)  # the rest goes to redis.Redis
    assert con.ping() and not con.enable_postprocess
    con.close()


def test_debug_prints_each_command(
    redis_server: RedisServer, worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    con = Client(debug=True, port=redis_server.port)
    con.tensorset("x", (2, 3, 4, 5), dtype="float")
    assert capsys.readouterr().out.splitlines() == ["AI.TENSORSET x FLOAT 4 VALUES 2 3 4 5"]
    con.modelstore("m", "STUB", "CPU", b'{"op":"add"}', tag="v1")
    assert capsys.readouterr().out.splitlines() == [
        "AI.CONFIG GET MODEL_CHUNK_SIZE",  # redisai-py read the chunk size first
        'AI.MODELSTORE m STUB CPU TAG v1 BLOB b\'{"op":"add"}\'',
    ]
    con.modelexecute("m", ["x", "x"], "y", timeout=5000)
    con.set("native", 1)
    assert capsys.readouterr().out.splitlines() == [
        "AI.MODELEXECUTE m INPUTS 2 x x OUTPUTS 1 y TIMEOUT 5000",
        "SET native 1",
    ]
    con.close()


def test_from_url_in_debug_prints_no_command_of_its_own(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whether the server is a cluster is aiworker's own question (``INFO cluster``)."""
    con = Client.from_url(redis_server.url, debug=True)
    assert capsys.readouterr().out == ""
    con.set("native", 1)
    assert capsys.readouterr().out.splitlines() == ["SET native 1"]
    con.close()


@pytest.mark.parametrize("debug", [False, True])
def test_decode_responses_decodes_the_users_own_replies_only(
    con: Client, worker: Worker, redis_server: RedisServer, debug: bool
) -> None:
    """``decode_responses=True`` (an argument, or the URL's option) decodes what the user's
    redis-py calls return, not what aiworker reads: blobs, STRING tensors, models, and the
    replies of jobs that outlast the first wait for them (a private reply list's or the shared
    one's)."""
    con.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1200))
    con.tensorset("x", np.array([1, 2], np.float32))
    con.tensorset("s", ["ab", "c"], dtype="STRING")
    for url, options in [
        (redis_server.url, {"decode_responses": True}),
        (redis_server.url + "?decode_responses=true", {"shared_replies": True}),
    ]:
        c = Client.from_url(url, debug=debug, reply_timeout=30, **options)
        try:
            assert c.tensorget("x").tolist() == [1, 2]
            assert c.tensorget("s").tolist() == ["ab", "c"]
            assert c.modelget("pt_model")["blob"] == torch_blob("add")
            assert c.modelexecute("slow", ["x", "x"], ["y"]) == "OK"
            c.set("native", "é")
            assert c.get("native") == "é"
        finally:
            c.close()


def test_raw_replies_without_postprocess(con: Client, worker: Worker) -> None:
    con.enable_postprocess = False
    assert con.tensorset("x", [1, 2], dtype="float") == b"OK"
    assert con.tensorget("x") == [b"dtype", b"FLOAT", b"shape", [2], b"blob", b"\0\0\x80?\0\0\0@"]
    assert con.tensorget("x", as_numpy=False) == [
        b"dtype", b"FLOAT", b"shape", [2], b"values", [b"1", b"2"],
    ]  # fmt: skip
    assert con.tensorget("x", meta_only=True) == [b"dtype", b"FLOAT", b"shape", [2]]
    assert con.modelget("pt_model", meta_only=True) == [
        b"backend", b"TORCH", b"device", b"cpu", b"tag", b"v7.0", b"batchsize", 0,
        b"minbatchsize", 0, b"inputs", [b"a", b"b"], b"outputs", [b""], b"minbatchtimeout", 0,
    ]  # fmt: skip  # forward's argument names, one unnamed output: as RedisAI listed them
    assert con.modelexecute("pt_model", ["x", "x"], ["y"]) == b"OK"
    assert con.scriptstore("s", "cpu", SCRIPT, "bar", "t") == b"OK"
    assert con.scriptget("s", meta_only=True) == [
        b"device", b"cpu", b"tag", b"t", b"Entry Points", [b"bar"],
    ]  # fmt: skip
    assert con.infoget("pt_model")[:4] == [b"key", b"pt_model", b"type", b"MODEL"]
    assert con.inforeset("pt_model") == b"OK"
    assert con.config("MODEL_CHUNK_SIZE") == 535822336  # RedisAI answered an integer
    assert con.config("BACKENDSPATH", "/opt") == b"OK"
    assert con.config("BACKENDSPATH") == b"/opt"
    assert con.modeldel("pt_model") == b"OK"
    with pytest.warns(UserWarning):
        assert con.scriptscan() == [[b"s", b"t"]]


# redisai-py's own checks -------------------------------------------------------------------

TF_BLOB = b"\x08\x01"
CHECKS: list[tuple[str, Any, type[Exception], str]] = [
    ("modelstore-name", lambda c: c.modelstore(None, "TF", "CPU", TF_BLOB, inputs=["a"],
                                               outputs=["b"]),
     ValueError, "Model name was not given"),
    ("modelstore-device", lambda c: c.modelstore("m", "tf", "wrongdevice", TF_BLOB),
     ValueError, "Device not allowed. Use any from {"),
    ("modelstore-backend", lambda c: c.modelstore("m", "wrongbackend", "cpu", TF_BLOB),
     ValueError, "Backend not allowed. Use any from {"),
    ("modelstore-minbatch", lambda c: c.modelstore("m", "tf", "cpu", TF_BLOB, inputs=["a"],
                                                   outputs=["b"], minbatch=2),
     ValueError, "Minbatch is not allowed without batch"),
    ("modelstore-minbatchtimeout", lambda c: c.modelstore("m", "tf", "cpu", TF_BLOB, batch=4,
                                                          minbatchtimeout=1000),
     ValueError, "Minbatchtimeout is not allowed without minbatch"),
    ("modelstore-tf-io", lambda c: c.modelstore("m", "tf", "cpu", TF_BLOB, tag="v1.0"),
     ValueError, "Require keyword arguments inputs and outputs for TF models"),
    ("modelstore-io", lambda c: c.modelstore("m", "torch", "cpu", TF_BLOB, inputs=["a"],
                                             outputs=["b"]),
     ValueError, "Inputs and outputs keywords should not be specified for this backend"),
    ("modelset-device", lambda c: c.modelset("m", "torch", "gpu:0", TF_BLOB),
     ValueError, "Device not allowed. Use any from {"),
    ("modelset-tf-io", lambda c: c.modelset("m", "tf", "cpu", TF_BLOB),
     ValueError, "Require keyword arguments input and output for TF models"),
    ("modelexecute", lambda c: c.modelexecute("m", inputs=None, outputs=None),
     ValueError, "Missing required arguments for model execute command"),
    ("scriptstore-entry-points", lambda c: c.scriptstore("test", "cpu", SCRIPT, None),
     ValueError, "Missing required arguments for script store command"),
    ("scriptstore-script", lambda c: c.scriptstore("test", "cpu", None, "bar"),
     ValueError, "Missing required arguments for script store command"),
    ("scriptstore-device", lambda c: c.scriptstore("test", "tpu", SCRIPT, "bar"),
     ValueError, "Device not allowed. Use any from {"),
    ("scriptset-device", lambda c: c.scriptset("test", "cpu:1", SCRIPT_OLD),
     ValueError, "Device not allowed. Use any from {"),
    ("scriptexecute", lambda c: c.scriptexecute("test", function=None, keys=None, inputs=None),
     ValueError, "Missing required arguments for script execute command"),
    ("scriptexecute-scopes", lambda c: c.scriptexecute("test", "bar", outputs=["c"]),
     ValueError, "Missing required arguments for script execute command"),
    ("scriptrun", lambda c: c.scriptrun("test", None, ["a"], ["b"]),
     ValueError, "Missing required arguments for script run command"),
    ("tensorset-dtype", lambda c: c.tensorset("x", (2, 3), dtype="wrongtype", shape=(2,)),
     TypeError, "data type 'wrongtype' not understood"),
    ("tensorset-no-dtype", lambda c: c.tensorset("x", [1, 2]),
     TypeError, "tensorset() missing argument 'dtype' or value of 'dtype' is None"),
    ("tensorset-unsupported", lambda c: c.tensorset("x", [1], dtype="float128"),
     TypeError, "``float128`` is not supported by RedisAI. Currently supported types are ['float', "),
    ("tensorset-type", lambda c: c.tensorset("x", 1),
     TypeError, "``tensor`` argument must be a numpy array or a list or a tuple, but got "
                "<class 'int'>"),
    ("tensorset-numpy", lambda c: c.tensorset("x", np.ones(2, np.float16)),
     TypeError, "RedisAI doesn't support tensors of type float16"),
    ("dag-readonly", lambda c: c.dag(load="a", persist="b", readonly=True),
     RuntimeError, "READONLY requests cannot write (duh!) and should not have PERSISTing values"),
    ("dag-readonly-script", lambda c: c.dag(load="a", readonly=True).scriptexecute(
        "s", "bar", inputs=["a"], outputs=["b"]),
     RuntimeError, "AI.SCRIPTEXECUTE cannot be used in readonly mode"),
    ("dag-modelexecute", lambda c: _deprecated_dag(c).modelexecute("m", ["a"], ["b"]),
     RuntimeError, NO_EXECUTE.format("MODELEXECUTE")),
    ("dag-scriptexecute", lambda c: _deprecated_dag(c).scriptexecute("s", "f", inputs=["a"]),
     RuntimeError, NO_EXECUTE.format("SCRIPTEXECUTE")),
    ("dag-op-modelexecute", lambda c: c.dag(load="a").modelexecute("m", None, ["b"]),
     ValueError, "Missing required arguments for model execute command"),
]  # fmt: skip


def _deprecated_dag(c: Client) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return c.dag()


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS]
)
def test_client_side_checks(
    client: Client, call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        call(client)
    assert type(info.value) is error  # not a ResponseError: nothing was sent
    assert str(info.value).startswith(message), str(info.value)
    assert not client.keys("*")


def test_deprecation_warnings(con: Client, worker: Worker) -> None:
    store_pair(con)
    calls = [
        ("modelset", "modelstore", lambda: con.modelset("m2", "torch", "cpu", torch_blob("add"))),
        ("modelrun", "modelexecute", lambda: con.modelrun("pt_model", ["a", "b"], ["c"])),
        ("scriptset", "scriptstore", lambda: con.scriptset("s", "cpu", SCRIPT_OLD)),
        ("scriptrun", "scriptexecute", lambda: con.scriptrun("s", "bar", ["a", "b"], ["c"])),
        ("modelrun", "modelexecute",
         lambda: con.dag(load=["a", "b"]).modelrun("pt_model", ["a", "b"], ["c"])),
        ("run", "execute", lambda: con.dag(load="a").tensorget("a").run()),
    ]  # fmt: skip
    for method, replacement, call in calls:
        with pytest.warns(DeprecationWarning) as record:
            call()
        assert str(record[0].message) == DEPRECATED.format(method, replacement)
    with pytest.warns(DeprecationWarning) as record:
        con.dag()
    assert str(record[0].message) == (
        "Creating Dag without any of LOAD, PERSIST and ROUTING arguments"
        "is allowed only in deprecated AI.DAGRUN or AI.DAGRUN_RO commands"
    )
    for scan in (con.modelscan, con.scriptscan):
        with pytest.warns(UserWarning, match=r"^Experimental: (Model|Script) List API"):
            scan()


# return values -----------------------------------------------------------------------------


def test_tensors(client: Client) -> None:
    client.tensorset("x", (2, 3, 4, 5), dtype="float")
    assert client.tensorget("x", as_numpy=False) == {
        "dtype": "FLOAT", "shape": [4], "values": [2.0, 3.0, 4.0, 5.0],
    }  # fmt: skip
    client.tensorset("x", (2, 3, 4, 5), dtype="float64")
    assert client.tensorget("x", as_numpy=False)["dtype"] == "DOUBLE"
    assert client.tensorset("x", (2, 3, 4, 5), dtype="int16", shape=(2, 2)) == "OK"
    assert client.tensorget("x", as_numpy=False) == {
        "dtype": "INT16", "shape": [2, 2], "values": [2, 3, 4, 5],
    }  # fmt: skip
    assert client.tensorget("x", meta_only=True) == {"dtype": "INT16", "shape": [2, 2]}
    for values, dtype in (([1, 0], "bool"), (["a", "b"], "str"), ([7], "uint8")):
        assert client.tensorset("x", values, dtype=dtype) == "OK"
    assert client.tensorget("x").tolist() == [7]
    client.tensorset("s", ["hello", "wörld"], dtype="str")
    strings = client.tensorget("s")  # redisai-py made STRING tensors numpy str arrays
    assert strings.dtype.kind == "U" and strings.tolist() == ["hello", "wörld"]
    assert client.tensorget("s", as_numpy=False)["values"] == ["hello", "wörld"]
    array = np.array([2, 3])
    client.tensorset("n", array, shape=(9,), dtype="float")  # redisai-py ignored both for arrays
    out = client.tensorget("n")
    assert out.dtype == np.int64 and out.shape == (2,) and not out.flags.writeable
    mutable = client.tensorget("n", as_numpy_mutable=True)
    mutable[0] = 1
    assert mutable.tolist() == [1, 3] and client.tensorget("n").tolist() == [2, 3]
    with pytest.raises(ResponseError) as info:
        client.tensorset("u", np.ones(2, np.uint32))  # RedisAI's answer to UINT32
    assert str(info.value) == "invalid data type"
    with pytest.raises(ResponseError) as info:
        client.tensorget("missing")
    assert str(info.value) == "tensor key is empty or in a different shard"


def test_models(con: Client, worker: Worker) -> None:
    assert con.modelget("pt_model", meta_only=True) == {
        "backend": "TORCH", "device": "cpu", "tag": "v7.0", "batchsize": 0,
        "minbatchsize": 0, "inputs": ["a", "b"], "outputs": [""], "minbatchtimeout": 0,
    }  # fmt: skip
    blob = torch_blob("add")
    assert con.modelget("pt_model")["blob"] == blob
    con.config("MODEL_CHUNK_SIZE", len(blob) // 3)  # RedisAI's chunked MODELGET
    chunks = con.modelget("pt_model")["blob"]
    assert len(chunks) == len(blob) // (len(blob) // 3) + 1 and b"".join(chunks) == blob
    store_pair(con)
    assert con.modelexecute("pt_model", ["a", "b"], "c") == "OK"  # non-list output, as 1.3
    assert con.tensorget("c", as_numpy=False)["values"] == [4.0, 6.0, 4.0, 6.0]
    info = con.infoget("pt_model")
    assert info == {"key": "pt_model", "type": "MODEL", "backend": "TORCH", "device": "cpu",
                    "tag": "v7.0", "duration": info["duration"], "samples": 2, "calls": 1,
                    "errors": 0}  # fmt: skip
    assert con.inforeset("pt_model") == "OK"
    assert con.infoget("pt_model")["calls"] == 0
    with pytest.warns(UserWarning):
        assert con.modelscan() == [["pt_model", "v7.0"]]
    assert con.modeldel("pt_model") == "OK"
    with pytest.raises(ResponseError) as info_error:
        con.modelget("pt_model")
    assert str(info_error.value) == "model key is empty"
    assert con.loadbackend("TORCH", "/usr/lib/redis/modules/backends/redisai_torch") == "OK"


def test_batch_settings_given_as_text(con: Client) -> None:
    """redisai-py sent the words, which RedisAI read as numbers: a batch size read from a file or
    the environment is stored as one; text that is no number gets RedisAI's error."""
    blob = torch_blob("add")
    assert con.modelstore("m", "torch", "cpu", blob, batch="4", minbatch=b"2", minbatchtimeout="10")
    meta = con.modelget("m", meta_only=True)
    assert (meta["batchsize"], meta["minbatchsize"], meta["minbatchtimeout"]) == (4, 2, 10)
    for settings, message in [
        ({"batch": "four"}, "Invalid argument for BATCHSIZE"),
        ({"batch": "4", "minbatch": "-1"}, "Invalid argument for MINBATCHSIZE"),
        (
            {"batch": "4", "minbatch": "2", "minbatchtimeout": "1.5"},
            "Invalid argument for MINBATCHTIMEOUT",
        ),
    ]:
        with pytest.raises(ResponseError, match=f"^{message}$"):
            con.modelstore("m", "torch", "cpu", blob, **settings)
    assert con.modelget("m", meta_only=True) == meta


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MODEL_CHUNK_SIZE", 1.5, "MODEL_CHUNK_SIZE: invalid chunk size"),
        ("MODEL_CHUNK_SIZE", True, "MODEL_CHUNK_SIZE: invalid chunk size"),
        ("MODEL_CHUNK_SIZE", "1_000", "MODEL_CHUNK_SIZE: invalid chunk size"),
        ("THREADS_PER_QUEUE", 2.5, "THREADS_PER_QUEUE: invalid value"),
    ],
)
def test_config_reads_the_word_redisai_got(
    client: Client, name: str, value: Any, message: str
) -> None:
    """redisai-py sent ``str(value)``, which RedisAI read as an integer or refused: a float is
    not cut down to one (a 1-byte MODEL_CHUNK_SIZE would split every later model into a hash
    field per byte)."""
    before = client.config(name)
    with pytest.raises(ResponseError) as info:
        client.config(name, value)
    assert str(info.value) == message
    assert client.config(name) == before
    assert client.config(name, "4") == "OK" and client.config(name) == 4


def test_modelexecute_timedout_is_a_reply_not_an_error(con: Client) -> None:
    """RedisAI answered a request whose TIMEOUT passed in its queue with the string TIMEDOUT."""
    stalled_worker(con)
    store_pair(con)
    assert con.modelexecute("pt_model", ["a", "b"], ["c"], timeout=100) == "TIMEDOUT"


def test_a_model_that_does_not_load_is_refused(con: Client) -> None:
    pytest.importorskip("tensorflow")
    with pytest.raises(ResponseError) as info:  # redisai-py's test_run_tf_model
        con.modelstore("m", "tf", "cpu", torch_blob("add"), inputs=["a", "b"], outputs=["mul"])
    assert str(info.value) == "Invalid GraphDef"
    assert not con.exists("m")


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.modelstore(b"k\xff", "STUB", "CPU", stub_blob("add")),
        lambda c: c.tensorset(b"t\xff", np.ones(2, np.float32)),
        lambda c: c.tensorget(b"t\xff"),
        lambda c: c.scriptstore(b"s\xff", "CPU", SCRIPT, "bar"),
        lambda c: c.modelexecute("m", [b"a\xff"], ["b"]),
        lambda c: c.modeldel(b"k\xff"),
        lambda c: c.dag(persist=[b"p\xff"]).tensorset("p", [1.0], dtype="float").execute(),
    ],
    ids=["modelstore", "tensorset", "tensorget", "scriptstore", "modelexecute", "modeldel", "dag"],
)
def test_a_name_that_is_not_utf8_is_refused_with_it(con: Client, call: Any) -> None:
    """aiworker's names are text (the stream entry and the replies carry them): bytes that are
    not UTF-8 are refused naming them, as the gateway refuses them (not Python's codec error),
    before anything is written."""
    con.modelstore("m", "STUB", "CPU", stub_blob("add"))
    before = set(con.keys("*"))
    with pytest.raises(ResponseError, match=r"^key name '.\\xff' is not valid UTF-8$"):
        call(con)
    assert set(con.keys("*")) == before


def test_a_model_blob_given_as_text(con: Client) -> None:
    """redis-py sent text as UTF-8, which RedisAI took as the blob (loaded, or refused with the
    framework's message)."""
    assert con.modelstore("s", "STUB", "CPU", '{"op": "add"}') == "OK"
    assert con.modelget("s")["blob"] == b'{"op": "add"}'
    with pytest.raises(ResponseError, match=r"^Failed to load TorchScript model"):
        con.modelstore("t", "TORCH", "CPU", "not a model")


def test_scripts(con: Client, worker: Worker) -> None:
    with pytest.raises(ResponseError) as info:
        con.scriptstore("test", "cpu", "return 1", "f")
    assert str(info.value) == (
        "expected def but found 'return' here:   File \"<string>\", line 1 return 1 ~~~~~~ <--- "
        "HERE "
    )
    with pytest.raises(ResponseError) as info:
        con.scriptexecute("test", "bar", inputs=["a"], outputs=["c"])
    assert str(info.value) == "script key is empty"
    assert con.scriptstore("test", "cpu", SCRIPT, "bar") == "OK"
    store_pair(con)
    assert con.scriptexecute("test", "bar", inputs=["a", "b"], outputs=["c"]) == "OK"
    assert con.tensorget("c", as_numpy=False)["values"] == [4, 6, 4, 6]
    assert con.scriptget("test") == {
        "device": "cpu", "tag": "", "entry points": [b"bar"], "source": SCRIPT,
    }  # fmt: skip
    assert "source" not in con.scriptget("test", meta_only=True)
    con.scriptstore("myscript{1}", "cpu", SCRIPT, ["bar", "bar_variadic"], "version1")
    con.scriptexecute("myscript{1}", "bar_variadic", inputs=["a", "b", "b"], outputs=["c"])
    assert con.tensorget("c", as_numpy=False)["values"] == [4.0, 6.0, 4.0, 6.0]
    with pytest.warns(UserWarning):
        assert sorted(con.scriptscan()) == [["myscript{1}", "version1"], ["test", ""]]
    assert con.scriptdel("test") == "OK"
    with pytest.raises(ResponseError):
        con.scriptget("test")
    with pytest.warns(DeprecationWarning):  # the deprecated pair, positional tensors and $
        con.scriptset("scr", "cpu", SCRIPT_OLD)
        con.scriptrun("scr", "bar_variadic", inputs=["a", "$", "b", "b"], outputs=["c"])
    assert con.tensorget("c", as_numpy=False)["values"] == [4, 6, 4, 6]


def test_scripts_calling_redis(con: Client, worker: Worker) -> None:
    """redisai-py's test_scripts_redis_commands, end to end."""
    script = """
def redis_string_int_to_tensor(redis_value: Any):
    return torch.tensor(int(str(redis_value)))

def int_set_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    value = int(args[0])
    redis.execute("SET", key, str(value))
    res = redis.execute("GET", key)
    return redis_string_int_to_tensor(res)

def func(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])
    a = torch.stack(tensors).sum()
    b = redis_string_int_to_tensor(redis.execute("GET", keys[0]))
    redis.execute("DEL", keys[0])
    return b + a
"""
    con.scriptstore("myscript{1}", "cpu", script, ["int_set_get", "func"])
    con.scriptexecute("myscript{1}", "int_set_get", keys=["x{1}", "{1}"], args=["3"],
                      outputs=["y{1}"])  # fmt: skip
    assert con.tensorget("y{1}", as_numpy=False)["values"] == [3]
    for name, value in (("mytensor1{1}", 40), ("mytensor2{1}", 10), ("mytensor3{1}", 1)):
        con.tensorset(name, [value], dtype="float")
    con.scriptexecute("myscript{1}", "func", keys=["key{1}"],
                      inputs=["mytensor1{1}", "mytensor2{1}", "mytensor3{1}"], args=["3"],
                      outputs=["my_output{1}"])  # fmt: skip
    assert con.tensorget("my_output{1}", as_numpy=False)["values"] == [54]
    assert con.get("key{1}") is None


# DAGs --------------------------------------------------------------------------------------


def test_deprecated_dagrun(con: Client, worker: Worker) -> None:
    with pytest.warns(DeprecationWarning):
        dag = con.dag()
    dag.tensorset("a", [2, 3, 2, 3], shape=(2, 2), dtype="float")
    dag.tensorset("b", [2, 3, 2, 3], shape=(2, 2), dtype="float")
    with pytest.warns(DeprecationWarning):
        dag.modelrun("pt_model", ["a", "b"], ["output"])
    dag.tensorget("output")
    with pytest.warns(DeprecationWarning):
        result = dag.run()
    assert result[:3] == ["OK", "OK", "OK"]
    assert np.allclose(result[3], [[4.0, 6.0], [4.0, 6.0]])


def test_dagexecute(con: Client, worker: Worker) -> None:
    con.tensorset("a", [2, 3, 2, 3], shape=(2, 2), dtype="float")
    result = (
        con.dag(load="a")
        .tensorset("b", [2, 3, 2, 3], shape=(2, 2), dtype="float")
        .modelexecute("pt_model", ["a", "b"], ["output"])
        .tensorget("output")
        .execute()
    )
    assert result[:2] == ["OK", "OK"] and np.allclose(result[2], [[4, 6], [4, 6]])
    with pytest.raises(ResponseError):
        con.tensorget("b")  # DAG-local
    dag = con.dag(load=["a", "b2"], persist="output")
    with pytest.raises(ResponseError) as info:
        con.dag(load="wrongkey").tensorget("wrongkey").execute()
    assert str(info.value) == "tensor key is empty or in a different shard"
    del dag
    con.tensorset("b", [2, 3, 2, 3], shape=(2, 2), dtype="float")
    result = (
        con.dag(load=["a", "b"], persist="output")
        .modelexecute("pt_model", ["a", "b"], ["output"])
        .tensorget("output")
        .execute()
    )
    assert result[0] == "OK" and np.allclose(con.tensorget("output"), result[1])
    readonly = con.dag(load=["a", "b"], readonly=True)
    result = readonly.modelexecute("pt_model", ["a", "b"], ["o2"]).tensorget("o2").execute()
    assert result[0] == "OK" and not con.exists("o2")
    # redisai-py's DAG asked META plus the data for meta_only and kept it in the dict
    meta = con.dag(load="a").tensorget("a", meta_only=True).execute()[0]
    assert set(meta) == {"dtype", "shape", "blob"}


def test_dag_values_redisai_refuses_fail_its_execute(con: Client) -> None:
    """RedisAI refused a DAG's TENSORSET values when the DAG was sent: building it goes on, and
    ``execute`` raises (an earlier op's error first, as RedisAI read the ops in order)."""
    dag = con.dag(load="a").tensorset("x", ["x"], dtype="float").tensorget("x")
    with pytest.raises(ResponseError, match=r"^invalid value$"):
        dag.execute()
    dag = con.dag(load="a").tensorget("a").tensorset("x", [1, 2, 3], shape=(2,), dtype="float")
    with pytest.raises(ResponseError, match=r"^wrong number of values was given"):
        dag.tensorset("y", [1], dtype="uint32").execute()
    dag = con.dag(load="a").modelexecute("m", ["a", "a"], []).tensorset("x", ["x"], dtype="float")
    with pytest.raises(ResponseError, match=r"^Output count must be a positive integer$"):
        dag.execute()


# pipelines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transaction", [False, True])
def test_pipeline(con: Client, worker: Worker, transaction: bool) -> None:
    arr = np.array([[2.0, 3.0], [2.0, 3.0]], dtype=np.float32)
    pipe = con.pipeline(transaction=transaction)
    pipe = pipe.tensorset("a", arr).set("native", 1)
    pipe = pipe.tensorget("a", as_numpy=False)
    pipe = pipe.tensorget("a", as_numpy=True).tensorget("a", meta_only=True)
    pipe = pipe.modelexecute("pt_model", ["a", "a"], ["c"]).get("native")
    result = pipe.execute()
    assert result[:3] == [
        b"OK",
        True,
        {"dtype": "FLOAT", "shape": [2, 2], "values": [2.0, 3.0, 2.0, 3.0]},
    ]
    assert np.allclose(result[3], arr)
    assert result[4:] == [{"dtype": "FLOAT", "shape": [2, 2]}, b"OK", b"1"]
    assert con.tensorget("c").tolist() == [[4, 6], [4, 6]]


@pytest.mark.parametrize("transaction", [False, True])
def test_commands_after_a_job_in_a_pipeline_see_its_outputs(
    con: Client, worker: Worker, transaction: bool
) -> None:
    """As RedisAI ran a pipeline: one command after another, a job blocking those behind it (the
    tensorget was read before the job ran: a missing key, then the previous run's output)."""
    for value in (1.0, 5.0):
        pipe = con.pipeline(transaction=transaction)
        pipe.tensorset("in", np.full(2, value, np.float32))
        pipe.modelexecute("pt_model", ["in", "in"], ["out"]).tensorget("out")
        pipe.modelexecute("pt_model", ["out", "out"], ["out2"]).tensorget("out2").get("nothing")
        assert [r if isinstance(r, bytes | None) else r.tolist() for r in pipe.execute()] == [
            b"OK",
            b"OK",
            [2 * value] * 2,
            b"OK",
            [4 * value] * 2,
            None,
        ]


@pytest.mark.parametrize("explicit", [False, True])
def test_a_transaction_holding_jobs_is_atomic_between_them(
    con: Client, worker: Worker, explicit: bool
) -> None:
    """Each part of a transaction ends with a job: a part refused whole (an unknown command:
    EXECABORT) has the error in its places and runs nothing, the part before it ran. With
    multi() on a transaction=False pipeline too (the parts after the first ran outside MULTI;
    an EXECABORT there raised and lost the results of the parts that had run)."""
    pipe = con.pipeline(transaction=not explicit)
    if explicit:
        pipe.multi()
    pipe.tensorset("in", np.ones(2, np.float32)).set("before", 1)
    pipe.modelexecute("pt_model", ["in", "in"], ["out"])
    pipe.set("after", 1).execute_command("NOSUCHCOMMAND")
    results = pipe.execute(raise_on_error=False)
    assert results[:3] == [b"OK", True, b"OK"] and con.tensorget("out").tolist() == [2, 2]
    assert all(isinstance(r, ResponseError) for r in results[3:]) and not con.exists("after")
    pipe = con.pipeline(transaction=True).set("x", 1).execute_command("NOSUCHCOMMAND")
    with pytest.raises(ResponseError):
        pipe.execute()


def test_pipeline_modelget_as_the_clients(con: Client) -> None:
    """The names a TorchScript model reported (``listed_inputs``) included."""
    result = con.pipeline().modelget("pt_model", meta_only=True).modelget("pt_model").execute()
    assert result == [con.modelget("pt_model", meta_only=True), con.modelget("pt_model")]
    assert (result[0]["inputs"], result[0]["outputs"]) == (["a", "b"], [""])


def test_pipeline_errors_follow_redis_py(con: Client) -> None:
    pipe = con.pipeline(transaction=False).tensorget("missing").set("k", "v")
    with pytest.raises(ResponseError, match=r"^tensor key is empty"):
        pipe.execute()
    pipe = con.pipeline(transaction=False).tensorget("missing").set("k", "v")
    first, second = pipe.execute(raise_on_error=False)
    assert isinstance(first, ResponseError) and second is True


@pytest.mark.parametrize("transaction", [False, True])
def test_pipeline_redisai_errors_come_from_execute(con: Client, transaction: bool) -> None:
    """RedisAI refused a TENSORSET's values (or a job's missing model) when the pipeline ran:
    the error is that command's result, and the commands around it run."""
    pipe = con.pipeline(transaction=transaction).set("before", 1)
    pipe.tensorset("x", ["x"], dtype="float").tensorset("y", [1, 2, 3], shape=(2,), dtype="float")
    pipe.tensorset("z", [1], dtype="uint32").modelexecute("missing", ["x"], ["out"])
    results = pipe.set("after", 1).execute(raise_on_error=False)
    assert [str(r) if isinstance(r, ResponseError) else r for r in results] == [
        True,
        "invalid value",
        "wrong number of values was given in 'AI.TENSORSET' command",
        "invalid data type",
        "model key is empty",
        True,
    ]
    assert con.get("before") == con.get("after") == b"1" and not con.exists("x", "y", "z")
    pipe = con.pipeline(transaction=transaction).tensorset("x", ["x"], dtype="float").set("k", 1)
    with pytest.raises(ResponseError, match=r"^invalid value$"):
        pipe.execute()
    assert con.get("k") == b"1"
    with pytest.raises(TypeError):  # redisai-py's own check, as the method is called
        con.pipeline().tensorset("x", [1], dtype="float16")


def test_pipeline_methods_while_watching_return_their_results(con: Client, worker: Worker) -> None:
    """After ``watch`` and before ``multi`` redis-py runs a pipeline's commands at once (a
    transaction reads what it will write): the RedisAI methods return their results too, and
    leave nothing behind for the commands queued after ``multi``."""
    con.tensorset("a", np.array([1, 2], np.float32))
    with con.pipeline() as pipe:
        pipe.watch("a")
        assert pipe.tensorget("a").tolist() == [1, 2]
        assert pipe.tensorget("a", meta_only=True) == {"dtype": "FLOAT", "shape": [2]}
        assert pipe.modelget("pt_model", meta_only=True)["backend"] == "TORCH"
        assert pipe.modelexecute("pt_model", ["a", "a"], ["b"]) == b"OK"
        with pytest.raises(ResponseError, match=r"^tensor key is empty"):
            pipe.tensorget("missing")
        with pytest.raises(ResponseError, match=r"^invalid value$"):
            pipe.tensorset("x", ["x"], dtype="float")
        pipe.multi()
        pipe.set("k", "v").tensorset("a", np.array([3, 4], np.float32)).tensorget("b")
        results = pipe.execute()
    assert results[:2] == [True, b"OK"] and results[2].tolist() == [2, 4]

    def double(pipe: Any) -> None:
        current = pipe.tensorget("a")
        pipe.multi()
        pipe.tensorset("a", current * 2)

    assert con.transaction(double, "a") == [b"OK"]
    assert con.tensorget("a").tolist() == [6, 8]


# a redisai-py program, unchanged but for its import ----------------------------------------


def test_a_redisai_py_program_runs_unchanged(redis_server: RedisServer, worker: Worker) -> None:
    """redisai-py's README example, with ``from aiworker import Client`` for its import."""
    con = Client(host="127.0.0.1", port=redis_server.port)
    con.tensorset("x", (2, 3), dtype="float")
    con.tensorset("y", np.array([[2, 3], [2, 3]], dtype=np.float32))
    con.modelstore("model", "torch", "cpu", torch_blob("add"), tag="v1.0")
    assert con.modelexecute("model", inputs=["x", "x"], outputs="out") == "OK"
    assert con.tensorget("out").tolist() == [4, 6]
    dag = con.dag(persist="out2")
    dag.tensorset("t", [1, 1], dtype="float").modelexecute("model", ["t", "t"], "out2")
    assert dag.tensorget("out2").execute()[2].tolist() == [2, 2]
    pipe = con.pipeline(transaction=False)
    assert pipe.tensorset("p", np.ones(2)).tensorget("p").execute()[0] == b"OK"
    con.modelstore("s", "STUB", "CPU", stub_blob("add"))  # aiworker's dependency-free backend
    con.close()
