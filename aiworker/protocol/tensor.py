"""Tensor codec: numpy arrays <-> the fields of a tensor hash. Pure functions, no Redis I/O.

A tensor hash holds ``kind=tensor``, ``dtype`` (RedisAI's type names), ``shape`` (``2,3``; empty for
a 0-d tensor) and either ``blob`` (C-order little-endian bytes; STRING elements each terminated by
``\\0`` as in RedisAI) or ``values`` (space-separated text, handy from redis-cli). With neither the
tensor is zero-filled, as RedisAI's ``AI.TENSORSET key FLOAT 2 2`` without data.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, WrongTypeError
from aiworker.protocol.text import text

KIND_FIELD = "kind"
KIND_TENSOR = "tensor"

# RedisAI type name -> numpy dtype (explicitly little-endian: the wire format is LE everywhere).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "FLOAT": np.dtype("<f4"),
    "DOUBLE": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "BOOL": np.dtype("?"),
    "STRING": np.dtype(object),
}
DTYPE_NAMES = tuple(NUMPY_DTYPES)
# The longest dtype or shape field a stored tensor may have: 64 dimensions (numpy's most) of
# 15 digits and a separator each. Longer fields are refused before they are read or parsed.
MAX_FIELD_BYTES = 1024
# A tensor stored without data is zeros of its declared shape: at most what its data could take
# (Redis' default proto-max-bulk-len, what workers allow at most too).
MAX_ZERO_FILLED_BYTES = 512 << 20
MAX_DIMS = 64
# A dimension or an integer value written as text: ASCII digits only (Python's int() also reads
# "1_0" and "١٢").
_DIGITS = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BY_KIND_SIZE = {
    (dt.kind, dt.itemsize): name for name, dt in NUMPY_DTYPES.items() if name != "STRING"
}


@functools.lru_cache(maxsize=64)
def parse_dtype(name: str | bytes) -> str:
    """Normalise a RedisAI type name (case-insensitive) or raise RedisAI's error."""
    upper = text(name).upper()
    if upper not in NUMPY_DTYPES:
        raise AIError(messages.INVALID_DTYPE)
    return upper


def dtype_of(array: np.ndarray) -> str:
    """The RedisAI type name of a numpy array, or RedisAI's error for unsupported types."""
    dt = array.dtype
    if dt.kind in "OUS":
        return "STRING"
    name = _BY_KIND_SIZE.get((dt.kind, dt.itemsize))
    if name is None:
        raise AIError(messages.INVALID_DTYPE)
    return name


def parse_shape(dims: Iterable[int | float | str | bytes]) -> tuple[int, ...]:
    """Validate dimensions given as ints or text (ASCII digits); negative, empty or non-numeric
    ones, and more than MAX_DIMS of them, are RedisAI's error."""
    shape: list[int] = []
    for dim in dims:
        if isinstance(dim, (bool, np.bool_)) or (isinstance(dim, float) and not dim.is_integer()):
            raise AIError(messages.INVALID_SHAPE)
        if isinstance(dim, (str, bytes)):
            digits = text(dim).strip()
            if not _DIGITS.fullmatch(digits):
                raise AIError(messages.INVALID_SHAPE)
            dim = digits
        try:
            value = int(dim)
        except (TypeError, ValueError):
            raise AIError(messages.INVALID_SHAPE) from None
        if value <= 0 or len(shape) == MAX_DIMS:  # RedisAI refuses empty dimensions too
            raise AIError(messages.INVALID_SHAPE)
        shape.append(value)
    return tuple(shape)


def format_shape(shape: Sequence[int]) -> str:
    return ",".join(str(d) for d in shape)


def _decode_shape_field(written: str) -> tuple[int, ...]:
    # "2,3", "2 3" and "2, 3" (as people type it in redis-cli) all mean (2, 3)
    return parse_shape(written.replace(",", " ").split())


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def zeros(dtype: str, shape: Sequence[int]) -> np.ndarray:
    """A zero-filled tensor (RedisAI's TENSORSET without data), refused before it is allocated
    when it would be larger than any tensor's data may be: a command or a hash of a few bytes
    must not make a client, the gateway or a reader allocate gigabytes."""
    size = element_count(shape) * (8 if dtype == "STRING" else NUMPY_DTYPES[dtype].itemsize)
    if size > MAX_ZERO_FILLED_BYTES:
        raise AIError(
            f"tensor with no data declares {size:,} bytes ({dtype} {format_shape(shape)}), "
            f"more than any tensor's data may take ({MAX_ZERO_FILLED_BYTES:,})"
        )
    if dtype == "STRING":
        return np.full(tuple(shape), b"", dtype=object)
    return np.zeros(tuple(shape), dtype=NUMPY_DTYPES[dtype])


def _parse_int(value: Any, dtype: str) -> int:
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise AIError(messages.INVALID_VALUE)
        number = int(value)
    else:
        written = text(value).strip()
        if not _INTEGER.fullmatch(written):
            raise AIError(messages.INVALID_VALUE)
        number = int(written)
    if dtype == "BOOL":
        if number not in (0, 1):
            raise AIError(messages.INVALID_VALUE)
        return number
    info = np.iinfo(NUMPY_DTYPES[dtype])
    if not info.min <= number <= info.max:
        raise AIError(messages.INVALID_VALUE)
    return number


def _parse_float(value: Any, dtype: str) -> float:
    if isinstance(value, (bytes, str)):
        value = text(value).strip()
        if not value.isascii() or "_" in value:  # float() reads "1_0" and "١٢" too
            raise AIError(messages.INVALID_VALUE)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AIError(messages.INVALID_VALUE) from None
    # a number too large for a double is refused, as Redis' parser (RedisAI's) did; "inf" and
    # "nan" are values (RedisAI refused nan: a difference kept, README)
    if np.isinf(number) and "inf" not in str(value).lower():
        raise AIError(messages.INVALID_VALUE)
    if dtype == "FLOAT" and np.isfinite(number) and abs(number) > float(np.finfo(np.float32).max):
        raise AIError(messages.INVALID_VALUE)
    return number


def _to_bytes(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    if data.endswith(b"\0"):  # RedisAI accepts one trailing terminator on a STRING value
        data = data[:-1]
    if b"\0" in data:
        raise AIError(messages.STRING_NUL)
    return data


def from_values(dtype: str, shape: Sequence[int], values: Sequence[Any]) -> np.ndarray:
    """Build a tensor from individual values (RedisAI's VALUES), checking count, type and range."""
    if len(values) != element_count(shape):
        raise AIError(messages.WRONG_VALUE_COUNT)
    if dtype == "STRING":
        out = np.empty(len(values), dtype=object)
        out[:] = [_to_bytes(v) for v in values]
        return out.reshape(tuple(shape))
    if dtype in ("FLOAT", "DOUBLE"):
        parsed: list[Any] = [_parse_float(v, dtype) for v in values]
    else:
        parsed = [_parse_int(v, dtype) for v in values]
    return np.array(parsed, dtype=NUMPY_DTYPES[dtype]).reshape(tuple(shape))


def from_blob(dtype: str, shape: Sequence[int], blob: bytes | bytearray | memoryview) -> np.ndarray:
    """Wrap raw bytes (RedisAI's BLOB) as a read-only array, checking the length against the shape."""
    count = element_count(shape)
    if dtype == "STRING":
        data = bytes(blob)
        if count == 0:
            if data:
                raise AIError(messages.STRING_BLOB)
            return zeros(dtype, shape)
        if not data.endswith(b"\0") or data.count(b"\0") != count:
            raise AIError(messages.STRING_BLOB)
        items = data.split(b"\0")  # no copy of data first: the worker counts what this holds
        items.pop()  # after the last terminator
        out = np.empty(count, dtype=object)
        out[:] = items
        out.flags.writeable = False
        return out.reshape(tuple(shape))
    np_dtype = NUMPY_DTYPES[dtype]
    if len(blob) != count * np_dtype.itemsize:
        raise AIError(messages.BLOB_LENGTH)
    array = np.frombuffer(blob, dtype=np_dtype).reshape(tuple(shape))
    if dtype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise AIError(messages.BOOL_BLOB)
    return array


def to_blob(array: np.ndarray) -> bytes | memoryview:
    """Raw C-order little-endian bytes; a view (no copy) when the array already has that layout."""
    dtype = dtype_of(array)
    if dtype == "STRING":
        return b"".join(_to_bytes(item) + b"\0" for item in array.reshape(-1).tolist())
    target = NUMPY_DTYPES[dtype]
    if array.dtype != target:
        array = array.astype(target)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    if array.ndim == 0 or array.size == 0:  # (a memoryview of no elements cannot be cast)
        return array.tobytes()
    return memoryview(array).cast("B")  # type: ignore[arg-type]


def check_storable(array: np.ndarray, stored: bool = True) -> None:
    """RedisAI's error for an array no tensor hash can hold: one with an empty dimension (a
    stored shape has none, as TENSORSET takes none) or a STRING element with a NUL inside (the
    blob's terminator). A model's output can be either (ONNX's NonZero finding nothing).
    ``stored``: written to a key; a DAG's own tensor may have an empty dimension (RedisAI ran a
    model on 0 rows, and a reply carries one), not a NUL inside an element."""
    if stored:
        parse_shape(array.shape)
    if dtype_of(array) == "STRING":
        for item in array.reshape(-1).tolist():
            _to_bytes(item)


def _text_or_bytes(value: Any) -> str | bytes:
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def to_values(array: np.ndarray) -> list[Any]:
    """Flat Python values, as RedisAI's TENSORGET VALUES (STRING elements as str; bytes where
    one is not UTF-8, as the client's numpy arrays keep them)."""
    if dtype_of(array) == "STRING":
        return [_text_or_bytes(v) for v in array.reshape(-1).tolist()]
    if array.dtype == np.bool_:
        return [int(v) for v in array.reshape(-1).tolist()]
    return list(array.reshape(-1).tolist())


def as_array(data: Any, dtype: str | None = None, shape: Sequence[int] | None = None) -> np.ndarray:
    """Turn what a client passed to ``tensorset`` into a validated array.

    A numpy array keeps its type (``dtype`` must agree if given) and may be reshaped by ``shape``;
    a list/tuple/scalar is treated as RedisAI VALUES and needs ``dtype``; ``None`` means zeros.
    """
    if isinstance(data, np.ndarray):
        name = dtype_of(data)
        if dtype is not None and parse_dtype(dtype) != name:
            data = from_values(parse_dtype(dtype), data.shape, data.reshape(-1).tolist())
            name = parse_dtype(dtype)
        if name == "STRING" and data.dtype.kind in "US":
            data = from_values("STRING", data.shape, data.reshape(-1).tolist())
        if shape is not None:
            target = parse_shape(shape)
            if element_count(target) != data.size:
                raise AIError(messages.WRONG_VALUE_COUNT)
            data = data.reshape(target)
        parse_shape(data.shape)  # RedisAI refuses empty dimensions
        array: np.ndarray = data
        return array
    if dtype is None:
        raise AIError(messages.INVALID_DTYPE)
    name = parse_dtype(dtype)
    if data is None:
        return zeros(name, parse_shape(shape or ()))
    values = list(data) if isinstance(data, (list, tuple)) else [data]
    target = parse_shape(shape) if shape is not None else (len(values),)
    return from_values(name, target, values)


def encode_fields(array: np.ndarray) -> dict[str, Any]:
    """The hash fields that store ``array`` (blob is a zero-copy view where possible)."""
    return {
        KIND_FIELD: KIND_TENSOR,
        "dtype": dtype_of(array),
        "shape": format_shape(array.shape),
        "blob": to_blob(array),
    }


def decode_meta(fields: Mapping[Any, Any]) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of stored tensor fields; WRONGTYPE when the hash is not a tensor."""
    kind = fields.get(b"kind", fields.get("kind"))
    if kind is None or text(kind) != KIND_TENSOR:
        raise WrongTypeError()
    dtype = fields.get(b"dtype", fields.get("dtype"))
    shape = fields.get(b"shape", fields.get("shape"))
    if dtype is None or len(dtype) > MAX_FIELD_BYTES:
        raise AIError(messages.INVALID_DTYPE)
    if shape is None or len(shape) > MAX_FIELD_BYTES:
        raise AIError(messages.INVALID_SHAPE)
    return parse_dtype(dtype), _decode_shape(shape)


@functools.lru_cache(maxsize=1024)
def _decode_shape(shape: str | bytes) -> tuple[int, ...]:
    return _decode_shape_field(text(shape))


def decode_fields(fields: Mapping[Any, Any]) -> np.ndarray:
    """The array stored in a tensor hash (read-only, no copy of the blob)."""
    dtype, shape = decode_meta(fields)
    blob = fields.get(b"blob", fields.get("blob"))
    if blob is not None:
        return from_blob(dtype, shape, blob)
    values = fields.get(b"values", fields.get("values"))
    if values is not None:
        return from_values(dtype, shape, text(values).split())
    return zeros(dtype, shape)
