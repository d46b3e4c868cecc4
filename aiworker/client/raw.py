"""RedisAI's raw replies (as redis-py returned them from the module) and redisai-py's
post-processing of them. Pure code.

``Client(enable_postprocess=False)`` returns the raw replies; by default a method returns what
redisai-py's ``Processor`` made of them. Both are built here, so the two shapes always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aiworker.protocol import tensor as codec
from aiworker.protocol.replies import Status
from aiworker.protocol.resp import Double
from aiworker.protocol.resp import Status as Simple
from aiworker.storage.model import ModelMeta
from aiworker.storage.script import ScriptMeta

OK = b"OK"
TIMEDOUT = b"TIMEDOUT"


def simple(status: Status, raw: bool) -> str | bytes:
    """RedisAI's simple-string answer to a job: ``OK``, or ``TIMEDOUT`` (its TIMEOUT passed)."""
    word = OK if status is Status.OK else TIMEDOUT
    return word if raw else word.decode()


def _values(array: np.ndarray) -> list[Any]:
    """TENSORGET VALUES: floats as RedisAI's doubles (``%.17g`` bulk strings in RESP2), integers
    and bools as integers, strings as bulk strings."""
    flat = array.reshape(-1)
    if codec.dtype_of(array) == "STRING":
        return [v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist()]
    if array.dtype.kind == "f":
        return [Double(b"%.17g" % v) for v in flat.tolist()]
    return [int(v) for v in flat.tolist()]


def tensor_reply(array: np.ndarray, meta: bool, data: str) -> Any:
    """AI.TENSORGET's reply for a format (``meta``, ``data`` BLOB/VALUES/"")."""
    payload: Any = None
    if data == "BLOB":
        payload = bytes(codec.to_blob(array))
    elif data == "VALUES":
        payload = _values(array)
    if not meta:
        return payload
    head: list[Any] = [b"dtype", codec.dtype_of(array).encode(), b"shape", list(array.shape)]
    if data:
        head += [data.lower().encode(), payload]
    return head


def list2dict(reply: Sequence[Any]) -> dict[str, Any]:
    """redisai-py's reading of a field/value reply: names lower-cased, bytes values decoded
    except the blob; nested lists are left as they came."""
    if len(reply) % 2:
        raise RuntimeError(f"Can't unpack the list: {reply}")
    out: dict[str, Any] = {}
    for name, value in zip(reply[::2], reply[1::2], strict=True):
        field = name.decode().lower() if isinstance(name, bytes) else str(name).lower()
        out[field] = value.decode() if field != "blob" and isinstance(value, bytes) else value
    return out


def decoded(reply: Any) -> Any:
    """Every bytes value in a nested reply as text (redisai-py's scan results)."""
    if isinstance(reply, list):
        return [decoded(item) for item in reply]
    return reply.decode() if isinstance(reply, bytes) else reply


def as_numpy(array: np.ndarray, mutable: bool) -> np.ndarray:
    """What redisai-py's ``blob2numpy`` gave: a read-only view, a copy when ``mutable``, and for
    STRING tensors a numpy ``str`` array (bytes objects when an element is not UTF-8)."""
    if array.dtype == object:
        try:
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        except UnicodeDecodeError:
            return np.array(array, copy=True) if mutable else array
        return np.array(text, dtype=str).reshape(array.shape)
    return np.array(array, copy=True) if mutable else array


def tensor_result(
    array: np.ndarray, as_numpy_: bool, mutable: bool, meta_only: bool
) -> np.ndarray | dict[str, Any]:
    """redisai-py's ``tensorget`` result for a stored array."""
    dtype = codec.dtype_of(array)
    if meta_only:
        return {"dtype": dtype, "shape": list(array.shape)}
    if mutable or as_numpy_:
        return as_numpy(array, mutable)
    return {"dtype": dtype, "shape": list(array.shape), "values": codec.to_values(array)}


def blob_reply(blob: bytes, chunk_size: int) -> bytes | list[bytes]:
    """A model blob as RedisAI replied it: one bulk string below MODEL_CHUNK_SIZE, else an array
    of chunks of the *current* chunk size (``len // size + 1`` of them, the last one possibly
    empty, exactly as RedisAI's ``RAI_ReplyWithChunks``)."""
    count = len(blob) // chunk_size + 1
    if count == 1:
        return blob
    return [blob[i * chunk_size : (i + 1) * chunk_size] for i in range(count)]


def model_reply(meta: ModelMeta, blob: bytes | list[bytes] | None) -> list[Any]:
    """AI.MODELGET META [BLOB]."""
    reply: list[Any] = [
        b"backend",
        meta.backend.encode(),
        b"device",
        meta.device.encode(),
        b"tag",
        meta.tag.encode(),
        b"batchsize",
        meta.batchsize,
        b"minbatchsize",
        meta.minbatchsize,
        b"inputs",
        [name.encode() for name in meta.inputs],
        b"outputs",
        [name.encode() for name in meta.outputs],
        b"minbatchtimeout",
        meta.minbatchtimeout,
    ]
    if blob is not None:
        reply += [b"blob", blob]
    return reply


def model_result(reply: Sequence[Any]) -> dict[str, Any]:
    """redisai-py's ``modelget`` dict."""
    result = list2dict(reply)
    result["inputs"] = decoded(result["inputs"])
    result["outputs"] = decoded(result["outputs"])
    return result


def script_reply(meta: ScriptMeta, source: str | None) -> list[Any]:
    """AI.SCRIPTGET META [SOURCE]; RedisAI named the entry points field ``Entry Points``."""
    reply: list[Any] = [b"device", meta.device.encode(), b"tag", meta.tag.encode()]
    reply += [b"Entry Points", [name.encode() for name in meta.entry_points]]
    if source is not None:
        reply += [b"source", source.encode()]
    return reply


# The RedisAI release whose commands aiworker answers, and its low-level API and RDB encoding
# versions as its AI.INFO reported them (it sent the API version for both).
REDISAI_VERSION, REDISAI_LLAPI_VERSION = "1.2.7", "1"
# AI.INFO's name for each backend's version, in RedisAI's order; a plugin's comes after them
BACKEND_VERSION_NAMES = {
    "TF": "TensorFlow version",
    "TORCH": "Torch version",
    "TFLITE": "TFLite version",
    "ONNX": "ONNX version",
}


def module_info_reply(backends: Mapping[str, str]) -> list[Any]:
    """AI.INFO without a key: RedisAI's versions, then each loaded backend's framework version
    (``backends``: name -> version)."""
    reply: list[Any] = [Simple("Version"), REDISAI_VERSION.encode()]
    reply += [Simple("Low Level API Version"), REDISAI_LLAPI_VERSION.encode()]
    reply += [Simple("RDB Encoding version"), REDISAI_LLAPI_VERSION.encode()]
    names = [name for name in BACKEND_VERSION_NAMES if name in backends]
    names += sorted(name for name in backends if name not in BACKEND_VERSION_NAMES)
    for name in names:
        label = BACKEND_VERSION_NAMES.get(name, f"{name} version")
        reply += [Simple(label), Simple(str(backends[name]))]
    return reply


def info_reply(info: Mapping[str, Any]) -> list[Any]:
    """AI.INFO key."""
    reply: list[Any] = []
    for name in ("key", "type", "backend", "device", "tag"):
        reply += [name.encode(), str(info[name]).encode()]
    for name in ("duration", "samples", "calls", "errors"):
        reply += [name.encode(), int(info[name])]
    return reply
