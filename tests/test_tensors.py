"""Client.tensorset / tensorget against a real Redis."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis
from redis.exceptions import ResponseError

from aiworker import AIError, Client, WrongTypeError
from aiworker.gateway.translate import error_reply
from aiworker.protocol.errors import WRONGTYPE
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage import tensor_io

SAMPLES: dict[str, np.ndarray] = {
    "FLOAT": np.array([[0.0, -0.0, np.nan], [np.inf, -np.inf, 3.4028235e38]], dtype="<f4"),
    "DOUBLE": np.array([5e-324, -0.0, np.nan, 1.7976931348623157e308], dtype="<f8"),
    "INT8": np.array([-128, 127, 0], dtype="i1"),
    "INT16": np.array([-32768, 32767], dtype="<i2"),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype="<i4"),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype="<i8"),
    "UINT8": np.array([0, 255], dtype="u1"),
    "UINT16": np.array([0, 65535], dtype="<u2"),
    "BOOL": np.array([[True, False], [False, True]]),
    "STRING": np.array([b"", b"hello", "w\u00f6rld".encode()], dtype=object),
}


@pytest.mark.parametrize("dtype", list(SAMPLES))
def test_roundtrip_each_dtype_bit_exact(client: Client, dtype: str) -> None:
    array = SAMPLES[dtype]
    assert client.tensorset("t", array) == "OK"
    out = client.tensorget("t")
    assert isinstance(out, np.ndarray)
    assert out.shape == array.shape
    if dtype == "STRING":  # a numpy str array, as redisai-py decoded STRING tensors
        assert out.dtype.kind == "U"
        assert out.tolist() == [v.decode() for v in array.tolist()]
    else:
        assert out.dtype == array.dtype
        assert out.tobytes() == array.tobytes()
    assert client.tensorget("t", meta_only=True) == {"dtype": dtype, "shape": list(array.shape)}
    stored = client.hgetall("t")
    assert stored[b"dtype"] == dtype.encode()
    assert stored[b"shape"] == ",".join(map(str, array.shape)).encode()


def test_roundtrip_0d_and_big_endian(client: Client) -> None:
    client.tensorset("scalar", np.array(3.25, dtype=np.float64))
    out = client.tensorget("scalar")
    assert out.shape == () and out.dtype == np.float64 and float(out) == 3.25
    client.tensorset("be", np.array([1, -2, 3], dtype=">i4"))
    assert client.hget("be", "blob") == np.array([1, -2, 3], dtype="<i4").tobytes()
    assert client.tensorget("be").tolist() == [1, -2, 3]


def test_tensorget_default_is_read_only(client: Client) -> None:
    client.tensorset("t", np.arange(4, dtype=np.float32))
    out = client.tensorget("t")
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 42


def test_tensorget_mutable_is_a_writable_copy(client: Client) -> None:
    client.tensorset("t", np.arange(4, dtype=np.float32))
    out = client.tensorget("t", as_numpy_mutable=True)
    assert out.flags.writeable
    out[0] = 42
    assert out.tolist() == [42, 1, 2, 3]
    assert client.tensorget("t").tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[1.5, 2], [3, 4]], dtype=np.float32),
         {"dtype": "FLOAT", "shape": [2, 2], "values": [1.5, 2.0, 3.0, 4.0]}),
        (np.array([True, False]), {"dtype": "BOOL", "shape": [2], "values": [1, 0]}),
        (np.array([-1, 7], dtype=np.int64), {"dtype": "INT64", "shape": [2], "values": [-1, 7]}),
        (np.array([b"a", b"bc"], dtype=object),
         {"dtype": "STRING", "shape": [2], "values": ["a", "bc"]}),
        # an element that is not UTF-8 stays bytes, as in a numpy result (redisai-py raised)
        (np.array([b"\xff\xfe", b"ok"], dtype=object),
         {"dtype": "STRING", "shape": [2], "values": [b"\xff\xfe", "ok"]}),
    ],
)  # fmt: skip
def test_tensorget_values_dict(client: Client, array: np.ndarray, expected: dict[str, Any]) -> None:
    client.tensorset("t", array)
    assert client.tensorget("t", as_numpy=False) == expected


def test_meta_only(client: Client) -> None:
    client.tensorset("t", np.zeros((2, 3, 4), dtype=np.uint16))
    assert client.tensorget("t", meta_only=True) == {"dtype": "UINT16", "shape": [2, 3, 4]}


def test_values_form_with_shape_and_dtype(client: Client) -> None:
    client.tensorset("t", [1, 2, 3, 4, 5, 6], shape=(2, 3), dtype="int32")
    out = client.tensorget("t")
    assert out.dtype == np.int32 and out.tolist() == [[1, 2, 3], [4, 5, 6]]
    client.tensorset("s", ["x", "y"], shape=[2], dtype="STRING")
    assert client.tensorget("s").tolist() == ["x", "y"]


def test_zeros_when_tensor_is_none(client: Client) -> None:
    client.tensorset("t", None, shape=(2, 2), dtype="DOUBLE")
    out = client.tensorget("t")
    assert out.dtype == np.float64 and out.shape == (2, 2) and not out.any()


def test_overwrite_replaces_values_field(client: Client) -> None:
    client.hset("t", mapping={"kind": "tensor", "dtype": "INT8", "shape": "2", "values": "1 2"})
    client.tensorset("t", np.array([5, 6, 7], dtype=np.int8))
    assert not client.hexists("t", "values")
    assert client.tensorget("t").tolist() == [5, 6, 7]


def test_hash_written_like_redis_cli_is_readable(client: Client) -> None:
    # HSET a kind tensor dtype FLOAT shape 2 values "2 3"
    client.execute_command("HSET", "a", "kind", "tensor", "dtype", "FLOAT", "shape", "2",
                           "values", "2 3")  # fmt: skip
    out = client.tensorget("a")
    assert out.dtype == np.float32 and out.tolist() == [2.0, 3.0]
    assert client.tensorget("a", as_numpy=False) == {
        "dtype": "FLOAT",
        "shape": [2],
        "values": [2.0, 3.0],
    }
    assert client.tensorget("a", meta_only=True) == {"dtype": "FLOAT", "shape": [2]}


def test_missing_key(client: Client) -> None:
    for kwargs in ({}, {"as_numpy": False}, {"meta_only": True}, {"as_numpy_mutable": True}):
        with pytest.raises(AIError) as info:
            client.tensorget("nope", **kwargs)
        assert str(info.value) == "tensor key is empty or in a different shard"
        assert isinstance(info.value, ResponseError)


@pytest.mark.parametrize("kind", ["string", "hash", "list"])
def test_wrong_type_key(client: Client, kind: str) -> None:
    if kind == "string":
        client.set("k", "plain")
    elif kind == "hash":
        client.hset("k", mapping={"field": "value", "dtype": "FLOAT", "shape": "1"})
    else:
        client.rpush("k", "x")
    for kwargs in ({}, {"as_numpy": False}, {"meta_only": True}):
        with pytest.raises(WrongTypeError) as info:
            client.tensorget("k", **kwargs)
        assert (
            str(info.value) == "WRONGTYPE Operation against a key holding the wrong kind of value"
        )
    with pytest.raises(WrongTypeError) as info:
        client.tensorset("k", np.zeros(2, dtype=np.float32))
    assert str(info.value) == WRONGTYPE
    assert client.type("k") == {"string": b"string", "hash": b"hash", "list": b"list"}[kind]


def test_tensorset_onto_a_model_key_is_wrongtype(client: Client) -> None:
    client.modelstore("m", "STUB", "CPU", b'{"op":"add"}')
    with pytest.raises(WrongTypeError) as info:
        client.tensorset("m", np.zeros(2, dtype=np.float32))
    assert str(info.value) == WRONGTYPE
    with pytest.raises(WrongTypeError):
        client.tensorget("m")
    assert client.modelget("m")["blob"] == b'{"op":"add"}'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1, 2], (2,), "uint32"), "invalid data type"),
        (([1, 2], (-2,), "FLOAT"), "invalid or negative value found in tensor shape"),
        (([1, 2], (2, 0), "FLOAT"), "invalid or negative value found in tensor shape"),
        (([1, 2, 3], (2,), "FLOAT"), "wrong number of values was given in 'AI.TENSORSET' command"),
        (([1, 2], (2,), "BOOL"), "invalid value"),
        ((["a\0b"], (1,), "STRING"), "C-string value contains null character"),
    ],
)
def test_tensorset_errors_store_nothing(
    client: Client, args: tuple[Any, Any, Any], message: str
) -> None:
    data, shape, dtype = args
    with pytest.raises(AIError) as info:
        client.tensorset("t", data, shape=shape, dtype=dtype)
    assert str(info.value) == message
    assert not client.exists("t")


def test_large_tensor_roundtrip(client: Client) -> None:
    array = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB
    client.tensorset("big", array)
    assert np.array_equal(client.tensorget("big"), array)


def test_large_tensors_take_the_watched_path_with_the_same_type_rules(client: Client) -> None:
    """Tensors above LUA_VALUE_BYTES skip the Lua write (its argument copies) but keep its checks."""
    from aiworker.storage.tensor_io import LUA_VALUE_BYTES

    big = np.arange(LUA_VALUE_BYTES // 4 + 10, dtype=np.float32)
    client.hset("big", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1", "values": "1"})
    assert client.tensorset("big", big) == "OK"
    assert client.hget("big", "values") is None  # replaced, not merged
    np.testing.assert_array_equal(client.tensorget("big"), big)
    client.set("text", "x")
    client.hset("other", "field", "value")
    for key in ("text", "other"):
        with pytest.raises(WrongTypeError):
            client.tensorset(key, big)
    assert client.get("text") == b"x"
    assert client.hgetall("other") == {b"field": b"value"}


def test_a_tensor_hash_declaring_more_zeros_than_any_data_is_refused(client: Client) -> None:
    """A hash of a few bytes with no data declared a shape of 373 GiB, and ``tensorget`` tried
    to allocate it (a worker refuses it against max_tensor_bytes already)."""
    client.hset("k", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "100000,100000,10"})
    with pytest.raises(AIError, match="declares 400,000,000,000 bytes"):
        client.tensorget("k")
    client.hset("k", "shape", "2,3")
    assert client.tensorget("k").tolist() == [[0.0] * 3] * 2


def test_a_tensorset_of_more_zeros_than_any_data_is_refused_before_allocating(
    client: Client,
) -> None:
    """RedisAI's TENSORSET without data of a 4 GB shape: refused before the zeros are made (the
    client allocated 4 GB and Redis then closed the connection on a value over 512 MiB)."""
    with pytest.raises(AIError, match=r"declares 4,000,000,000 bytes \(FLOAT 100000,10000\)"):
        client.tensorset("big", None, shape=(100000, 10000), dtype="FLOAT")
    assert not client.exists("big")
    client.tensorset("big", None, shape=(2, 3), dtype="FLOAT")
    assert client.tensorget("big").tolist() == [[0.0] * 3] * 2


@pytest.mark.parametrize(
    "decode",
    [tensor_io.decode_reply, model_store.check_meta_reply, script_store.check_reply],
    ids=["tensor", "model", "script"],
)
def test_a_loading_redis_error_in_a_reply_is_raised_as_it_is(decode: Any) -> None:
    """Redis answers LOADING while it loads its data; redis-py's BusyLoadingError is a
    ConnectionError, not a ResponseError, so a reply holding one was decoded as the tensor's
    (or model's) fields: the gateway answered `'BusyLoadingError' object has no attribute
    'get'` instead of Redis's LOADING error."""
    loading = redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
    with pytest.raises(redis.exceptions.BusyLoadingError):
        decode(loading)
    assert error_reply(loading).startswith("LOADING")
