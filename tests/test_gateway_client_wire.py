"""The wire as three RedisAI clients that cannot be installed here use it: each test sends, over a
raw RESP2 socket, the exact command forms one client sends (argument order, old 1.0 forms, model
blobs in chunks, its Redis and cluster commands) and checks every reply's type where that
client's parser is strict about it (positional indexing, casts, "bulk only" accessors).

Sources read (GitHub, default branches as stored):

- JRedisAI 0.9-1.0 (RedisAI/JRedisAI, Java on Jedis): ``src/main/java/com/redislabs/redisai/``
  ``RedisAI.java`` (``readBlobChunkSize``: CONFIG GET proto-max-bulk-len; every call ends in
  ``getStatusCodeReply().equals("OK")`` or ``getObjectMultiBulkReply()``), ``Model.java``
  (MODELSET/MODELSTORE forms, ``chunk`` of the blob, ``createModelFromRespReply`` casting
  batchsize/minbatchsize/minbatchtimeout to ``Long``), ``Tensor.java`` (always ``META VALUES``),
  ``DataType.java`` (``Float.parseFloat`` of each value's bytes), ``Script.java`` (``Entry Points``
  through ``STRING_LIST``), ``Dag.java`` (DAGRUN/DAGEXECUTE forms, ``processDagReply``), and
  ``src/test/.../RedisAITest.java`` and ``ChunkTest.java`` for the replies its tests expect.
- redisai-go (RedisAI/redisai-go, Go on redigo): ``redisai/commands.go``, ``client.go``,
  ``model.go``, ``script.go``, ``tensor.go``, ``dag.go``, ``converters/slice_converters.go``
  (``num.(int64)`` for INT8/INT16/UINT8/UINT16 values, ``[]byte`` for FLOAT), ``commands_test.go``.
- SmartRedis 0.5-0.6 C++ client (CrayLabs/SmartRedis): ``src/cpp/client.cpp``, ``redis.cpp``,
  ``rediscluster.cpp`` (CLUSTER SLOTS parsed as ``[i][0].integer()``, ``[i][2][0].str()``...),
  ``commandreply.cpp`` (``str()``/``str_len()`` refuse anything but a bulk string, ``integer()``
  anything but an integer), ``gettensorcommand.cpp`` (TENSORGET META BLOB read at indexes 1, 3
  and 5), ``dbinfocommand.cpp``, ``clusterinfocommand.cpp``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import test_redisai_compat
from builders import onnx_mul, tf_mul_graph
from test_gateway import raw_socket, running_gateway

from aiworker import Client, Settings, Worker
from aiworker.gateway import Gateway
from aiworker.gateway.resp import pack, reply_end


@pytest.fixture
def gateway(client: Client, settings: Settings) -> Iterator[Gateway]:
    with running_gateway(settings, emulate_cluster=True) as gw:
        yield gw


@pytest.fixture
def sock(gateway: Gateway, worker: Worker) -> Iterator[socket.socket]:
    s = raw_socket(gateway)
    yield s
    s.close()


def arg(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def exchange(sock: socket.socket, *commands: tuple[object, ...]) -> list[bytes]:
    """Send ``commands`` in one write (a pipeline, as SmartRedis and redigo may) and return each
    raw reply."""
    sock.sendall(b"".join(b"".join(pack([arg(a) for a in command])) for command in commands))
    sock.settimeout(30)
    data, pos = b"", 0
    out: list[bytes] = []
    while len(out) < len(commands):
        end = reply_end(data, pos)
        if end > 0:
            out.append(data[pos:end])
            pos = end
            continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(out)} replies"
        data += chunk
    return out


def one(sock: socket.socket, *command: object) -> bytes:
    (reply,) = exchange(sock, command)
    return reply


@dataclass
class R:
    """One parsed RESP2 reply with its type byte: ``+``, ``-``, ``:``, ``$`` or ``*``."""

    kind: str
    value: Any

    def __getitem__(self, index: int) -> R:
        assert self.kind == "*", f"indexing a {self.kind} reply"
        item: R = self.value[index]
        return item


def parse(raw: bytes) -> R:
    reply, end = _parse(raw, 0)
    assert end == len(raw)
    return reply


def _parse(raw: bytes, pos: int) -> tuple[R, int]:
    kind = chr(raw[pos])
    line_end = raw.index(b"\r\n", pos)
    head = raw[pos + 1 : line_end]
    pos = line_end + 2
    if kind in "+-":
        return R(kind, head.decode()), pos
    if kind == ":":
        return R(kind, int(head)), pos
    if kind == "$":
        size = int(head)
        if size < 0:
            return R("nil", None), pos
        return R(kind, raw[pos : pos + size]), pos + size + 2
    assert kind == "*", f"not a RESP2 reply: {raw[pos - 1 :]!r}"
    items = []
    for _ in range(int(head)):
        item, pos = _parse(raw, pos)
        items.append(item)
    return R(kind, items), pos


def pairs(raw: bytes, names: str = "$") -> dict[str, R]:
    """A flat name/value array as RedisAI sends MODELGET, SCRIPTGET, TENSORGET and AI.INFO:
    every name must be of a type in ``names`` (bulk only where the client casts to bytes)."""
    reply = parse(raw)
    assert reply.kind == "*" and len(reply.value) % 2 == 0, raw
    out = {}
    for name, value in zip(reply.value[::2], reply.value[1::2], strict=True):
        assert name.kind in names, f"field name {name.value!r} is a {name.kind} reply"
        out[name.value.decode()] = value
    return out


def bulks(reply: R) -> list[bytes]:
    assert reply.kind == "*" and all(item.kind == "$" for item in reply.value), reply
    return [item.value for item in reply.value]


def ints(reply: R) -> list[int]:
    assert reply.kind == "*" and all(item.kind == ":" for item in reply.value), reply
    return [item.value for item in reply.value]


def chunks(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)]


OK = b"+OK\r\n"
SCRIPT = "def bar(a, b):\n    return a + b\n"
SCRIPT_V2 = test_redisai_compat.SCRIPT  # RedisAI's test_data/script.txt


# JRedisAI ------------------------------------------------------------------------------------


def test_jredisai_flow(sock: socket.socket) -> None:
    """RedisAITest's calls, as JRedisAI builds them: Java's ``String.valueOf`` numbers, blobs cut
    in ``redisai.blob.chunkSize`` pieces after BLOB (ChunkTest: 8 KB), MODELSET's INPUTS and
    OUTPUTS without counts and always present, MODELSTORE's three batching values together."""
    # readBlobChunkSize: jedis.configGet(...).get(1) parsed as an int (passes through to Redis)
    assert one(sock, "CONFIG", "GET", "proto-max-bulk-len") == (
        b"*2\r\n$18\r\nproto-max-bulk-len\r\n$9\r\n536870912\r\n"
    )
    # setTensor: VALUES always; getStatusCodeReply() needs a status reply of exactly OK
    assert (
        exchange(
            sock,
            ("AI.TENSORSET", "t1", "FLOAT", 2, 2, "VALUES", "1.0", "2.0", "3.0", "4.0"),
            ("AI.TENSORSET", "t2", "DOUBLE", 2, 2, "VALUES", "1.0", "2.0", "3.0", "4.0"),
            ("AI.TENSORSET", "t3", "INT32", 2, 2, "VALUES", 1, 2, 3, 4),
            ("AI.TENSORSET", "t4", "INT64", 2, 2, "VALUES", 1, 2, 3, 4),
            ("AI.TENSORSET", "a", "FLOAT", 2, "VALUES", "2.0", "3.0"),
            ("AI.TENSORSET", "b", "FLOAT", 2, "VALUES", "3.0", "5.0"),
        )
        == [OK] * 6
    )
    # testSetTensorNegative compares Jedis' whole message
    assert one(sock, "AI.TENSORSET", "t1", "FLOAT", 1, "VALUES", "1.0", "2.0") == (
        b"-ERR wrong number of values was given in 'AI.TENSORSET' command\r\n"
    )
    # getTensor: META VALUES; dtype and each value cast to byte[] (Float.parseFloat), shape Long
    assert one(sock, "AI.TENSORGET", "t1", "META", "VALUES") == (
        b"*6\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$5\r\nshape\r\n*2\r\n:2\r\n:2\r\n"
        b"$6\r\nvalues\r\n*4\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n4\r\n"
    )
    graph = tf_mul_graph()
    pieces = chunks(graph, 40)
    assert len(pieces) > 2
    io_v1 = ("INPUTS", "a", "b", "OUTPUTS", "mul")
    io_v2 = ("INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul")
    assert exchange(
        sock,
        ("AI.MODELSET", "model", "TF", "CPU", *io_v1, "BLOB", *pieces),
        ("AI.MODELSET", "model:m1", "TF", "CPU", "TAG", "test minbatching 5 batchsize 10",
         "BATCHSIZE", 10, "MINBATCHSIZE", 5, *io_v1, "BLOB", graph),
        ("AI.MODELSTORE", "model-1", "TF", "CPU", *io_v2, "BLOB", *pieces),
        ("AI.MODELSTORE", "model-2", "TF", "CPU", "TAG", "test batching params", "BATCHSIZE", 10,
         "MINBATCHSIZE", 5, "MINBATCHTIMEOUT", 15, *io_v2, "BLOB", *pieces),
        # a Model with only a batch size: JRedisAI still sends the two others, as zeros
        ("AI.MODELSTORE", "model-3", "TF", "CPU", "BATCHSIZE", 10, "MINBATCHSIZE", 0,
         "MINBATCHTIMEOUT", 0, *io_v2, "BLOB", graph),
    ) == [OK] * 5  # fmt: skip
    # getModel: backend/device/tag/blob cast to byte[], batch values to Long, inputs to byte[]s
    for key, tag, batching in [
        ("model", b"", [0, 0, 0]),
        ("model:m1", b"test minbatching 5 batchsize 10", [10, 5, 0]),
        ("model-1", b"", [0, 0, 0]),
        ("model-2", b"test batching params", [10, 5, 15]),
        ("model-3", b"", [10, 0, 0]),
    ]:
        meta = pairs(one(sock, "AI.MODELGET", key, "META", "BLOB"))
        assert [meta[name].kind for name in ("backend", "device", "tag", "blob")] == ["$"] * 4
        assert (meta["backend"].value, meta["device"].value) == (b"TF", b"CPU")
        assert meta["tag"].value == tag  # storeModel's test: getTag() equals "", never null
        assert meta["blob"].value == graph
        assert [meta["batchsize"], meta["minbatchsize"], meta["minbatchtimeout"]] == [
            R(":", n) for n in batching
        ]
        assert (bulks(meta["inputs"]), bulks(meta["outputs"])) == ([b"a", b"b"], [b"mul"])
    # runModel, executeModel (no TIMEOUT), then getTensor of the output
    assert exchange(
        sock,
        ("AI.MODELRUN", "model", "INPUTS", "a", "b", "OUTPUTS", "c"),
        ("AI.MODELEXECUTE", "model", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c2"),
        ("AI.TENSORGET", "c", "META", "VALUES"),
        ("AI.TENSORGET", "c2", "META", "VALUES"),
    )[:2] == [OK, OK]
    for key in ("c", "c2"):
        values = pairs(one(sock, "AI.TENSORGET", key, "META", "VALUES"))["values"]
        assert [float(v) for v in bulks(values)] == [6.0, 15.0]
    assert exchange(
        sock,
        ("AI.MODELRUN", "dont:exist", "INPUTS", "a", "b", "OUTPUTS", "c"),
        ("AI.MODELEXECUTE", "dont:exist", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c"),
        ("AI.MODELSTORE", "model-fail", "ONNX", "CPU", "BLOB", graph),
        ("AI.MODELSTORE", "model-fail", "ONNX", "CPU", "BLOB", b""),
    ) == [
        b"-ERR model key is empty\r\n",
        b"-ERR model key is empty\r\n",
        b"-No graph was found in the protobuf.\r\n",  # storeModelFail: getMessage() equals it
        b"-No graph was found in the protobuf.\r\n",
    ]
    # scripts: SCRIPTSET [TAG] SOURCE; SCRIPTSTORE with ENTRY_POINTS; SCRIPTGET META SOURCE
    replies = exchange(
        sock,
        ("AI.SCRIPTSET", "script", "CPU", "SOURCE", SCRIPT),
        ("AI.SCRIPTSET", "script.error1", "CPU", "SOURCE", "bad function -----"),
        ("AI.SCRIPTSTORE", "negative", "CPU", "SOURCE", "def fun () :\n"),
        ("AI.SCRIPTSTORE", "script2", "CPU", "ENTRY_POINTS", 2, "bar", "bar_variadic",
         "SOURCE", SCRIPT_V2),
    )  # fmt: skip
    assert replies[0] == OK and replies[3] == OK
    assert replies[1].startswith(b"-") and replies[2].startswith(b"-")
    got = pairs(one(sock, "AI.SCRIPTGET", "script2", "META", "SOURCE"))
    assert (got["device"], got["tag"], got["source"]) == (
        R("$", b"CPU"),
        R("$", b""),
        R("$", SCRIPT_V2.encode()),
    )
    assert bulks(got["Entry Points"]) == [b"bar", b"bar_variadic"]  # BuilderFactory.STRING_LIST
    assert exchange(
        sock,
        ("AI.TENSORSET", "a{1}", "FLOAT", 2, 2, "VALUES", "2.0", "3.0", "2.0", "3.0"),
        ("AI.TENSORSET", "b{1}", "FLOAT", 2, 2, "VALUES", "2.0", "3.0", "2.0", "3.0"),
        ("AI.SCRIPTEXECUTE", "script2", "bar", "KEYS", 1, "{1}", "INPUTS", 2, "a{1}", "b{1}",
         "OUTPUTS", 1, "c{1}"),
        ("AI.SCRIPTEXECUTE", "script2", "bar_variadic", "KEYS", 1, "{1}", "INPUTS", 2, "a{1}",
         "b{1}", "OUTPUTS", 1, "d{1}"),
        ("AI.SCRIPTRUN", "script", "bar", "INPUTS", "a", "b", "OUTPUTS", "c1"),
    ) == [OK] * 5  # fmt: skip
    for key in ("c{1}", "d{1}"):
        values = pairs(one(sock, "AI.TENSORGET", key, "META", "VALUES"))["values"]
        assert [float(v) for v in bulks(values)] == [4.0, 6.0, 4.0, 6.0]
    assert one(sock, "AI.SCRIPTRUN", "dont:exist", "bar", "INPUTS", "a", "b", "OUTPUTS", "c") == (
        b"-ERR script key is empty\r\n"
    )
    # getInfo: names cast to byte[]; a byte[] value becomes a String, the rest stay Long
    info = pairs(one(sock, "AI.INFO", "script"))
    assert info["key"] == R("$", b"script") and info["device"] == R("$", b"CPU")
    assert info["calls"] == R(":", 1)
    assert all(value.kind in "$:" for value in info.values())
    assert exchange(
        sock,
        ("AI.INFO", "script", "RESETSTAT"),
        ("AI.INFO", "not:exist"),
        ("AI.INFO", "not:exist", "RESETSTAT"),
    ) == [OK, b"-ERR cannot find run info for key\r\n", b"-ERR cannot find run info for key\r\n"]
    assert pairs(one(sock, "AI.INFO", "script"))["calls"] == R(":", 0)
    # dagRun / dagRunReadOnly / dagExecute: LOAD n, PERSIST n, KEYS n, then |> ops; a TENSORGET
    # op's reply goes through createTensorFromRespReply (a nested name/value array)
    get = ("|>", "AI.TENSORGET", "dc", "META", "VALUES")
    tensorset = ("|>", "AI.TENSORSET", "x", "FLOAT", 2, "VALUES", "1.0", "2.0")
    old_run = ("|>", "AI.MODELRUN", "model", "INPUTS", "a", "b", "OUTPUTS", "dc")
    run = ("|>", "AI.MODELEXECUTE", "model", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "dc")
    load = ("LOAD", 2, "a", "b", "PERSIST", 1, "dc")
    for reply in exchange(
        sock,
        ("AI.DAGRUN", *load, *tensorset, *old_run, *get),
        ("AI.DAGEXECUTE", *load, *tensorset, *run, *get),
    ):
        parsed = parse(reply)
        assert parsed.kind == "*", reply
        assert [item.kind for item in parsed.value] == ["+", "+", "*"], reply
        values = parsed[2].value[5]
        assert [float(v) for v in bulks(values)] == [6.0, 15.0]
    for reply in exchange(
        sock,
        ("AI.DAGRUN_RO", "LOAD", 1, "a", "|>", "AI.TENSORGET", "a", "META", "VALUES"),
        ("AI.DAGEXECUTE_RO", "LOAD", 1, "a", "|>", "AI.TENSORGET", "a", "META", "VALUES"),
    ):
        assert reply == (
            b"*1\r\n*6\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$5\r\nshape\r\n*1\r\n:2\r\n"
            b"$6\r\nvalues\r\n*2\r\n$1\r\n2\r\n$1\r\n3\r\n"
        )
    # delModel / delScript twice; setBackendsPath
    assert exchange(
        sock,
        ("AI.MODELDEL", "model"),
        ("AI.MODELDEL", "model"),
        ("AI.SCRIPTDEL", "script"),
        ("AI.SCRIPTDEL", "script"),
        ("AI.CONFIG", "BACKENDSPATH", "/usr/lib/redis/modules/backends/"),
    ) == [
        OK, b"-ERR model key is empty\r\n", OK, b"-ERR script key is empty\r\n", OK,
    ]  # fmt: skip


def test_jredisai_execute_model_with_a_timeout(sock: socket.socket) -> None:
    """``RedisAITest.executeModelWithTimeout``: ``getStatusCodeReply().equals("OK")``. RedisAI
    compared TIMEOUT with the time the run spent in its queue; here that queue is the stream, and
    the trip from XADD to a worker's read counts too: JRedisAI's TIMEOUT 1 (ms) runs when a
    worker reads the entry within that millisecond or the next (it timed out every time while
    the entry id's millisecond counted whole) and answers TIMEDOUT, a status reply JRedisAI
    reads, when it did not. A TIMEOUT that leaves room runs every time."""
    graph = tf_mul_graph()
    assert exchange(
        sock,
        ("AI.MODELSTORE", "model", "TF", "CPU", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
         "BLOB", graph),
        ("AI.TENSORSET", "a", "FLOAT", 2, "VALUES", "2.0", "3.0"),
        ("AI.TENSORSET", "b", "FLOAT", 2, "VALUES", "3.0", "5.0"),
        ("AI.MODELEXECUTE", "model", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c"),  # warm up
    ) == [OK] * 4  # fmt: skip
    run = ("AI.MODELEXECUTE", "model", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c", "TIMEOUT")
    for _ in range(3):
        assert one(sock, *run, 5000) == OK
        assert one(sock, *run, 1) in (OK, b"+TIMEDOUT\r\n")


@pytest.mark.xfail(
    strict=True,
    reason="documented difference (README, Moving from RedisAI): AI.CONFIG LOADBACKEND only "
    "checks the name, so a path that does not exist answers OK",
)
def test_jredisai_loadbackend_of_a_missing_path(sock: socket.socket) -> None:
    """``RedisAITest.testConfig``: ``loadBackend(TF, "notexist/...")`` must throw."""
    reply = one(sock, "AI.CONFIG", "LOADBACKEND", "TF", "notexist/redisai_tensorflow.so")
    assert reply.startswith(b"-")


def test_jredisai_dag_execute_with_keys(sock: socket.socket) -> None:
    """``Dag.dagExecuteFlatArgs``: ``LOAD n ... PERSIST n ... KEYS n ...`` then the ops, the
    form of RedisAI 1.2.0-1.2.4 (1.2.7 renamed KEYS to ROUTING and refused it): taken as
    ROUTING, its first key routing the DAG."""
    assert one(sock, "AI.TENSORSET", "a", "FLOAT", 1, "VALUES", "1.0") == OK
    reply = one(sock, "AI.DAGEXECUTE", "LOAD", 1, "a", "KEYS", 1, "a", "|>",
                "AI.TENSORGET", "a", "META")  # fmt: skip
    assert reply == b"*1\r\n*4\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$5\r\nshape\r\n*1\r\n:1\r\n"
    reply = one(sock, "AI.DAGEXECUTE", "KEYS", 2, "a", "b", "LOAD", 1, "a", "|>",
                "AI.TENSORGET", "a", "VALUES")  # fmt: skip
    assert reply == b"*1\r\n*1\r\n$1\r\n1\r\n"
    for bad in (("KEYS", 0), ("KEYS", 3, "a", "b"), ("KEYS", "x", "a"), ("KEYS",)):
        reply = one(sock, "AI.DAGEXECUTE", *bad, "|>", "AI.TENSORGET", "a", "META")
        assert reply == b"-ERR Invalid argument for KEYS\r\n", bad


# redisai-go ----------------------------------------------------------------------------------


def test_redisai_go_flow(sock: socket.socket) -> None:
    """What redisai-go's commands.go sends and how its parsers read the replies: redigo keeps
    bulk strings as ``[]byte``, status replies as ``string``, integers as ``int64``. Info() does
    ``values[i].([]byte)`` on every name and accepts only ``[]byte`` or ``int64`` values;
    converters.Int8s/Int16s/Uint8s/Uint16s do ``num.(int64)``; Float32s wants ``[]byte``."""
    assert (
        exchange(
            sock,
            ("AI.TENSORSET", "f32", "FLOAT", 1, 5, "VALUES", "1.1", "2.2", "3.3", "4.4", "5.5"),
            ("AI.TENSORSET", "f64", "DOUBLE", 1, "VALUES", "1.1"),
            ("AI.TENSORSET", "i8", "INT8", 1, "VALUES", 1),
            ("AI.TENSORSET", "i16", "INT16", 1, "VALUES", 1),
            ("AI.TENSORSET", "i32", "INT32", 1, "VALUES", 1),
            ("AI.TENSORSET", "i64", "INT64", 1, "VALUES", 1),
            ("AI.TENSORSET", "u8", "UINT8", 1, "VALUES", 1),
            ("AI.TENSORSET", "u16", "UINT16", 1, "VALUES", 1),
            ("AI.TENSORSET", "bytes", "UINT8", 1, 5, "BLOB", bytes([1, 2, 3, 4, 5])),  # []byte data
            ("AI.TENSORSET", "meta", "UINT8", 1, 2),  # nil data: the shape only
        )
        == [OK] * 10
    )
    # TensorGetValues: META VALUES
    for key, dtype, values in [
        ("i8", b"INT8", b":1\r\n"),
        ("i16", b"INT16", b":1\r\n"),
        ("i32", b"INT32", b":1\r\n"),
        ("i64", b"INT64", b":1\r\n"),
        ("u8", b"UINT8", b":1\r\n"),
        ("u16", b"UINT16", b":1\r\n"),
        ("f64", b"DOUBLE", b"$18\r\n1.1000000000000001\r\n"),
    ]:
        assert one(sock, "AI.TENSORGET", key, "META", "VALUES") == (
            b"*6\r\n$5\r\ndtype\r\n$%d\r\n%s\r\n$5\r\nshape\r\n*1\r\n:1\r\n"
            b"$6\r\nvalues\r\n*1\r\n%s" % (len(dtype), dtype, values)
        )
    f32 = pairs(one(sock, "AI.TENSORGET", "f32", "META", "VALUES"))
    assert ints(f32["shape"]) == [1, 5]
    assert [np.float32(float(v)) for v in bulks(f32["values"])] == [
        np.float32(v) for v in (1.1, 2.2, 3.3, 4.4, 5.5)
    ]
    # TensorGetBlob and TensorGetMeta
    assert one(sock, "AI.TENSORGET", "bytes", "META", "BLOB") == (
        b"*6\r\n$5\r\ndtype\r\n$5\r\nUINT8\r\n$5\r\nshape\r\n*2\r\n:1\r\n:5\r\n"
        b"$4\r\nblob\r\n$5\r\n\x01\x02\x03\x04\x05\r\n"
    )
    assert one(sock, "AI.TENSORGET", "meta", "META") == (
        b"*4\r\n$5\r\ndtype\r\n$5\r\nUINT8\r\n$5\r\nshape\r\n*2\r\n:1\r\n:2\r\n"
    )
    assert one(sock, "AI.TENSORGET", "missing", "META").startswith(b"-")
    # ModelSet/ModelStore: MODELSTORE key backend device [TAG] [BATCHSIZE [MINBATCHSIZE
    # [MINBATCHTIMEOUT]]] [INPUTS n ...] [OUTPUTS n ...] BLOB blob; the old MODELSET form too
    graph = tf_mul_graph()
    io = ("INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul")
    assert exchange(
        sock,
        ("AI.MODELSTORE", "m", "TF", "CPU", *io, "BLOB", graph),
        ("AI.MODELSTORE", "mt", "TF", "CPU", "TAG", "financialTag", "BATCHSIZE", 3, *io,
         "BLOB", graph),
        ("AI.MODELSTORE", "mb", "TF", "CPU", "BATCHSIZE", 3, "MINBATCHSIZE", 2,
         "MINBATCHTIMEOUT", 100, *io, "BLOB", graph),
        ("AI.MODELSET", "old", "TF", "CPU", "INPUTS", "a", "b", "OUTPUTS", "mul", "BLOB", graph),
    ) == [OK] * 4  # fmt: skip
    assert one(sock, "AI.MODELSTORE", "empty", "TF", "CPU", *io, "BLOB", b"").startswith(b"-")
    assert one(sock, "AI.MODELSTORE", "o", "ORT", "CPU", "BLOB", onnx_mul()) == (
        b"-ERR unsupported backend\r\n"  # BackendONNX is "ORT" in client.go: RedisAI refused it
    )
    # ModelGet: redis.String of names, backend, device, tag; redis.Int64 of the batch sizes;
    # redis.Strings of inputs and outputs; redis.Bytes of the blob
    meta = pairs(one(sock, "AI.MODELGET", "mt", "META", "BLOB"))
    assert meta["tag"] == R("$", b"financialTag") and meta["batchsize"] == R(":", 3)
    assert meta["minbatchsize"] == R(":", 0) and meta["blob"] == R("$", graph)
    assert (bulks(meta["inputs"]), bulks(meta["outputs"])) == ([b"a", b"b"], [b"mul"])
    # ModelRun/ModelExecute(WithTimeout): MODELEXECUTE; the old ModelRun: MODELRUN
    assert (
        exchange(
            sock,
            ("AI.TENSORSET", "a", "FLOAT", 1, "VALUES", "1.1"),
            ("AI.TENSORSET", "b", "FLOAT", 1, "VALUES", "4.4"),
            ("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul"),
            ("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul", "TIMEOUT", 3000),
            ("AI.MODELRUN", "old", "INPUTS", "a", "b", "OUTPUTS", "mul2"),
        )
        == [OK] * 5
    )
    # Info: every name a bulk string, every value a bulk string or an integer
    for key in ("m", "old"):
        info = pairs(one(sock, "AI.INFO", key))
        assert all(value.kind in "$:" for value in info.values()), info
    assert one(sock, "AI.INFO", "m", "RESETSTAT") == OK  # ResetStat: redis.String
    # scripts: SCRIPTSET [TAG] SOURCE, SCRIPTSTORE [TAG] ENTRY_POINTS n ... SOURCE
    assert exchange(
        sock,
        ("AI.SCRIPTSET", "s1", "CPU", "SOURCE", SCRIPT),
        ("AI.SCRIPTSET", "s2", "CPU", "TAG", "keyScriptTag", "SOURCE", SCRIPT),
        ("AI.SCRIPTSTORE", "s3", "CPU", "TAG", "t", "ENTRY_POINTS", 2, "bar", "bar_variadic",
         "SOURCE", SCRIPT_V2),
    ) == [OK] * 3  # fmt: skip
    got = pairs(one(sock, "AI.SCRIPTGET", "s3", "META", "SOURCE"))
    assert (got["device"], got["tag"]) == (R("$", b"CPU"), R("$", b"t"))
    assert bulks(got["Entry Points"]) == [b"bar", b"bar_variadic"]
    assert got["source"] == R("$", SCRIPT_V2.encode())
    assert exchange(
        sock,
        ("AI.SCRIPTRUN", "s1", "bar", "INPUTS", "a", "b", "OUTPUTS", "c"),
        ("AI.SCRIPTEXECUTE", "s3", "bar", "KEYS", 1, "a", "INPUTS", 2, "a", "b", "OUTPUTS", 1,
         "c3"),
        ("AI.SCRIPTEXECUTE", "s3", "bar", "INPUTS", 2, "a", "b", "ARGS", 1, "x", "OUTPUTS", 1,
         "c4", "TIMEOUT", 3000),
        ("AI.SCRIPTDEL", "s2"),
    ) == [OK] * 4  # fmt: skip
    # DagRun/DagRunRO/DagExecute(RO): LOAD n, PERSIST n, ROUTING, TIMEOUT, then the ops; its
    # Dag.TensorGet sends AI.TENSORGET key FORMAT (no META); ParseReply is redis.Values
    tensorset = ("|>", "AI.TENSORSET", "x", "FLOAT", 1, "VALUES", "2")
    run = ("|>", "AI.MODELRUN", "m", "INPUTS", "a", "x", "OUTPUTS", "y")
    gets = ("|>", "AI.TENSORGET", "y", "VALUES", "|>", "AI.TENSORGET", "y", "META")
    meta_y = b"*4\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$5\r\nshape\r\n*1\r\n:1\r\n"
    reply = one(sock, "AI.DAGRUN", "LOAD", 1, "a", "PERSIST", 1, "y", *tensorset, *run, *gets)
    parsed = parse(reply)
    assert parsed.kind == "*", reply
    assert [item.kind for item in parsed.value] == ["+", "+", "*", "*"], reply
    assert reply.endswith(meta_y) and float(bulks(parsed[2])[0]) == pytest.approx(2.2)
    # its Dag has no MODELEXECUTE, and RedisAI 1.2.7 refused MODELRUN in DAGEXECUTE
    reply = one(
        sock, "AI.DAGEXECUTE", "LOAD", 1, "a", "PERSIST", 1, "x", "ROUTING", "a", "TIMEOUT", 5000,
        *tensorset, "|>", "AI.TENSORGET", "x", "VALUES", "|>", "AI.TENSORGET", "a", "META",
    )  # fmt: skip
    assert reply == b"*3\r\n+OK\r\n*1\r\n$1\r\n2\r\n" + meta_y
    assert (
        exchange(
            sock,
            ("AI.DAGRUN_RO", "LOAD", 1, "a", "|>", "AI.TENSORGET", "a", "META"),
            ("AI.DAGEXECUTE_RO", "LOAD", 1, "a", "ROUTING", "a", "|>", "AI.TENSORGET", "a", "META"),
        )
        == [b"*1\r\n" + meta_y] * 2
    )
    # LoadBackend and SetBackendsPath read a status reply
    assert one(sock, "AI.CONFIG", "BACKENDSPATH", "/tmp") == OK


# SmartRedis ----------------------------------------------------------------------------------


def test_smartredis_flow(sock: socket.socket, gateway: Gateway) -> None:
    """SmartRedis' C++ client in cluster mode against ``--emulate-cluster`` (its default), then
    its administrative calls. hiredis' reply types are checked as CommandReply reads them."""
    host, port = gateway.address()
    # Redis::_connect / redis-plus-plus: PING must be PONG; RedisCluster::_map_cluster
    assert one(sock, "PING") == b"+PONG\r\n"
    slots = parse(one(sock, "CLUSTER", "SLOTS"))
    assert len(slots.value) == 1
    assert (slots[0][0], slots[0][1]) == (R(":", 0), R(":", 16383))
    assert (slots[0][2][0], slots[0][2][1]) == (R("$", host.encode()), R(":", port))
    assert slots[0][2][2].kind == "$" and len(slots[0][2][2].value) == 40
    # get_model_chunk_size: AI.CONFIG GET MODEL_CHUNK_SIZE must be REDIS_REPLY_INTEGER
    assert parse(one(sock, "AI.CONFIG", "GET", "MODEL_CHUNK_SIZE")).kind == ":"
    assert one(sock, "AI.CONFIG", "MODEL_CHUNK_SIZE", 40) == OK
    assert one(sock, "AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") == b":40\r\n"
    # put_tensor: AI.TENSORSET key TYPE dims... BLOB buf, for each type it sends
    types = {
        "DOUBLE": np.float64, "FLOAT": np.float32, "INT64": np.int64, "INT32": np.int32,
        "INT16": np.int16, "INT8": np.int8, "UINT16": np.uint16, "UINT8": np.uint8,
    }  # fmt: skip
    arrays = {name: np.arange(6, dtype=kind).reshape(2, 3) for name, kind in types.items()}
    puts = [("AI.TENSORSET", f"{{x}}.{name}", name, 2, 3, "BLOB", a.tobytes()) for name, a in
            arrays.items()]  # fmt: skip
    assert exchange(sock, *puts) == [OK] * len(puts)
    # get_tensors pipelines AI.TENSORGET key META BLOB; GetTensorCommand reads [1] with str(),
    # [3][i] with integer(), [5] with str()/str_len()
    gets = [("AI.TENSORGET", f"{{x}}.{name}", "META", "BLOB") for name in types]
    for name, reply in zip(types, exchange(sock, *gets), strict=True):
        got = parse(reply)
        assert len(got.value) == 6
        assert got[1] == R("$", name.encode()) and ints(got[3]) == [2, 3]
        assert got[5] == R("$", arrays[name].tobytes())
    # the dataset and list commands it sends pass through (HEXISTS/EXISTS read with integer())
    assert exchange(
        sock,
        ("HSET", "{x}.ds.meta", ".tensor_names", "FLOAT", ".ack", "1"),
        ("HEXISTS", "{x}.ds.meta", ".ack"),
        ("EXISTS", "{x}.FLOAT"),
        ("RENAME", "{x}.INT8", "{x}.int8"),
        ("UNLINK", "{x}.int8"),
        ("RPUSH", "list", "{x}.ds"),
        ("LLEN", "list"),
        ("SET", "{x}.bytes", b"\x00\x01"),
        ("GET", "{x}.bytes"),
    ) == [b":2\r\n", b":1\r\n", b":1\r\n", OK, b":1\r\n", b":1\r\n", b":1\r\n", OK,
          b"$2\r\n\x00\x01\r\n"]  # fmt: skip
    # set_model: MODELSTORE with options in its order, the blob in MODEL_CHUNK_SIZE pieces
    model = onnx_mul()
    graph = tf_mul_graph()
    assert exchange(
        sock,
        ("AI.MODELSTORE", "{x}.m", "ONNX", "CPU", "TAG", "v1", "BATCHSIZE", 2, "MINBATCHSIZE", 1,
         "MINBATCHTIMEOUT", 10, "BLOB", *chunks(model, 40)),
        ("AI.MODELSTORE", "{x}.tf", "TF", "CPU", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
         "BLOB", *chunks(graph, 40)),
    ) == [OK, OK]  # fmt: skip
    # get_model: AI.MODELGET key BLOB; RedisAI answered a blob over MODEL_CHUNK_SIZE in chunks
    # (an array of bulk strings, which SmartRedis 0.5+ joins) and a smaller one as one bulk
    assert bulks(parse(one(sock, "AI.MODELGET", "{x}.m", "BLOB"))) == chunks(model, 40)
    assert one(sock, "AI.CONFIG", "MODEL_CHUNK_SIZE", 1 << 20) == OK
    assert parse(one(sock, "AI.MODELGET", "{x}.m", "BLOB")) == R("$", model)
    # run_model (cluster): copy inputs to {prefix}.name.TMP, MODELEXECUTE ... TIMEOUT, copy back
    a = np.array([1, 2], np.float32).tobytes()
    assert (
        exchange(
            sock,
            ("AI.TENSORSET", "{x}.a", "FLOAT", 2, "BLOB", a),
            ("AI.TENSORGET", "{x}.a", "META", "BLOB"),
        )[0]
        == OK
    )
    assert exchange(
        sock,
        ("AI.TENSORSET", "{x}.a.TMP", "FLOAT", 2, "BLOB", a),
        ("AI.TENSORSET", "{x}.b.TMP", "FLOAT", 2, "BLOB", a),
        ("AI.MODELEXECUTE", "{x}.m", "INPUTS", 2, "{x}.a.TMP", "{x}.b.TMP", "OUTPUTS", 1,
         "{x}.c.TMP", "TIMEOUT", 60000),
        ("AI.MODELEXECUTE", "{x}.tf", "INPUTS", 2, "{x}.a.TMP", "{x}.b.TMP", "OUTPUTS", 1,
         "{x}.d.TMP", "TIMEOUT", 60000),
    ) == [OK] * 4  # fmt: skip
    got = parse(one(sock, "AI.TENSORGET", "{x}.c.TMP", "META", "BLOB"))
    assert got[1] == R("$", b"FLOAT") and ints(got[3]) == [2]
    assert got[5] == R("$", np.array([1, 4], np.float32).tobytes())
    assert one(sock, "DEL", "{x}.c.TMP", "{x}.d.TMP", "{x}.a.TMP", "{x}.b.TMP") == b":4\r\n"
    # set_script / get_script / run_script (the old SCRIPTRUN form) / delete
    assert exchange(
        sock,
        ("AI.SCRIPTSET", "{x}.s", "CPU", "SOURCE", SCRIPT),
        ("AI.SCRIPTGET", "{x}.s", "SOURCE"),
        ("AI.SCRIPTRUN", "{x}.s", "bar", "INPUTS", "{x}.a", "{x}.a", "OUTPUTS", "{x}.sum"),
    ) == [OK, b"$%d\r\n%s\r\n" % (len(SCRIPT), SCRIPT.encode()), OK]
    # get_ai_info: names read with str() (bulk only), values bulk, integer or double only
    for key in ("{x}.m", "{x}.s"):
        info = pairs(one(sock, "AI.INFO", key))
        assert all(value.kind in "$:" for value in info.values()), info
        assert info["key"] == R("$", key.encode())
    assert one(sock, "AI.INFO", "{x}.m", "RESETSTAT") == OK
    assert exchange(sock, ("AI.MODELDEL", "{x}.m"), ("AI.SCRIPTDEL", "{x}.s")) == [OK, OK]
    # get_db_node_info: INFO EVERYTHING as one bulk string; get_db_cluster_info: CLUSTER INFO
    # as one bulk string of key:value lines
    node = parse(one(sock, "INFO", "EVERYTHING"))
    assert node.kind == "$" and b"# Server\r\n" in node.value
    cluster = parse(one(sock, "CLUSTER", "INFO"))
    assert cluster.kind == "$" and b"cluster_state:ok\r\n" in cluster.value
    # config_get: pairs read with str(); config_set, save, flush_db: any non-error reply
    config = parse(one(sock, "CONFIG", "GET", "maxmemory-*"))
    assert config.kind == "*" and len(bulks(config)) % 2 == 0
    saved, flushed, size = exchange(
        sock,
        ("CONFIG", "SET", "maxmemory-samples", 5),
        ("DBSIZE",),
        ("SAVE",),
        ("FLUSHDB",),
        ("DBSIZE",),
    )[2:]
    # an integer: the worker may have made its queue anew already (on Redis 7.2+ a flush wakes
    # its blocked XREADGROUP at once)
    assert (saved, flushed) == (OK, OK) and size.startswith(b":")


def test_smartredis_standalone_addressing(gateway: Gateway, worker: Worker) -> None:
    """Standalone mode (SSDB without cluster): no CLUSTER command; AI.INFO, FLUSHDB, CONFIG GET
    and SAVE go to the one address; a model under MODEL_CHUNK_SIZE comes back as one bulk
    string (older clients' get_model reads ``reply.str_len()``), and so does a script."""
    sock = raw_socket(gateway)
    try:
        graph = tf_mul_graph()
        assert exchange(
            sock,
            ("AI.MODELSTORE", "m", "TF", "CPU", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "mul",
             "BLOB", graph),
            ("AI.SCRIPTSET", "s", "CPU", "SOURCE", SCRIPT),
        ) == [OK, OK]  # fmt: skip
        assert one(sock, "AI.MODELGET", "m", "BLOB") == b"$%d\r\n%s\r\n" % (len(graph), graph)
        assert one(sock, "AI.SCRIPTGET", "s", "SOURCE") == (
            b"$%d\r\n%s\r\n" % (len(SCRIPT), SCRIPT.encode())
        )
        info = pairs(one(sock, "AI.INFO", "m"))
        assert info["type"] == R("$", b"MODEL") and info["calls"] == R(":", 0)
    finally:
        sock.close()
