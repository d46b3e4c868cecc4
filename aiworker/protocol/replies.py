"""The worker's reply to a job: built in one place (``build_reply``, ``encode_reply``) and read in
one place (``decode_reply``, ``raise_for_reply``). Pure code.

A reply is a map pushed onto the job's ``reply`` list:

* ``status``: ``ok``, ``error`` or ``timedout``; ``id``: the stream entry id; ``worker``: the
  worker process that answered; ``error``: the message when the status is ``error``;
  ``queue_ms``/``compute_ms``: time waiting in the queue and running; ``batch``: ``size`` and
  ``requests`` when the request ran in a batch;
* ``results`` (DAGs), one entry per op, in order: ``"OK"`` for a TENSORSET, MODELEXECUTE or
  SCRIPTEXECUTE op that succeeded; ``"NA"`` for an op that did not run because an earlier op
  failed (RedisAI's ``NA``); ``{"error": "<message>"}`` for the op that failed; for a TENSORGET
  op ``{"dtype": "FLOAT", "shape": [2, 2], "format": [...]}`` (``format`` is what the op asked
  for: ``META``, ``BLOB``, ``VALUES``) plus its data, when it asked for data, as ``values``
  (numbers), ``blob`` (the stored layout) or ``key``: a tensor hash written with the reply that
  expires with it (only in JSON replies, above ``INLINE_LIMIT`` bytes).

Replies are JSON by default, readable in redis-cli (a ``blob`` is base64 there). An entry with the
field ``fmt`` = ``msgpack`` (the Python client's) gets a msgpack reply instead, where a ``blob`` is
raw bytes and tensors always travel inline: no base64 blow-up, no extra key to read.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np

from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, JobFailed, JobTimedOut, WrongTypeError
from aiworker.protocol.requests import TensorGet

FORMAT_FIELD = "fmt"
JSON = "json"
MSGPACK = "msgpack"
# Above this, a JSON reply's tensor goes to a key that expires with the reply.
INLINE_LIMIT = 64 * 1024
OK = "OK"
NA = "NA"


def build_reply(
    entry_id: str,
    worker: str,
    status: str,
    error: str = "",
    queue_ms: int | None = None,
    compute_ms: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The reply map of a finished job."""
    reply: dict[str, Any] = {"status": status, "id": entry_id, "worker": worker}
    if status == "error":
        reply["error"] = error
    if queue_ms is not None:
        reply["queue_ms"] = queue_ms
    if compute_ms:
        reply["compute_ms"] = compute_ms
    if extra:
        reply.update(extra)
    return reply


def encode_reply(reply: Mapping[str, Any], fmt: str = JSON) -> bytes:
    """The bytes pushed onto the reply list."""
    if fmt == MSGPACK:
        return msgpack.packb(reply, use_bin_type=True)  # type: ignore[no-any-return]
    return json.dumps(reply, separators=(",", ":")).encode()


def decode_reply(raw: bytes | str) -> dict[str, Any]:
    """A reply map from either encoding (JSON always starts with ``{``)."""
    data = raw.encode() if isinstance(raw, str) else raw
    reply: Any = json.loads(data) if data[:1] == b"{" else msgpack.unpackb(data, raw=False)
    if not isinstance(reply, dict):
        raise JobFailed(f"malformed reply from a worker: {data[:80]!r}")
    return reply


def raise_for_reply(reply: Mapping[str, Any]) -> str:
    """``"OK"`` for a successful job, else the exception its status stands for."""
    status = reply.get("status")
    if status == "ok":
        return "OK"
    if status == "timedout":
        raise JobTimedOut()
    raise error_of(str(reply.get("error") or "job failed"))


def error_of(message: str) -> AIError:
    """The exception a failure message stands for (as redis-py would have raised it)."""
    if message.startswith("WRONGTYPE"):
        return WrongTypeError(message)
    return JobFailed(message)


# DAG TENSORGET results ----------------------------------------------------------------------


def tensor_format(op: TensorGet) -> list[str]:
    return (["META"] if op.meta else []) + ([op.data] if op.data else [])


def _json_safe(array: np.ndarray) -> bool:
    """JSON has no NaN or infinity: such floats travel as a blob."""
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def encode_tensor(
    array: np.ndarray, op: TensorGet, spill_key: str | None, fmt: str = JSON
) -> dict[str, Any]:
    """A TENSORGET op's result entry; when it names ``key`` the caller must write ``array`` there
    (JSON replies only)."""
    dtype = codec.dtype_of(array)
    entry: dict[str, Any] = {
        "dtype": dtype,
        "shape": list(array.shape),
        "format": tensor_format(op),
    }
    if not op.data:
        return entry
    small = fmt == MSGPACK or array.size * array.itemsize <= INLINE_LIMIT
    if op.data == "VALUES" and dtype != "STRING" and _json_safe(array) and small:
        entry["values"] = codec.to_values(array)
        return entry
    blob = bytes(codec.to_blob(array))
    if fmt == MSGPACK:
        entry["blob"] = blob
    elif len(blob) > INLINE_LIMIT and spill_key:
        entry["key"] = spill_key
    else:
        entry["blob"] = base64.b64encode(blob).decode()
    return entry


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
        blob = entry["blob"]
        data = blob if isinstance(blob, (bytes, bytearray)) else base64.b64decode(blob)
        return dtype, shape, codec.from_blob(dtype, shape, data)
    return dtype, shape, None
