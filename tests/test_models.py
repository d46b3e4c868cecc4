"""modelstore / modelget / modeldel / modelscan, chunking, atomic replace, AI.CONFIG."""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import stub_blob, torch_blob
from redis.exceptions import ResponseError

from aiworker import AIError, Client, Worker, WrongTypeError
from aiworker.client.ops import VerifyModelHere
from aiworker.protocol.errors import WRONGTYPE
from aiworker.storage import model as model_store
from aiworker.storage import plans
from aiworker.storage import script as script_store
from aiworker.storage.model import MAX_BATCH_SETTING
from aiworker.storage.plans import Commands

ADD = b'{"op":"add"}'


def test_stub_store_get(client: Client) -> None:
    assert client.modelstore("m", "stub", "cpu", ADD, tag="v1") == "OK"
    assert client.modelget("m") == {
        "backend": "STUB",
        "device": "cpu",  # stored as given, as RedisAI does
        "tag": "v1",
        "batchsize": 0,
        "minbatchsize": 0,
        "inputs": [],
        "outputs": [],
        "minbatchtimeout": 0,
        "blob": ADD,
    }


def test_store_with_batching_options(client: Client) -> None:
    client.modelstore("m", "STUB", "GPU:1", ADD, batch=8, minbatch=2, minbatchtimeout=50)
    meta = client.modelget("m", meta_only=True)
    assert (meta["device"], meta["batchsize"], meta["minbatchsize"], meta["minbatchtimeout"]) == (
        "GPU:1",
        8,
        2,
        50,
    )


def test_torch_store_get(client: Client) -> None:
    blob = torch_blob("add")
    client.modelstore("tm", "TORCH", "CPU", blob, tag="torch")
    got = client.modelget("tm")
    assert got["backend"] == "TORCH"
    assert got["tag"] == "torch"
    assert got["blob"] == blob


def test_memoryview_and_bytearray_blobs(client: Client) -> None:
    blob = torch_blob("mul")
    client.modelstore("a", "TORCH", "CPU", memoryview(blob))
    client.modelstore("b", "TORCH", "CPU", bytearray(blob))
    assert client.modelget("a")["blob"] == blob
    assert client.modelget("b")["blob"] == blob


def test_meta_only_has_no_blob(client: Client) -> None:
    client.modelstore("m", "STUB", "CPU", ADD)
    meta = client.modelget("m", meta_only=True)
    assert "blob" not in meta
    assert meta["backend"] == "STUB" and meta["device"] == "CPU"


def test_small_chunk_size_splits_and_reassembles(client: Client) -> None:
    assert client.config("MODEL_CHUNK_SIZE", 7) == "OK"
    assert client.config("MODEL_CHUNK_SIZE") == 7
    blob = torch_blob("add")
    client.modelstore("m", "TORCH", "CPU", blob)
    fields = client.hkeys("m")
    chunk_fields = sorted(f for f in fields if f.startswith(b"chunk:"))
    expected = -(-len(blob) // 7)
    assert len(chunk_fields) == expected > 1
    assert client.hget("m", "chunk:0") == blob[:7]
    assert client.hget("m", f"chunk:{expected - 1}") == blob[(expected - 1) * 7 :]
    # RedisAI replies with the blob split by the current MODEL_CHUNK_SIZE: len // 7 + 1 pieces
    assert b"".join(client.modelget("m")["blob"]) == blob
    assert len(client.modelget("m")["blob"]) == len(blob) // 7 + 1
    client.config("MODEL_CHUNK_SIZE", len(blob) + 1)
    assert client.modelget("m")["blob"] == blob  # one bulk string below the chunk size


def test_modelget_chunks_follow_the_current_chunk_size(client: Client) -> None:
    """RedisAI's MODELGET splits the blob by the chunk size configured when it is read: a
    1,352-byte blob comes back in 4 chunks of 450 bytes (the last one 2 bytes)."""
    blob = bytes(range(256)) * 5 + bytes(72)
    assert len(blob) == 1352
    client.modelstore("m", "STUB", "CPU", b'{"op": "add", "pad": "' + b"x" * 1328 + b'"}')
    stored = client.modelget("m")["blob"]
    assert isinstance(stored, bytes) and len(stored) == 1352
    client.config("MODEL_CHUNK_SIZE", 1352 // 3)
    chunks = client.modelget("m")["blob"]
    assert [len(c) for c in chunks] == [450, 450, 450, 2]
    assert b"".join(chunks) == stored


def test_a_model_stored_under_a_tiny_chunk_size_is_read_and_run(
    client: Client, worker: Worker
) -> None:
    """AI.CONFIG takes any chunk size, as RedisAI did: a model stored under one too small for
    the chunks a reader fetches is stored in larger chunks, and MODELGET still follows it."""
    client.config("MODEL_CHUNK_SIZE", 1)
    blob = stub_blob("add", pad="x" * (model_store.MAX_CHUNKS + 100))
    client.modelstore("m", "STUB", "CPU", blob)
    assert 1 < int(client.hget("m", "chunks")) <= model_store.MAX_CHUNKS
    client.config("MODEL_CHUNK_SIZE", len(blob) // 2)
    assert b"".join(client.modelget("m")["blob"]) == blob
    client.tensorset("a", np.ones(2, np.float32))
    client.modelexecute("m", ["a", "a"], ["c"])
    assert client.tensorget("c").tolist() == [2, 2]


def test_no_stored_chunk_is_larger_than_redis_takes_in_one_argument() -> None:
    """A MODEL_CHUNK_SIZE above Redis' proto-max-bulk-len (512 MB) would make a large model's
    store one argument Redis refuses (closing the connection)."""
    with mmap.mmap(-1, 600 << 20) as blob:  # untouched pages: no memory used
        chunks = model_store.split_blob(blob, 1 << 30)
        assert [len(c) for c in chunks] == [model_store.MAX_STORED_CHUNK, (600 - 511) << 20]
        for chunk in chunks:
            chunk.release()


def test_restore_with_fewer_chunks_leaves_no_stale_chunks(client: Client) -> None:
    client.config("MODEL_CHUNK_SIZE", 4)
    client.modelstore("m", "STUB", "CPU", stub_blob("add", pad="x" * 40))
    client.modelstore("m", "STUB", "CPU", ADD)
    assert len([f for f in client.hkeys("m") if f.startswith(b"chunk:")]) == 3
    assert b"".join(client.modelget("m")["blob"]) == ADD


def test_a_tag_or_name_that_is_not_utf8_is_refused_with_its_name(client: Client) -> None:
    """Tags and names are stored as text: bytes that are not UTF-8 get an error naming them."""
    source = (
        "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n"
    )
    with pytest.raises(AIError, match=r"^TAG is not valid UTF-8$"):
        client.modelstore("m", "STUB", "CPU", ADD, tag=b"v\xff")
    with pytest.raises(AIError, match=r"^OUTPUTS name is not valid UTF-8$"):
        client.modelstore("m", "TF", "CPU", ADD, inputs=["a"], outputs=[b"\xff"])
    with pytest.raises(AIError, match=r"^TAG is not valid UTF-8$"):
        client.scriptstore("s", "CPU", source, entry_points=["bar"], tag=b"v\xff")
    with pytest.raises(AIError, match=r"^SOURCE is not valid UTF-8$"):
        client.scriptstore("s", "CPU", source.encode() + b"# caf\xe9\n", entry_points=["bar"])
    assert client.exists("m", "s") == 0
    client.modelstore("m", "STUB", "CPU", ADD, tag="caf\u00e9".encode())
    assert client.modelget("m", meta_only=True)["tag"] == "caf\u00e9"


def test_modeldel(client: Client) -> None:
    client.modelstore("m", "STUB", "CPU", ADD)
    assert client.modeldel("m") == "OK"
    assert not client.exists("m")
    with pytest.raises(AIError) as info:
        client.modelget("m")
    assert str(info.value) == "model key is empty"
    assert client.modelscan() == []


def test_the_largest_batch_settings_are_stored_and_read_back(client: Client) -> None:
    largest = MAX_BATCH_SETTING
    client.modelstore("m", "STUB", "CPU", ADD, batch=largest, minbatch=largest,
                      minbatchtimeout=largest)  # fmt: skip
    meta = client.modelget("m", meta_only=True)
    assert (meta["batchsize"], meta["minbatchsize"], meta["minbatchtimeout"]) == (largest,) * 3
    assert client.modeldel("m") == "OK"


def test_modeldel_deletes_a_model_whose_metadata_cannot_be_read(client: Client) -> None:
    """As RedisAI deleted any model key it was given; keys that hold no model stay."""
    client.modelstore("m", "STUB", "CPU", ADD, batch=4)
    client.hset("m", "batchsize", "1" * 19)  # written by hand (or by an older store)
    with pytest.raises(AIError, match=r"^Invalid argument for BATCHSIZE$"):
        client.modelget("m", meta_only=True)
    assert client.modeldel("m") == "OK"
    assert not client.exists("m") and client.modelscan() == []
    client.hset("h", mapping={"device": "CPU", "batchsize": "x"})  # a hash, but no model's
    with pytest.raises(WrongTypeError):
        client.modeldel("h")
    assert client.hget("h", "device") == b"CPU"


@pytest.mark.parametrize("kind", ["model", "script"])
def test_a_delete_never_takes_a_value_written_while_it_ran(client: Client, kind: str) -> None:
    """AI.MODELDEL / AI.SCRIPTDEL check the key and delete it in one step: when another client
    replaces the model with a tensor right after the delete's first round trip, the tensor stays
    (the delete answers OK, or WRONGTYPE if it had not looked at the key yet)."""
    if kind == "model":
        client.modelstore("m", "STUB", "CPU", ADD)
        plan = model_store.delete_plan(client.keyspace, "m")
    else:
        source = "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return 1\n"
        client.scriptstore("m", "CPU", source, entry_points=["f"])
        plan = script_store.delete_plan(client.keyspace, "m")
    steps = []

    def send_then_replace(batch: Commands) -> list[Any]:
        replies = plans.execute_commands(client, batch)
        if not steps:
            client.delete("m")
            client.tensorset("m", [7.0], dtype="FLOAT")
        steps.append(batch)
        return replies

    with contextlib.suppress(WrongTypeError):
        plans.drive(plan, send_then_replace)
    assert client.tensorget("m").tolist() == [7.0]


@pytest.mark.parametrize("call", ["modeldel", "modelget", "modelget_meta"])
def test_missing_model(client: Client, call: str) -> None:
    with pytest.raises(AIError) as info:
        if call == "modeldel":
            client.modeldel("nope")
        else:
            client.modelget("nope", meta_only=call == "modelget_meta")
    assert str(info.value) == "model key is empty"
    assert isinstance(info.value, ResponseError)


def test_model_calls_on_other_keys_are_wrongtype(client: Client) -> None:
    client.set("s", "x")
    client.tensorset("t", [1.0], dtype="FLOAT")
    for key in ("s", "t"):
        for call in (lambda k: client.modelget(k), lambda k: client.modeldel(k),
                     lambda k: client.modelstore(k, "STUB", "CPU", ADD)):  # fmt: skip
            with pytest.raises(WrongTypeError) as info:
                call(key)
            assert str(info.value) == WRONGTYPE
    assert client.get("s") == b"x"
    assert client.tensorget("t").tolist() == [1.0]


@pytest.mark.parametrize("meanwhile", ["tensor", "script", "model"])
def test_a_key_written_while_the_model_is_verified_is_not_overwritten(
    client: Client, redis_server: Any, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """RedisAI refused a store onto a key holding another kind of value. The key is checked
    before the model is verified (a load: seconds for a large one) and again, atomically, as
    the model is written: what another client wrote meanwhile is refused, not overwritten."""
    other = Client.from_url(redis_server.url)

    def write(_check: Any) -> bool:  # another client, while the blob is loaded
        if meanwhile == "tensor":
            other.tensorset("m", [1.0, 2.0], dtype="FLOAT")
        elif meanwhile == "script":
            other.hset("m", mapping={"kind": "script", "source": "x"})
            other.hset(other.keyspace.stats("m"), "calls", 7)
        else:
            other.hset("m", mapping={"kind": "model", "tag": "other"})
        return True

    monkeypatch.setattr(VerifyModelHere, "check", write)
    try:
        if meanwhile == "model":  # another store of the same kind: replaced, as RedisAI did
            assert client.modelstore("m", "STUB", "CPU", ADD, tag="mine") == "OK"
            assert client.modelget("m", meta_only=True)["tag"] == "mine"
            return
        with pytest.raises(WrongTypeError):
            client.modelstore("m", "STUB", "CPU", ADD)
    finally:
        other.close()
    assert client.hget("m", "kind") == meanwhile.encode()
    if meanwhile == "tensor":
        assert client.tensorget("m").tolist() == [1.0, 2.0]
    else:
        assert client.hget(client.keyspace.stats("m"), "calls") == b"7"  # not reset
    assert client.modelscan() == [] and not client.keys("aiworker:tmp:*")


def test_modelscan(client: Client) -> None:
    assert client.modelscan() == []
    client.modelstore("m1", "STUB", "CPU", ADD)
    client.modelstore("m2", "STUB", "CPU", ADD, tag="v2")
    assert sorted(client.modelscan()) == [["m1", ""], ["m2", "v2"]]
    client.delete("m1")  # deleted behind aiworker's back
    assert client.modelscan() == [["m2", "v2"]]


def test_restore_replaces_metadata(client: Client) -> None:
    client.modelstore("m", "STUB", "CPU", ADD, tag="old", batch=4)
    client.modelstore("m", "TORCH", "CPU:2", torch_blob("add"))
    meta = client.modelget("m", meta_only=True)
    assert (meta["backend"], meta["device"], meta["tag"], meta["batchsize"]) == (
        "TORCH",
        "CPU:2",
        "",
        0,
    )


# redisai-py's own checks, before anything is sent (its ValueError/TypeError and messages)
CLIENT_ERRORS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("backend", {"backend": "CAFFE"}, ValueError, "Backend not allowed. Use any from "),
    ("backend-empty", {"backend": ""}, ValueError, "Backend not allowed. Use any from "),
    ("device-bad", {"device": "bad_device"}, ValueError, "Device not allowed. Use any from "),
    ("device-tpu", {"device": "TPU"}, ValueError, "Device not allowed. Use any from "),
    ("device-empty", {"device": ""}, ValueError, "Device not allowed. Use any from "),
    ("minbatch-without-batch", {"minbatch": 2}, ValueError,
     "Minbatch is not allowed without batch"),
    ("minbatchtimeout-without-minbatch", {"batch": 4, "minbatchtimeout": 10}, ValueError,
     "Minbatchtimeout is not allowed without minbatch"),
    ("tf-no-inputs", {"backend": "TF", "outputs": ["y"]}, ValueError,
     "Require keyword arguments inputs and outputs for TF models"),
    ("tf-no-outputs", {"backend": "TF", "inputs": ["x"]}, ValueError,
     "Require keyword arguments inputs and outputs for TF models"),
    ("io-for-torch", {"backend": "TORCH", "inputs": ["x"], "outputs": ["y"]}, ValueError,
     "Inputs and outputs keywords should not be specified for this backend"),
    ("io-for-stub", {"outputs": "y"}, ValueError,
     "Inputs and outputs keywords should not be specified for this backend"),
    ("no-blob-none", {"data": None}, TypeError, "object of type 'NoneType' has no len()"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [c[1:] for c in CLIENT_ERRORS],
    ids=[c[0] for c in CLIENT_ERRORS],
)
def test_modelstore_client_checks(
    client: Client, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    args: dict[str, Any] = {"backend": "STUB", "device": "CPU", "data": ADD, **kwargs}
    with pytest.raises(error) as info:
        client.modelstore("m", **args)
    assert str(info.value).startswith(message)
    assert not isinstance(info.value, ResponseError)
    assert not client.exists("m")


# RedisAI's checks (what it answered to the command redisai-py sent)
STORE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("device-double-colon", {"device": "CPU::"}, "Invalid DEVICE"),
    ("device-fraction", {"device": "CPU:1.8"}, "Invalid DEVICE"),
    ("no-blob-empty", {"data": b""}, "Insufficient arguments, missing model BLOB"),
    ("batchsize-negative", {"batch": -1}, "Invalid argument for BATCHSIZE"),
    ("batchsize-text", {"batch": "four"}, "Invalid argument for BATCHSIZE"),
    ("minbatchsize-negative", {"batch": 4, "minbatch": -1}, "Invalid argument for MINBATCHSIZE"),
    ("minbatchtimeout-negative", {"batch": 4, "minbatch": 2, "minbatchtimeout": -5},
     "Invalid argument for MINBATCHTIMEOUT"),
    # more than a model hash's readers take back (``MAX_BATCH_SETTING``)
    ("batchsize-too-large", {"batch": 10**18}, "Invalid argument for BATCHSIZE"),
    ("batchsize-int64", {"batch": 2**63 - 1}, "Invalid argument for BATCHSIZE"),
    ("minbatchsize-too-large", {"batch": 4, "minbatch": 10**18},
     "Invalid argument for MINBATCHSIZE"),
    ("minbatchtimeout-too-large", {"batch": 4, "minbatch": 2, "minbatchtimeout": 10**18},
     "Invalid argument for MINBATCHTIMEOUT"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"), [c[1:] for c in STORE_ERRORS], ids=[c[0] for c in STORE_ERRORS]
)
def test_modelstore_validation(client: Client, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"backend": "STUB", "device": "CPU", "data": ADD, **kwargs}
    with pytest.raises(AIError) as info:
        client.modelstore("m", **args)
    assert str(info.value) == message
    assert isinstance(info.value, ResponseError)
    assert not client.exists("m")
    assert client.modelscan() == []


@pytest.mark.parametrize("device", ["CPU", "gpu", "CPU:0", "gpu:12345", "Cpu:7"])
def test_valid_devices(client: Client, device: str) -> None:
    client.modelstore("m", "STUB", device, ADD)
    assert client.modelget("m", meta_only=True)["device"] == device


def test_atomic_replace_under_concurrent_reads(client: Client, redis_server: Any) -> None:
    """A reader sees exactly one of the stored versions, never a torn or mixed blob."""
    client.config("MODEL_CHUNK_SIZE", 5)
    small = stub_blob("add")  # a few chunks
    large = stub_blob("mul", pad="y" * 97)  # many more chunks
    versions = (small, large)
    client.modelstore("m", "STUB", "CPU", small)
    stop = threading.Event()
    writes = [0]
    errors: list[BaseException] = []

    def writer() -> None:
        w = Client.from_url(redis_server.url)
        try:
            while not stop.is_set():
                w.modelstore("m", "STUB", "CPU", versions[writes[0] % 2])
                writes[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            w.close()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = {small: 0, large: 0}
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            blob = b"".join(client.modelget("m")["blob"])  # split by the 5-byte chunk size
            assert blob in seen, f"torn read: {blob!r}"
            seen[blob] += 1
    finally:
        stop.set()
        thread.join(10)
    assert not errors
    assert writes[0] > 10
    assert seen[small] > 0 and seen[large] > 0


# AI.CONFIG -------------------------------------------------------------------------------


def test_config_chunk_size_default_and_set(client: Client) -> None:
    assert client.config("MODEL_CHUNK_SIZE") == 535822336
    assert client.config("model_chunk_size", "1024") == "OK"
    assert client.config("MODEL_CHUNK_SIZE") == 1024


def test_config_backendspath(client: Client) -> None:
    assert client.config("BACKENDSPATH") is None
    assert client.config("BACKENDSPATH", "/opt/backends") == "OK"
    assert client.config("BACKENDSPATH") == "/opt/backends"


@pytest.mark.parametrize("value", [0, -1, "abc", "1.5"])
def test_config_invalid_chunk_size(client: Client, value: Any) -> None:
    with pytest.raises(AIError) as info:
        client.config("MODEL_CHUNK_SIZE", value)
    assert str(info.value) == "MODEL_CHUNK_SIZE: invalid chunk size"
    assert client.config("MODEL_CHUNK_SIZE") == 535822336


@pytest.mark.parametrize(
    ("name", "largest"),
    [
        ("THREADS_PER_QUEUE", 256),
        ("MODEL_EXECUTION_TIMEOUT", 86_400_000),
        ("INTER_OP_PARALLELISM", 1024),
        ("INTRA_OP_PARALLELISM", 1024),
        ("BACKEND_MEMORY_LIMIT", 1 << 24),
    ],
)
def test_config_refuses_what_workers_would_ignore(client: Client, name: str, largest: int) -> None:
    """A worker reads these from the shared hash within bounds: THREADS_PER_QUEUE 300 was
    answered OK and stored, and every worker then ignored it with a warning."""
    with pytest.raises(AIError) as info:
        client.config(name, largest + 1)
    assert str(info.value) == f"{name}: invalid value"
    assert client.config(name, largest) == "OK"
    assert client.config(name) == largest


@pytest.mark.parametrize("stored", ["abc", "0", "1.5", "-4"])
def test_a_stored_value_no_config_wrote_reads_as_the_default(client: Client, stored: str) -> None:
    """Whoever may write the shared hash may HSET anything there; workers ignore what AI.CONFIG
    would not have written. Clients failed on it with Python's own errors instead: every model
    store (it reads MODEL_CHUNK_SIZE) with "invalid literal for int()" or "range() arg 3 must
    not be zero", and AI.CONFIG GET alike."""
    client.hset(
        client.keyspace.config, mapping={"MODEL_CHUNK_SIZE": stored, "THREADS_PER_QUEUE": stored}
    )
    assert client.config("MODEL_CHUNK_SIZE") == 535822336
    assert client.config("THREADS_PER_QUEUE") == 1
    assert client.modelstore("m", "STUB", "CPU", stub_blob("add")) == "OK"
    assert client.modelget("m")["blob"] == stub_blob("add")


@pytest.mark.parametrize("name", ["NOPE", "LOADBACKEND2", ""])
def test_config_unknown_name(client: Client, name: str) -> None:
    assert client.config(name) is None  # as redisai-py got from RedisAI
    with pytest.raises(AIError) as info:
        client.config(name, "1")
    assert str(info.value) == "unsupported subcommand"
