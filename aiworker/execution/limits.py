"""Size limits on what one job may make a worker hold, checked before anything is allocated.

A tensor hash declares its dtype and shape in two small fields; a zero-filled tensor (no ``blob``)
of shape ``100000,100000,100000`` costs nothing in Redis but petabytes in the worker. So inputs are
sized from their declared dtype and shape before decoding, outputs before they are written, and
models from their stored size before their blob is fetched. Errors name the setting to raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, LimitExceeded
from aiworker.storage import model as model_store
from aiworker.storage import tensor as codec
from aiworker.storage import tensor_io

# A stream entry carries a command or a msgpack request, never data: anything bigger is abuse.
MAX_ENTRY_BYTES = 1 << 20
# Chunk fields fetched for one model; with the default MODEL_CHUNK_SIZE a model needs a handful.
MAX_MODEL_CHUNKS = 1 << 16
# STRING elements are Python objects: at least a pointer each.
STRING_ITEM_BYTES = 8
# Longest text one VALUES element may take (digits, sign, exponent, separator).
MAX_VALUE_CHARS = 64


def declared_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes a tensor of this dtype and shape takes in memory."""
    itemsize = STRING_ITEM_BYTES if dtype == "STRING" else codec.NUMPY_DTYPES[dtype].itemsize
    return codec.element_count(shape) * itemsize


def check_tensor_size(name: str, dtype: str, shape: Sequence[int], limit: int) -> None:
    nbytes = declared_nbytes(dtype, shape)
    if limit and nbytes > limit:
        raise LimitExceeded(
            f"tensor '{name}' would take {nbytes:,} bytes ({dtype} "
            f"{codec.format_shape(shape) or 'scalar'}), more than this worker's "
            f"max_tensor_bytes ({limit:,})"
        )


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    return fields.get(name.encode(), fields.get(name))


def decode_input(name: str, reply: Any, limit: int) -> np.ndarray:
    """Decode an input tensor's HGETALL reply (a mapping, or a flat list from Lua), refusing
    declared sizes beyond ``limit`` first."""
    if isinstance(reply, list) and reply and len(reply) % 2 == 0:
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    if isinstance(reply, Mapping) and reply:
        dtype, shape = codec.decode_meta(reply)
        check_tensor_size(name, dtype, shape, limit)
        values = _field(reply, "values")
        longest = MAX_VALUE_CHARS * (codec.element_count(shape) + 1)
        # Splitting a 500 MB VALUES text for a 2-element tensor would cost gigabytes.
        if _field(reply, "blob") is None and values is not None and len(values) > longest:
            raise AIError(messages.WRONG_VALUE_COUNT)
    return tensor_io.decode_reply(reply)


def check_output(name: str, array: np.ndarray, limit: int) -> None:
    """Refuse to write an output larger than ``limit``."""
    nbytes = int(array.size) * STRING_ITEM_BYTES if array.dtype.kind == "O" else int(array.nbytes)
    if limit and nbytes > limit:
        raise LimitExceeded(
            f"output tensor '{name}' has {nbytes:,} bytes, more than this worker's "
            f"max_tensor_bytes ({limit:,})"
        )


def check_model(key: str, meta: model_store.ModelMeta, limit: int) -> None:
    """Refuse to fetch a model blob beyond ``limit`` or with an implausible chunk count."""
    if limit and meta.size > limit:
        raise LimitExceeded(
            f"model '{key}' has {meta.size:,} bytes, more than this worker's "
            f"max_model_bytes ({limit:,})"
        )
    if meta.chunks < 0 or meta.chunks > MAX_MODEL_CHUNKS or meta.chunks > max(1, meta.size):
        raise AIError(f"model '{key}' is corrupt: {meta.chunks} chunks for {meta.size} bytes")


def check_blob(key: str, meta: model_store.ModelMeta, blob: bytes) -> None:
    """The fetched blob must be as long as the model says: anything else is corruption."""
    if len(blob) != meta.size:
        raise AIError(
            f"model '{key}' is corrupt: blob has {len(blob):,} bytes, metadata says {meta.size:,}"
        )


def check_entry(fields: Mapping[Any, Any]) -> None:
    """Refuse stream entries that are far larger than any job needs."""
    size = 0
    for name, value in fields.items():
        size += len(name) + (len(value) if isinstance(value, (bytes, str)) else 0)
    if size > MAX_ENTRY_BYTES:
        raise AIError(
            f"malformed job entry: {size:,} bytes, more than {MAX_ENTRY_BYTES:,}; "
            "tensors belong in tensor keys, not in the job"
        )
