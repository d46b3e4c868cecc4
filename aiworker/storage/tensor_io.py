"""Tensor reads and writes against Redis (the codec itself lives in ``tensor.py``).

Each operation is a plan (``storage.plans``) so that blocking and asyncio clients share it; the
plain functions run it on a ``redis.Redis``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import redis

from aiworker.protocol import messages
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, WrongTypeError
from aiworker.protocol.keys import Keys
from aiworker.protocol.text import text
from aiworker.storage import lua, plans, staged
from aiworker.storage.plans import Commands, Plan

_WRITE = lua.load("tensor_write")

# Tensor data above this many bytes does not pass through Lua: Redis hashes every byte of every
# string that enters its Lua interpreter (a byte-at-a-time loop, ~1.3 ns a byte; a plain HSET
# keeps the value it received, an HMGET copies it once), which for a large value costs Redis ten
# times the plain command (bench/luacost.py). A job's read fetches a larger value with a plain
# HMGET, its completion writes it with a plain HSET of a stage key (``lua.Call.stages``), and a
# client's write stages it the same way (``write_plan``).
LUA_VALUE_BYTES = 16 * 1024
# The most tensor data one of a worker's read or completion calls passes through Lua (smallest
# values first): the rest goes the plain way too. The plain way's extra commands cost Redis about
# what hashing 4 KB does, and the worker more, so a single job's small values stay in the script;
# a batch's do not (32 jobs with 8 KB inputs: Redis's time in the read 782 -> 383 us).
LUA_CALL_BYTES = 16 * 1024

T = TypeVar("T")


def kept_out_of_lua(values: Iterable[tuple[int, T]], budget: int | None = None) -> list[T]:
    """Of one script call's tensor values, given as (bytes, item), the items that go the plain
    way: each over ``LUA_VALUE_BYTES``, and those beyond ``budget`` in all (``LUA_CALL_BYTES``
    unless given; smallest first in)."""
    budget = LUA_CALL_BYTES if budget is None else budget
    values = list(values)
    if sum(nbytes for nbytes, _item in values) <= min(budget, LUA_VALUE_BYTES):
        return []  # a single job's small values: all through the script
    left = budget
    out = []
    for nbytes, item in sorted(values, key=lambda value: value[0]):
        if nbytes <= min(left, LUA_VALUE_BYTES):
            left -= nbytes
        else:
            out.append(item)
    return out


def write_plan(key: str, array: np.ndarray, keyspace: Keys | None = None) -> Plan[None]:
    """Store ``array`` at ``key``; WRONGTYPE if the key holds something else than a tensor.

    Small tensors go through one Lua call. A large blob is written to a temporary key in a plain
    HSET (no Lua argument copies) and renamed onto the key by a script that checks its type, in
    one MULTI (``staged.write_plan``): one round trip, and no temporary key left whatever the
    script did.
    """
    fields = codec.encode_fields(array)
    flat: list[Any] = []
    for name, value in fields.items():
        flat += [name, value]
    if len(fields["blob"]) > LUA_VALUE_BYTES:
        yield from staged.write_plan(keyspace or Keys(), key, codec.KIND_TENSOR, [flat])
        return
    reply = yield from _WRITE.plan([key], flat)
    if isinstance(reply, Exception):
        decode_reply(reply)  # raises WRONGTYPE as ours
        raise reply


def write(r: plans.AnyRedis, key: str, array: np.ndarray, keyspace: Keys | None = None) -> None:
    """Store ``array`` at ``key`` (see ``write_plan``)."""
    plans.run(r, write_plan(key, array, keyspace))


# What Redis accepts in one value by default (proto-max-bulk-len).
REDIS_MAX_VALUE_BYTES = 512 << 20


def max_value_bytes(r: plans.AnyRedis) -> int:
    """The most bytes Redis accepts in one value (its ``proto-max-bulk-len``; the smallest of a
    cluster's nodes), or Redis's default when the user may not run CONFIG GET."""
    try:
        reply: Any = r.config_get("proto-max-bulk-len")
    except redis.RedisError:
        return REDIS_MAX_VALUE_BYTES
    found: list[int] = []

    def collect(value: Any) -> None:  # {name: value}, or per cluster node {node: {name: value}}
        if isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif text(value).isdigit():
            found.append(int(text(value)))

    collect(reply)
    return min(found) if found else REDIS_MAX_VALUE_BYTES


def decode_reply(reply: Any) -> np.ndarray:
    """Decode an HGETALL reply: a mapping, a flat field/value list (from Lua), or the exception
    a pipeline or script returned in its place."""
    if isinstance(reply, Exception):  # redis-py's LOADING error is a ConnectionError
        if str(reply).startswith("WRONGTYPE"):
            raise WrongTypeError()
        raise reply
    if not reply:
        raise AIError(messages.TENSOR_EMPTY)
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    return codec.decode_fields(reply)


def read_plan(key: str) -> Plan[np.ndarray]:
    """The tensor at ``key`` (read-only array); RedisAI's errors for missing or other keys."""
    replies = yield Commands([("HGETALL", key)], large=True)
    return decode_reply(replies[0])


def read(r: plans.AnyRedis, key: str) -> np.ndarray:
    return plans.run(r, read_plan(key))


def read_meta_plan(key: str) -> Plan[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) without transferring the blob."""
    replies = yield Commands([("HMGET", key, "kind", "dtype", "shape"), ("EXISTS", key)])
    fields, exists = replies
    if isinstance(fields, Exception):
        decode_reply(fields)
        raise fields
    kind, dtype, shape = fields
    if kind is None and dtype is None and shape is None and not exists:
        raise AIError(messages.TENSOR_EMPTY)
    return codec.decode_meta({"kind": kind, "dtype": dtype, "shape": shape})


def read_meta(r: plans.AnyRedis, key: str) -> tuple[str, tuple[int, ...]]:
    return plans.run(r, read_meta_plan(key))
