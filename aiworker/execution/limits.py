"""Size limits on what one job may make a worker hold, checked before anything is allocated.

A tensor hash declares its dtype and shape in two small fields; a zero-filled tensor (no ``blob``)
of shape ``100000,100000,100000`` costs nothing in Redis but petabytes in the worker. So every
tensor a job brings in - model and script inputs, DAG LOADs, a DAG's own TENSORSETs - is sized
from its declared dtype and shape before it is decoded, and every tensor it produces before it is
written. Stored sizes are checked in Redis before data is fetched (``read_jobs.lua``), models from
their chunks' real lengths. Errors name the setting to raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiworker.protocol import messages
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, LimitExceeded, WrongTypeError

# A stream entry carries a command or a msgpack request, never data: anything bigger is abuse.
MAX_ENTRY_BYTES = 1 << 20
# STRING elements are Python objects: at least a pointer each.
STRING_ITEM_BYTES = 8
# Longest text one VALUES element may take (digits, sign, exponent, separator).
MAX_VALUE_CHARS = 64


@dataclass(frozen=True)
class Limits:
    """The operator's bounds for one worker (settings ``max_*_bytes``; 0 turns one off)."""

    max_tensor_bytes: int = 1 << 30
    max_job_bytes: int = 1 << 31
    max_model_bytes: int = 1 << 31

    def __post_init__(self) -> None:  # 0 means "no limit": the Lua read compares numbers
        for name in ("max_tensor_bytes", "max_job_bytes", "max_model_bytes"):
            if getattr(self, name) <= 0:
                object.__setattr__(self, name, 1 << 62)


def declared_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes a tensor of this dtype and shape takes in memory."""
    itemsize = STRING_ITEM_BYTES if dtype == "STRING" else codec.NUMPY_DTYPES[dtype].itemsize
    return codec.element_count(shape) * itemsize


def nbytes(array: np.ndarray) -> int:
    """Bytes an array takes (STRING elements counted as pointers)."""
    return int(array.size) * STRING_ITEM_BYTES if array.dtype.kind == "O" else int(array.nbytes)


def check_tensor_size(name: str, dtype: str, shape: Sequence[int], limit: int) -> None:
    size = declared_nbytes(dtype, shape)
    if limit and size > limit:
        raise LimitExceeded(
            f"tensor '{name}' would take {size:,} bytes ({dtype} "
            f"{codec.format_shape(shape) or 'scalar'}), more than this worker's "
            f"max_tensor_bytes ({limit:,})"
        )


def decode_tensor_reply(name: str, reply: Sequence[Any], limit: int) -> np.ndarray:
    """Decode a tensor from a read script's reply (``ok``, kind, dtype, shape, blob, values;
    ``none``; ``wrongtype``), refusing declared sizes beyond ``limit`` first."""
    status = reply[0]
    if status == b"none":
        raise AIError(messages.TENSOR_EMPTY)
    if status != b"ok":
        raise WrongTypeError()
    kind, dtype, shape, blob, values = reply[1:6]
    if kind != b"tensor":
        raise WrongTypeError()
    dtype_name, dims = codec.decode_meta({"kind": kind, "dtype": dtype, "shape": shape})
    check_tensor_size(name, dtype_name, dims, limit)
    if blob is not None:
        return codec.from_blob(dtype_name, dims, blob)
    if values is not None:
        # Splitting a 500 MB VALUES text for a 2-element tensor would cost gigabytes.
        if len(values) > MAX_VALUE_CHARS * (codec.element_count(dims) + 1):
            raise AIError(messages.WRONG_VALUE_COUNT)
        return codec.from_values(dtype_name, dims, values.decode().split())
    return codec.zeros(dtype_name, dims)


def check_output(name: str, array: np.ndarray, limit: int) -> None:
    """Refuse to write an output larger than ``limit``."""
    size = nbytes(array)
    if limit and size > limit:
        raise LimitExceeded(
            f"output tensor '{name}' has {size:,} bytes, more than this worker's "
            f"max_tensor_bytes ({limit:,})"
        )


def check_entry(fields: Mapping[Any, Any], limit: int = 0) -> int:
    """Refuse stream entries that are far larger than any job needs; returns the entry's size.

    ``limit`` is larger only to let a MODELVERIFY carry its model blob (up to max_model_bytes);
    every other job is held to MAX_ENTRY_BYTES once decoded (``check_entry_for``)."""
    limit = max(limit, MAX_ENTRY_BYTES)
    size = 0
    for name, value in fields.items():
        size += len(name) + (len(value) if isinstance(value, (bytes, str)) else 0)
    if size > limit:
        raise _entry_too_big(size, limit)
    return size


def check_entry_for(op: str, size: int) -> None:
    """Only a MODELVERIFY (a model blob to check) may exceed MAX_ENTRY_BYTES."""
    if size > MAX_ENTRY_BYTES and op != "MODELVERIFY":
        raise _entry_too_big(size, MAX_ENTRY_BYTES)


def _entry_too_big(size: int, limit: int) -> AIError:
    return AIError(
        f"malformed job entry: {size:,} bytes, more than {limit:,}; "
        "tensors belong in tensor keys, not in the job"
    )
