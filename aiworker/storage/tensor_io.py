"""Tensor reads and writes against Redis (the codec itself lives in ``tensor.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, WrongTypeError
from aiworker.storage import scripts
from aiworker.storage import tensor as codec


def queue_write(pipe: redis.client.Pipeline, key: str, array: np.ndarray) -> None:
    """Queue a replace of ``key`` with ``array`` (DEL first: a stale ``values`` field must go)."""
    pipe.delete(key)
    pipe.hset(key, mapping=codec.encode_fields(array))  # type: ignore[arg-type]


_WRITE = scripts.load("tensor_write")


# Above this, a Lua argument's extra copies inside Redis cost more than a second round trip.
LARGE_TENSOR = 1 << 20
# WATCH conflicts tolerated by one large write; a key rewritten this often by others is contended
# beyond reason, and retrying forever would pin the worker thread.
WATCH_ATTEMPTS = 50


def write(r: redis.Redis, key: str, array: np.ndarray) -> None:
    """Store ``array`` at ``key``; WRONGTYPE if the key holds something else than a tensor."""
    fields = codec.encode_fields(array)
    if len(fields["blob"]) > LARGE_TENSOR:
        _write_large(r, key, fields)
        return
    args: list[Any] = []
    for name, value in fields.items():
        args += [name, value]
    try:
        _WRITE(r, [key], args)
    except redis.ResponseError as exc:
        decode_reply(exc)
        raise


def _write_large(r: redis.Redis, key: str, fields: dict[str, Any]) -> None:
    """The same check and replace as ``_WRITE``, under WATCH so the blob is sent as a plain HSET
    argument: the type check and the write are two round trips, retried (a bounded number of
    times) if the key changed in between."""
    with r.pipeline(transaction=True) as pipe:
        for _ in range(WATCH_ATTEMPTS):
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                kind = pipe.type(key)
                if kind not in (b"none", "none"):
                    tag = pipe.hget(key, "kind") if kind in (b"hash", "hash") else None
                    if tag not in (b"tensor", "tensor"):
                        raise WrongTypeError()
                pipe.multi()
                pipe.delete(key)
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.execute()
                return
            except redis.WatchError:
                continue
    raise AIError(
        f"tensor '{key}' was changed by other clients during each of {WATCH_ATTEMPTS} attempts "
        "to write it; nothing was written"
    )


def decode_reply(reply: Any) -> np.ndarray:
    """Decode an HGETALL reply: a mapping, a flat field/value list (from Lua), or the exception
    a pipeline or script returned in its place."""
    if isinstance(reply, redis.ResponseError):
        if str(reply).startswith("WRONGTYPE"):
            raise WrongTypeError()
        raise reply
    if not reply:
        raise AIError(messages.TENSOR_EMPTY)
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    return codec.decode_fields(reply)


def read(r: redis.Redis, key: str) -> np.ndarray:
    """The tensor at ``key`` (read-only array); RedisAI's errors for missing or other keys."""
    reply: Any
    try:
        reply = r.hgetall(key)
    except redis.ResponseError as exc:
        reply = exc
    return decode_reply(reply)


def read_meta(r: redis.Redis, key: str) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) without transferring the blob."""
    try:
        kind, dtype, shape = r.hmget(key, ["kind", "dtype", "shape"])
    except redis.ResponseError as exc:
        decode_reply(exc)
        raise
    if kind is None and dtype is None and shape is None and not r.exists(key):
        raise AIError(messages.TENSOR_EMPTY)
    return codec.decode_meta({"kind": kind, "dtype": dtype, "shape": shape})
