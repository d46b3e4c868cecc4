"""How a DAG's per-op results travel in the worker's JSON reply. Pure code.

The reply of a DAG job carries ``results``, one entry per op, in order:

* ``"OK"``: a TENSORSET, MODELEXECUTE or SCRIPTEXECUTE op that succeeded;
* ``"NA"``: an op that did not run because an earlier op failed (RedisAI's ``NA``);
* ``{"error": "<message>"}``: the op failed;
* a TENSORGET op's tensor: ``{"dtype": "FLOAT", "shape": [2, 2], "format": [...]}`` (``format``
  is what the op asked for: ``META``, ``BLOB``, ``VALUES``) plus its data, when it asked for
  data, as ``"values"`` (numbers, readable in redis-cli), ``"blob"`` (base64 of the stored
  layout) or, above ``INLINE_LIMIT`` bytes, ``"key"``: a tensor hash written with the reply that
  expires with it (``HGETALL`` it, or let the client read it).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from aiworker.errors import AIError, JobFailed, WrongTypeError
from aiworker.jobs import TensorGet
from aiworker.storage import tensor as codec

INLINE_LIMIT = 64 * 1024
OK = "OK"
NA = "NA"


def tensor_format(op: TensorGet) -> list[str]:
    return (["META"] if op.meta else []) + ([op.data] if op.data else [])


def _json_safe(array: np.ndarray) -> bool:
    """JSON has no NaN or infinity: such floats travel as a blob."""
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def encode_tensor(array: np.ndarray, op: TensorGet, spill_key: str | None) -> dict[str, Any]:
    """A TENSORGET op's result entry; when it names ``key`` the caller must write ``array`` there."""
    dtype = codec.dtype_of(array)
    entry: dict[str, Any] = {
        "dtype": dtype,
        "shape": list(array.shape),
        "format": tensor_format(op),
    }
    if not op.data:
        return entry
    blob = bytes(codec.to_blob(array))
    if len(blob) > INLINE_LIMIT and spill_key:
        entry["key"] = spill_key
    elif op.data == "VALUES" and dtype != "STRING" and _json_safe(array):
        entry["values"] = codec.to_values(array)
    else:
        entry["blob"] = base64.b64encode(blob).decode()
    return entry


def error_of(message: str) -> AIError:
    """The exception a failed op's message stands for (as redis-py would have raised it)."""
    if message.startswith("WRONGTYPE"):
        return WrongTypeError(message)
    return JobFailed(message)


def decode_tensor(
    entry: Mapping[str, Any], read_key: Callable[[str], np.ndarray]
) -> tuple[str, tuple[int, ...], np.ndarray | None]:
    """(dtype, shape, array or None when only META was asked) of a TENSORGET result entry."""
    dtype = codec.parse_dtype(str(entry["dtype"]))
    shape = tuple(int(d) for d in entry["shape"])
    if "key" in entry:
        return dtype, shape, read_key(str(entry["key"]))
    if "values" in entry:
        return dtype, shape, codec.from_values(dtype, shape, list(entry["values"]))
    if "blob" in entry:
        return dtype, shape, codec.from_blob(dtype, shape, base64.b64decode(entry["blob"]))
    return dtype, shape, None
