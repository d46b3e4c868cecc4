"""The tensor codec (aiworker.protocol.tensor): pure encode/decode, no Redis."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from redis.exceptions import ResponseError

from aiworker.protocol import messages
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import WRONGTYPE, AIError, WrongTypeError

LE = {
    "FLOAT": np.dtype("<f4"),
    "DOUBLE": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "BOOL": np.dtype("?"),
}


def _nan_with_payload(bits: int, dtype: str) -> Any:
    return np.array([bits], dtype=dtype).view("<f4" if dtype == "<u4" else "<f8")[0]


def _floats(dtype: str) -> np.ndarray:
    info = np.finfo(dtype)
    payload_nan = (
        _nan_with_payload(0x7FC00123, "<u4")
        if dtype == "<f4"
        else _nan_with_payload(0x7FF8000000000123, "<u8")
    )
    return np.array(
        [0.0, -0.0, np.nan, payload_nan, np.inf, -np.inf, 1.5, info.max, info.min, info.tiny,
         info.smallest_subnormal],
        dtype=dtype,
    )  # fmt: skip


def _ints(dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.array([info.min, info.max, 0, 1, info.min + 1, info.max - 1], dtype=dtype)


def _strings() -> np.ndarray:
    out = np.empty(5, dtype=object)
    out[:] = [b"", b"abc", "\u00e9t\u00e9".encode(), b"with space", b"\xff\x01"]
    return out


SAMPLES: dict[str, np.ndarray] = {
    "FLOAT": _floats("<f4"),
    "DOUBLE": _floats("<f8"),
    "INT8": _ints("i1"),
    "INT16": _ints("<i2"),
    "INT32": _ints("<i4"),
    "INT64": _ints("<i8"),
    "UINT8": _ints("u1"),
    "UINT16": _ints("<u2"),
    "BOOL": np.array([True, False, False, True]),
    "STRING": _strings(),
}
ALL_DTYPES = list(SAMPLES)


def as_redis(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """What HGETALL would return for these fields: bytes keys and values."""
    return {k.encode(): v.encode() if isinstance(v, str) else bytes(v) for k, v in fields.items()}


def assert_same(actual: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    """Same dtype name, shape and bits (NaN payloads and -0.0 included)."""
    assert codec.dtype_of(actual) == dtype
    assert actual.shape == expected.shape
    if dtype == "STRING":
        assert actual.reshape(-1).tolist() == [
            v if isinstance(v, bytes) else str(v).encode() for v in expected.reshape(-1).tolist()
        ]
    else:
        assert actual.dtype == LE[dtype]
        assert actual.tobytes() == np.ascontiguousarray(expected.astype(LE[dtype])).tobytes()


def roundtrip(array: np.ndarray) -> np.ndarray:
    return codec.decode_fields(as_redis(codec.encode_fields(array)))


# round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_roundtrip_is_bit_exact(dtype: str) -> None:
    array = SAMPLES[dtype]
    fields = codec.encode_fields(array)
    assert fields["kind"] == "tensor"
    assert fields["dtype"] == dtype
    assert fields["shape"] == str(array.size)
    assert_same(roundtrip(array), array, dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_roundtrip_with_str_keys_and_memoryview_blob(dtype: str) -> None:
    array = SAMPLES[dtype]
    assert_same(codec.decode_fields(codec.encode_fields(array)), array, dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_roundtrip_2d(dtype: str) -> None:
    array = np.concatenate([SAMPLES[dtype], SAMPLES[dtype]])[:4].reshape(2, 2)
    fields = codec.encode_fields(array)
    assert fields["shape"] == "2,2"
    assert_same(roundtrip(array), array, dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_zero_dimensional_tensor(dtype: str) -> None:
    array = np.array(SAMPLES[dtype][1], dtype=SAMPLES[dtype].dtype)
    assert array.ndim == 0
    fields = codec.encode_fields(array)
    assert fields["shape"] == ""
    out = roundtrip(array)
    assert out.shape == ()
    assert_same(out, array, dtype)


@pytest.mark.parametrize("dtype", [d for d in ALL_DTYPES if d != "STRING"])
def test_blob_is_raw_little_endian_c_order(dtype: str) -> None:
    array = SAMPLES[dtype]
    assert bytes(codec.encode_fields(array)["blob"]) == array.astype(LE[dtype]).tobytes()


def test_string_blob_is_nul_terminated_elements() -> None:
    array = np.array([b"ab", b"", b"c"], dtype=object)
    assert bytes(codec.encode_fields(array)["blob"]) == b"ab\0\0c\0"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_non_contiguous_input(dtype: str) -> None:
    base = np.concatenate([SAMPLES[dtype]] * 4)[:16].reshape(4, 4)
    for view in (base[::2], base.T, base[:, 1::2]):
        assert not view.flags.c_contiguous
        out = roundtrip(view)
        assert_same(out, np.ascontiguousarray(view), dtype)


@pytest.mark.parametrize(
    ("dtype", "big_endian"),
    [("FLOAT", ">f4"), ("DOUBLE", ">f8"), ("INT16", ">i2"), ("INT32", ">i4"), ("INT64", ">i8"),
     ("UINT16", ">u2")],
)  # fmt: skip
def test_big_endian_input(dtype: str, big_endian: str) -> None:
    array = SAMPLES[dtype].astype(big_endian)
    assert array.dtype.byteorder == ">"
    fields = codec.encode_fields(array)
    assert fields["dtype"] == dtype
    assert bytes(fields["blob"]) == SAMPLES[dtype].astype(LE[dtype]).tobytes()
    assert_same(roundtrip(array), SAMPLES[dtype], dtype)


def test_unicode_string_array_is_stored_as_utf8() -> None:
    array = np.array(["a", "\u00e9", ""])
    fields = codec.encode_fields(array)
    assert fields["dtype"] == "STRING"
    assert roundtrip(array).tolist() == [b"a", "\u00e9".encode(), b""]


def test_decoded_blob_array_is_read_only() -> None:
    out = roundtrip(SAMPLES["INT32"])
    with pytest.raises(ValueError):
        out[0] = 1


def test_numeric_blob_encoding_is_zero_copy() -> None:
    array = np.arange(1000, dtype="<f4")
    blob = codec.encode_fields(array)["blob"]
    assert isinstance(blob, memoryview)
    assert np.shares_memory(np.frombuffer(blob, dtype="<f4"), array)


# VALUES form -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "shape", "values", "expected"),
    [
        ("FLOAT", "2", "2 3", np.array([2, 3], dtype="<f4")),
        ("DOUBLE", "2,2", "1 2.5 -3 1e300", np.array([[1, 2.5], [-3, 1e300]], dtype="<f8")),
        ("INT8", "2", "-128 127", np.array([-128, 127], dtype="i1")),
        ("INT16", "2", "-32768 32767", np.array([-32768, 32767], dtype="<i2")),
        ("INT32", "1", "-2147483648", np.array([-(2**31)], dtype="<i4")),
        ("INT64", "2", f"{-(2**63)} {2**63 - 1}", np.array([-(2**63), 2**63 - 1], dtype="<i8")),
        ("UINT8", "2", "0 255", np.array([0, 255], dtype="u1")),
        ("UINT16", "2", "0 65535", np.array([0, 65535], dtype="<u2")),
        ("BOOL", "3", "1 0 1", np.array([True, False, True])),
        ("INT32", "", "7", np.array(7, dtype="<i4")),
        ("FLOAT", "2 2", "1 2 3 4", np.array([[1, 2], [3, 4]], dtype="<f4")),
        ("FLOAT", "2, 2", "1 2 3 4", np.array([[1, 2], [3, 4]], dtype="<f4")),
        ("UINT8", " 1 ,2 ", "5 6", np.array([[5, 6]], dtype="u1")),
    ],
)
def test_values_field_as_written_by_redis_cli(
    dtype: str, shape: str, values: str, expected: np.ndarray
) -> None:
    fields = {b"kind": b"tensor", b"dtype": dtype.encode(), b"shape": shape.encode(),
              b"values": values.encode()}  # fmt: skip
    assert_same(codec.decode_fields(fields), expected, dtype)


def test_values_special_floats_are_bit_exact() -> None:
    out = codec.from_values("FLOAT", (4,), ["nan", "inf", "-inf", "-0"])
    assert np.isnan(out[0])
    assert out[1:].tolist() == [np.inf, -np.inf, 0.0]
    assert np.signbit(out[3])


@pytest.mark.parametrize("dtype", ["FLOAT", "DOUBLE"])
def test_values_too_large_for_a_double_are_refused(dtype: str) -> None:
    """As Redis' number parser, RedisAI's: "1e400" is no value ("inf" is)."""
    with pytest.raises(AIError, match="invalid value"):
        codec.from_values(dtype, (1,), ["1e400"])
    with pytest.raises(AIError, match="invalid value"):
        codec.from_values(dtype, (1,), [b"-1E+999"])
    assert codec.from_values(dtype, (2,), ["-Infinity", "+inf"]).tolist() == [-np.inf, np.inf]


def test_values_string_dtype_allows_one_trailing_nul() -> None:
    fields = {b"kind": b"tensor", b"dtype": b"STRING", b"shape": b"2", b"values": b"ab cd"}
    assert codec.decode_fields(fields).tolist() == [b"ab", b"cd"]
    assert codec.from_values("STRING", (2,), [b"x\0", "y"]).tolist() == [b"x", b"y"]


def test_no_blob_nor_values_means_zeros() -> None:
    fields = {b"kind": b"tensor", b"dtype": b"INT16", b"shape": b"2,3"}
    out = codec.decode_fields(fields)
    assert out.dtype == LE["INT16"] and out.shape == (2, 3) and not out.any()


def test_dtype_name_is_case_insensitive() -> None:
    fields = {b"kind": b"tensor", b"dtype": b"float", b"shape": b"2", b"values": b"1 2"}
    assert codec.dtype_of(codec.decode_fields(fields)) == "FLOAT"
    assert codec.parse_dtype(b"uint16") == "UINT16"


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        ("FLOAT", [1, 2.5, "3"], [1.0, 2.5, 3.0]),
        ("INT64", [b"5", 6, 7.0], [5, 6, 7]),
        ("BOOL", [True, 0, "1"], [True, False, True]),
        ("UINT8", [np.int64(200), np.uint8(3), "0"], [200, 3, 0]),
    ],
)
def test_from_values_accepts_python_and_numpy_scalars(
    dtype: str, values: list[Any], expected: list[Any]
) -> None:
    out = codec.from_values(dtype, (len(values),), values)
    assert out.dtype == LE[dtype]
    assert out.tolist() == expected


# zeros and as_array --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_zeros(dtype: str) -> None:
    out = codec.zeros(dtype, (2, 3))
    assert out.shape == (2, 3)
    assert codec.dtype_of(out) == dtype
    if dtype == "STRING":
        assert out.reshape(-1).tolist() == [b""] * 6
    else:
        assert out.dtype == LE[dtype]
        assert not out.any()


def test_as_array_keeps_numpy_arrays() -> None:
    array = np.arange(6, dtype=np.int16)
    assert codec.as_array(array) is array
    reshaped = codec.as_array(array, shape=(2, 3))
    assert reshaped.shape == (2, 3) and reshaped.dtype == np.int16


def test_as_array_converts_a_numpy_array_to_the_requested_dtype() -> None:
    out = codec.as_array(np.array([1, 2, 3], dtype=np.int64), dtype="float")
    assert out.dtype == LE["FLOAT"] and out.tolist() == [1.0, 2.0, 3.0]


def test_as_array_from_values_and_scalars() -> None:
    out = codec.as_array([1, 2, 3, 4], dtype="INT32", shape=(2, 2))
    assert out.dtype == LE["INT32"] and out.tolist() == [[1, 2], [3, 4]]
    assert codec.as_array((1.5, 2), dtype="DOUBLE").tolist() == [1.5, 2.0]
    scalar = codec.as_array(7, dtype="INT8")
    assert scalar.shape == (1,) and scalar.tolist() == [7]
    assert codec.as_array(["a", b"b"], dtype="STRING").tolist() == [b"a", b"b"]


def test_as_array_none_means_zeros() -> None:
    out = codec.as_array(None, dtype="UINT8", shape=(3,))
    assert out.dtype == LE["UINT8"] and out.tolist() == [0, 0, 0]
    assert codec.as_array(None, dtype="STRING", shape=(2,)).tolist() == [b"", b""]


def test_as_array_unicode_numpy_array_becomes_bytes_objects() -> None:
    out = codec.as_array(np.array(["x", "yz"]))
    assert out.dtype == object and out.tolist() == [b"x", b"yz"]


def test_to_values() -> None:
    assert codec.to_values(np.array([True, False])) == [1, 0]
    assert codec.to_values(np.array([[1, 2], [3, 4]], dtype=np.int8)) == [1, 2, 3, 4]
    assert codec.to_values(np.array([b"a", b"b"], dtype=object)) == ["a", "b"]


# errors ------------------------------------------------------------------------------------


def tensor_fields(dtype: str = "FLOAT", shape: str = "2", **data: bytes) -> dict[bytes, bytes]:
    fields = {b"kind": b"tensor", b"dtype": dtype.encode(), b"shape": shape.encode()}
    fields.update({k.encode(): v for k, v in data.items()})
    return fields


DECODE_ERRORS = [
    # invalid data type
    ("dtype-unknown", tensor_fields("COMPLEX64"), messages.INVALID_DTYPE),
    ("dtype-uint32", tensor_fields("UINT32"), messages.INVALID_DTYPE),
    ("dtype-empty", tensor_fields(""), messages.INVALID_DTYPE),
    # shapes
    ("shape-negative", tensor_fields(shape="2,-1"), messages.INVALID_SHAPE),
    ("shape-zero", tensor_fields(shape="0"), messages.INVALID_SHAPE),
    ("shape-zero-inner", tensor_fields(shape="3,0"), messages.INVALID_SHAPE),
    ("shape-text", tensor_fields(shape="two"), messages.INVALID_SHAPE),
    ("shape-float", tensor_fields(shape="1.5"), messages.INVALID_SHAPE),
    # what Python's int() reads but RedisAI's strtoll does not; bytes that are not UTF-8
    ("shape-underscore", tensor_fields(shape="1_0"), messages.INVALID_SHAPE),
    ("shape-arabic-digits", tensor_fields(shape="\u0661\u0662"), messages.INVALID_SHAPE),
    ("shape-fullwidth-digits", tensor_fields(shape="\uff12"), messages.INVALID_SHAPE),
    ("shape-not-utf8", {**tensor_fields(), b"shape": b"\xff\xfe"}, messages.INVALID_SHAPE),
    ("dtype-not-utf8", {**tensor_fields(), b"dtype": b"FL\xffOAT"}, messages.INVALID_DTYPE),
    ("shape-65-dims", tensor_fields(shape=",".join(["1"] * 65)), messages.INVALID_SHAPE),
    # fields far longer than any tensor's: refused before they are parsed (or cached)
    ("shape-too-long", tensor_fields(shape="1," * 600 + "1"), messages.INVALID_SHAPE),
    ("dtype-too-long", tensor_fields("FLOAT" * 300), messages.INVALID_DTYPE),
    # value counts
    ("values-too-few", tensor_fields(values=b"1"), messages.WRONG_VALUE_COUNT),
    ("values-too-many", tensor_fields(values=b"1 2 3"), messages.WRONG_VALUE_COUNT),
    ("values-none-for-scalar", tensor_fields(shape="", values=b""), messages.WRONG_VALUE_COUNT),
    # blob lengths
    ("blob-short", tensor_fields(blob=b"\0" * 7), messages.BLOB_LENGTH),
    ("blob-long", tensor_fields(blob=b"\0" * 9), messages.BLOB_LENGTH),
    ("blob-empty", tensor_fields("INT8", blob=b""), messages.BLOB_LENGTH),
    ("blob-int64", tensor_fields("INT64", "2,2", blob=b"\0" * 16), messages.BLOB_LENGTH),
    # BOOL blob
    ("bool-blob-2", tensor_fields("BOOL", blob=b"\x00\x02"), messages.BOOL_BLOB),
    ("bool-blob-ff", tensor_fields("BOOL", "1", blob=b"\xff"), messages.BOOL_BLOB),
    # STRING blob
    ("string-blob-too-few", tensor_fields("STRING", blob=b"a\0"), messages.STRING_BLOB),
    ("string-blob-too-many", tensor_fields("STRING", blob=b"a\0b\0c\0"), messages.STRING_BLOB),
    ("string-blob-unterminated", tensor_fields("STRING", blob=b"a\0b"), messages.STRING_BLOB),
    ("string-blob-empty", tensor_fields("STRING", blob=b""), messages.STRING_BLOB),
    # values
    ("float-text", tensor_fields(values=b"1 abc"), messages.INVALID_VALUE),
    ("int-fraction", tensor_fields("INT32", values=b"1 1.87"), messages.INVALID_VALUE),
    ("bool-2", tensor_fields("BOOL", values=b"1 2"), messages.INVALID_VALUE),
    ("bool-negative", tensor_fields("BOOL", values=b"0 -1"), messages.INVALID_VALUE),
    ("int8-overflow", tensor_fields("INT8", values=b"1 128"), messages.INVALID_VALUE),
    ("int-underscore", tensor_fields("INT32", values=b"1 1_0"), messages.INVALID_VALUE),
    (
        "int-arabic-digits",
        tensor_fields("INT32", values="1 \u0661".encode()),
        messages.INVALID_VALUE,
    ),
    ("float-underscore", tensor_fields(values=b"1 1_0.5"), messages.INVALID_VALUE),
    ("float-fullwidth", tensor_fields(values="1 \uff12".encode()), messages.INVALID_VALUE),
    ("values-not-utf8", tensor_fields(values=b"1 \xff"), messages.INVALID_VALUE),
]


@pytest.mark.parametrize(
    ("fields", "message"), [c[1:] for c in DECODE_ERRORS], ids=[c[0] for c in DECODE_ERRORS]
)
def test_decode_errors(fields: dict[bytes, bytes], message: str) -> None:
    with pytest.raises(AIError) as info:
        codec.decode_fields(fields)
    assert str(info.value) == message
    assert isinstance(info.value, ResponseError)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("INT8", -129), ("INT8", 128), ("INT16", -(2**15) - 1), ("INT16", 2**15),
        ("INT32", -(2**31) - 1), ("INT32", 2**31), ("INT64", -(2**63) - 1), ("INT64", 2**63),
        ("UINT8", -1), ("UINT8", 256), ("UINT16", -1), ("UINT16", 2**16),
        ("BOOL", 2), ("BOOL", -1), ("FLOAT", "1e39"), ("FLOAT", "-1e39"),
    ],
)  # fmt: skip
def test_out_of_range_values(dtype: str, value: Any) -> None:
    for form in (value, str(value), str(value).encode()):
        with pytest.raises(AIError, match=r"^invalid value$"):
            codec.from_values(dtype, (1,), [form])


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("FLOAT", "abc"), ("DOUBLE", b"1,5"), ("DOUBLE", None), ("INT32", "1.87"), ("INT64", "x"),
     ("UINT8", "0x10"), ("BOOL", "true"), ("INT16", 2.5), ("INT8", "")],
)  # fmt: skip
def test_non_numeric_values(dtype: str, value: Any) -> None:
    with pytest.raises(AIError) as info:
        codec.from_values(dtype, (1,), [value])
    assert str(info.value) == messages.INVALID_VALUE


@pytest.mark.parametrize("count", [0, 1, 3, 5])
def test_from_values_wrong_count(count: int) -> None:
    with pytest.raises(AIError) as info:
        codec.from_values("INT32", (2, 2), list(range(count)))
    assert str(info.value) == messages.WRONG_VALUE_COUNT


@pytest.mark.parametrize("value", [b"a\0b", "a\0b", b"\0\0", b"\0x"])
def test_string_with_embedded_nul(value: bytes | str) -> None:
    with pytest.raises(AIError) as info:
        codec.from_values("STRING", (1,), [value])
    assert str(info.value) == messages.STRING_NUL
    with pytest.raises(AIError, match=messages.STRING_NUL):
        codec.encode_fields(np.array([value, b"ok"], dtype=object))


@pytest.mark.parametrize(
    "dims",
    [[-1], [2, 0], [0], ["x"], ["1.5"], [None], [b"-3"], ["2", ""]],
    ids=["negative", "zero-inner", "zero", "text", "float-text", "none", "bytes-negative", "empty"],
)
def test_invalid_shapes(dims: list[Any]) -> None:
    with pytest.raises(AIError) as info:
        codec.parse_shape(dims)
    assert str(info.value) == messages.INVALID_SHAPE


def test_valid_shape_forms() -> None:
    assert codec.parse_shape([2, "3", b"4"]) == (2, 3, 4)
    assert codec.parse_shape([]) == ()


@pytest.mark.parametrize("name", ["UINT32", "UINT64", "float16", "INT", "", "STR", b"HALF"])
def test_invalid_dtype_names(name: str | bytes) -> None:
    with pytest.raises(AIError) as info:
        codec.parse_dtype(name)
    assert str(info.value) == messages.INVALID_DTYPE


@pytest.mark.parametrize("np_dtype", ["<u4", "<u8", "<f2", "<c8", "<M8[s]"])
def test_unsupported_numpy_dtypes(np_dtype: str) -> None:
    array = np.zeros(2, dtype=np_dtype)
    with pytest.raises(AIError) as info:
        codec.encode_fields(array)
    assert str(info.value) == messages.INVALID_DTYPE
    with pytest.raises(AIError, match=messages.INVALID_DTYPE):
        codec.as_array(array)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": [1, 2]}, messages.INVALID_DTYPE),
        ({"data": [1, 2], "dtype": "QUAD"}, messages.INVALID_DTYPE),
        ({"data": [1, 2, 3], "dtype": "FLOAT", "shape": (2,)}, messages.WRONG_VALUE_COUNT),
        ({"data": np.arange(3), "shape": (2, 2)}, messages.WRONG_VALUE_COUNT),
        ({"data": [1, 2], "dtype": "FLOAT", "shape": (2, -1)}, messages.INVALID_SHAPE),
        ({"data": None, "dtype": "FLOAT", "shape": (0,)}, messages.INVALID_SHAPE),
        ({"data": np.array([1, 300]), "dtype": "UINT8"}, messages.INVALID_VALUE),
        ({"data": ["a", 1], "dtype": "INT32"}, messages.INVALID_VALUE),
    ],
)
def test_as_array_errors(kwargs: dict[str, Any], message: str) -> None:
    data = kwargs.pop("data")
    with pytest.raises(AIError) as info:
        codec.as_array(data, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "fields",
    [
        {b"dtype": b"FLOAT", b"shape": b"2", b"values": b"1 2"},
        {b"kind": b"model", b"dtype": b"FLOAT", b"shape": b"2", b"values": b"1 2"},
        {b"kind": b"TENSOR", b"dtype": b"FLOAT", b"shape": b"2", b"values": b"1 2"},
        {b"field": b"value"},
        {},
    ],
    ids=["no-kind", "model-kind", "upper-kind", "other-hash", "empty"],
)
def test_hash_without_tensor_marker_is_wrongtype(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(WrongTypeError) as info:
        codec.decode_fields(fields)
    assert str(info.value) == WRONGTYPE
    assert str(info.value) == "WRONGTYPE Operation against a key holding the wrong kind of value"
    with pytest.raises(WrongTypeError):
        codec.decode_meta(fields)
