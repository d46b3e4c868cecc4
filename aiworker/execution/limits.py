"""Size limits on what one job may make a worker hold, checked before anything is allocated.

A tensor hash declares its dtype and shape in two small fields; a zero-filled tensor (no ``blob``)
of shape ``100000,100000,100000`` costs nothing in Redis but petabytes in the worker. So every
tensor a job brings in - model and script inputs, DAG LOADs, a DAG's own TENSORSETs - is sized
from its declared dtype and shape before it is decoded, and every tensor it produces before it is
written. Stored sizes are checked in Redis before data is fetched (``read_jobs.lua``: a tensor's
data, and its kind, dtype and shape fields, at most ``MAX_META_BYTES`` each), models from their
chunks' real lengths. A job names at most ``max_job_keys`` keys, so that no read of one entry holds
Redis for long. An output is written only if Redis accepts it in one value (its
``proto-max-bulk-len``, read when the worker starts): beyond that, Redis would drop the connection
and the job would run again until dead-lettered with a false cause. Errors name the setting to
raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiworker.protocol import messages
from aiworker.protocol import tensor as codec
from aiworker.protocol.entries import MAX_ENTRY_BYTES
from aiworker.protocol.errors import AIError, LimitExceeded, WrongTypeError
from aiworker.protocol.text import text
from aiworker.storage.tensor_io import REDIS_MAX_VALUE_BYTES

# What a decoded STRING element costs besides its characters: a pointer in the array, one in the
# list the blob is split into, and a bytes object's header (33 bytes, rounded up by the allocator).
# Its characters are counted with the blob (a STRING tensor's size is both).
STRING_ITEM_BYTES = 56
# Longest text one VALUES element may take (digits, sign, exponent, separator).
MAX_VALUE_CHARS = 64
# Longest kind, dtype or shape field of a stored tensor (checked in Redis before it is fetched).
MAX_META_BYTES = codec.MAX_FIELD_BYTES


@dataclass(frozen=True)
class Limits:
    """The operator's bounds for one worker (settings ``max_*``; 0 turns one off). The most bytes
    its Redis accepts in one value (``max_value_bytes``, read from the server) caps
    max_tensor_bytes: an output beyond it could not be written."""

    max_tensor_bytes: int = 512 << 20
    max_job_bytes: int = 1 << 31
    max_model_bytes: int = 1 << 31
    max_job_keys: int = 1024
    max_value_bytes: int = REDIS_MAX_VALUE_BYTES

    def __post_init__(self) -> None:  # 0 means "no limit": the Lua read compares numbers
        for name in ("max_tensor_bytes", "max_job_bytes", "max_model_bytes", "max_job_keys"):
            if getattr(self, name) <= 0:
                object.__setattr__(self, name, 1 << 62)
        if self.max_value_bytes > 0:  # no tensor larger than Redis takes in or gives back
            object.__setattr__(
                self, "max_tensor_bytes", min(self.max_tensor_bytes, self.max_value_bytes)
            )


def declared_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes a tensor of this dtype and shape takes in memory."""
    itemsize = STRING_ITEM_BYTES if dtype == "STRING" else codec.NUMPY_DTYPES[dtype].itemsize
    return codec.element_count(shape) * itemsize


def nbytes(array: np.ndarray) -> int:
    """Bytes an array takes (STRING elements counted as pointers)."""
    return int(array.size) * STRING_ITEM_BYTES if array.dtype.kind == "O" else int(array.nbytes)


def check_tensor_size(
    name: str, dtype: str, shape: Sequence[int], limit: int, characters: int = 0
) -> None:
    """Refuse a tensor whose dtype and shape would take more than ``limit`` bytes (a STRING
    tensor's: with the ``characters`` of its blob)."""
    size = declared_nbytes(dtype, shape) + characters
    if limit and size > limit:
        raise LimitExceeded(
            f"tensor '{name}' would take {size:,} bytes ({dtype} "
            f"{codec.format_shape(shape) or 'scalar'}), more than this worker's "
            f"max_tensor_bytes ({limit:,})"
        )


def check_job_bytes(held: int, limit: int) -> None:
    """Refuse a job whose tensors (its inputs, its DAG's TENSORSETs, what its ops make) would
    take more than ``limit`` (a worker's max_job_bytes)."""
    if held > limit:
        raise LimitExceeded(
            f"the job's tensors would take {held:,} bytes, more than this worker's "
            f"max_job_bytes ({limit:,})"
        )


def check_names(request: Any, limit: int) -> AIError | None:
    """The error for a request naming more than ``limit`` keys and tensors (None if it does not):
    reading that many keys at once would hold Redis for long (at some microseconds each)."""
    count = len(request.names())
    if count <= limit:
        return None
    return LimitExceeded(
        f"the job names {count:,} keys, more than this worker's max_job_keys ({limit:,})"
    )


_BAD_FIELD = {b"dtype": messages.INVALID_DTYPE, b"shape": messages.INVALID_SHAPE}


def decode_tensor_reply(name: str, reply: Sequence[Any], limit: int) -> np.ndarray:
    """Decode a tensor from a read script's reply (``ok``, kind, dtype, shape, blob, values;
    ``none``; ``wrongtype``; ``badfield`` and the field), refusing declared sizes beyond
    ``limit`` first."""
    status = reply[0]
    if status == b"none":
        raise AIError(messages.TENSOR_EMPTY)
    if status == b"badfield" and reply[1] in _BAD_FIELD:  # a kind that long is no tensor's
        raise AIError(_BAD_FIELD[reply[1]])
    if status != b"ok":
        raise WrongTypeError()
    kind, dtype, shape, blob, values = reply[1:6]
    if kind != b"tensor":
        raise WrongTypeError()
    dtype_name, dims = codec.decode_meta({"kind": kind, "dtype": dtype, "shape": shape})
    check_tensor_size(name, dtype_name, dims, limit)
    if blob is not None:
        if dtype_name == "STRING":  # its elements' objects and their characters
            check_tensor_size(name, dtype_name, dims, limit, len(blob))
        return codec.from_blob(dtype_name, dims, blob)
    if values is not None:
        # Splitting a 500 MB VALUES text for a 2-element tensor would cost gigabytes.
        if len(values) > MAX_VALUE_CHARS * (codec.element_count(dims) + 1):
            raise AIError(messages.WRONG_VALUE_COUNT)
        return codec.from_values(dtype_name, dims, text(values).split())
    return codec.zeros(dtype_name, dims)


def check_output_types(outputs: Sequence[np.ndarray]) -> None:
    """Refuse outputs of types no RedisAI tensor holds (complex64, datetimes, objects), naming
    which: RedisAI's own "invalid data type" said neither which output nor what type."""
    for n, array in enumerate(outputs):
        try:
            codec.dtype_of(array)
        except AIError:
            raise AIError(messages.OUTPUT_TYPE.format(n=n, dtype=array.dtype)) from None


def check_output(name: str, array: np.ndarray, limit: int, stored: bool = True) -> None:
    """Refuse an output larger than ``limit`` (a worker's ``max_tensor_bytes``, which ``Limits``
    caps by what its Redis accepts in one value), or one no tensor hash can hold (``stored``: it
    is written to a key; ``codec.check_storable``): the completion could not encode it, and the
    job would go unanswered."""
    try:
        codec.check_storable(array, stored)
    except AIError as exc:
        shape = list(array.shape)
        raise AIError(f"output tensor '{name}' of shape {shape} cannot be stored: {exc}") from None
    size = max(nbytes(array), stored_nbytes(array))
    if limit and size > limit:
        raise LimitExceeded(
            f"output tensor '{name}' has {size:,} bytes, more than this worker's "
            f"max_tensor_bytes ({limit:,}), which is at most what Redis accepts in one value "
            "(proto-max-bulk-len)"
        )


def stored_nbytes(array: np.ndarray) -> int:
    """Bytes of an array's blob as stored (STRING elements: their bytes and terminators)."""
    if array.dtype.kind in "OUS":
        return int(array.size) + sum(len(item) for item in array.reshape(-1).tolist())
    return int(array.nbytes)


def check_entry(fields: Mapping[Any, Any]) -> int:
    """Refuse stream entries that are far larger than any job needs (MAX_ENTRY_BYTES: a model
    blob to check is staged in a key, not sent in the entry); returns the entry's size."""
    size = 0
    for name, value in fields.items():
        size += len(name) + (len(value) if isinstance(value, (bytes, str)) else 0)
    if size > MAX_ENTRY_BYTES:
        raise _entry_too_big(size, MAX_ENTRY_BYTES)
    return size


def _entry_too_big(size: int, limit: int) -> AIError:
    return AIError(
        f"malformed job entry: {size:,} bytes, more than {limit:,}; "
        "tensors belong in tensor keys, not in the job"
    )
