"""The one read of a job's state: model and script versions, input tensors, output key kinds.

All jobs taken in one stream read are served by one Lua script call (``read_jobs.lua``): it checks
key types and stored sizes before fetching tensor data, reads each key once however many jobs or
arguments name it, and stops fetching when the read carries ``max_job_bytes`` (jobs left over are
read again on their own when they run). A script reads one hash slot, so the keys are grouped by
slot and each group read by its own call, all in one round trip per node (a single Redis is one
slot: one call); on Redis Cluster the byte budgets then hold per group, and ``Snapshot.tensor``
still bounds each job's decoded total. A ``Snapshot`` then decodes what one job needs, on demand,
with RedisAI's errors in the order RedisAI reported them, and declared sizes checked before any
array is allocated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from aiworker.execution import limits
from aiworker.execution.limits import Limits
from aiworker.protocol.errors import LimitExceeded
from aiworker.protocol.requests import KIND, MODEL, SCRIPT, TENSOR, Request
from aiworker.protocol.text import text
from aiworker.storage import lua
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage.plans import by_slot

READ_JOBS = lua.load("read_jobs")


class ScriptRunner(Protocol):
    """What the read runs on: the worker thread's job connection (``storage.wire.JobConnection``)."""

    def pipeline(self, commands: Sequence[Sequence[Any]], routes: Any = None) -> list[Any]: ...

    def slot(self, key: Any) -> int: ...


class MetaCache:
    """The model and script metadata this process read last, by key: a job whose model is in it
    skips that read, and its completion checks, atomically, that the stored version is still the
    one it ran (``complete.lua``'s ``expect``); when it is not, the entry is run again."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._replies: dict[tuple[str, str], Any] = {}

    def get(self, what: str, key: str) -> Any:
        return self._replies.get((what, key))

    def put(self, what: str, key: str, reply: Any) -> None:
        if len(self._replies) >= self.size:
            self._replies.clear()  # a worker serves a handful of models: start over
        self._replies[(what, key)] = reply

    def drop(self, key: str) -> None:
        self._replies.pop((MODEL, key), None)
        self._replies.pop((SCRIPT, key), None)


def _digest(what: str, reply: Any) -> bytes:
    """The stored digest in a metadata reply (``ok`` + META_FIELDS of a model or a script)."""
    fields = model_store.META_FIELDS if what == MODEL else script_store.META_FIELDS
    return bytes(reply[1 + fields.index("digest")] or b"")


@dataclass
class Snapshot:
    """What a read brought for one job, decoded on first use (each key once)."""

    replies: dict[tuple[str, str], Any]
    limits: Limits
    deferred: bool = False  # its tensors were left for a read of their own
    # (key, digest) of metadata taken from the cache: the completion checks they still hold
    expect: list[tuple[str, bytes]] = field(default_factory=list)
    _decoded: dict[str, np.ndarray] = field(default_factory=dict)
    _declared: int = 0  # bytes of the tensors decoded so far, each use counted

    def model(self, key: str) -> model_store.ModelMeta:
        """The model's metadata; RedisAI's errors for a missing key or another kind of key."""
        return model_store.meta_from_reply(self._reply(MODEL, key))

    def script(self, key: str) -> script_store.ScriptMeta:
        return script_store.meta_from_reply(self._reply(SCRIPT, key))

    def kind(self, key: str) -> tuple[str, str | None]:
        """(Redis type, aiworker kind) of a key a DAG persists to; ("none", None) if missing."""
        reply = self._reply(KIND, key)
        if reply[0] == b"none":
            return "none", None
        return text(reply[1]), text(reply[2]) if reply[2] else None

    def tensor(self, key: str) -> np.ndarray:
        """An input tensor (read-only), sized from its declared shape before it is allocated."""
        reply = self._reply(TENSOR, key)
        status = reply[0]
        if status == b"toobig":
            raise _too_big(key, text(reply[1]), int(reply[2]), self.limits)
        array = self._decoded.get(key)
        if array is None:
            array = limits.decode_tensor_reply(key, reply, self.limits.max_tensor_bytes)
            self._decoded[key] = array
        self._declared += limits.nbytes(array)
        if self._declared > self.limits.max_job_bytes:
            raise LimitExceeded(
                f"the job's tensors would take {self._declared:,} bytes, more than this "
                f"worker's max_job_bytes ({self.limits.max_job_bytes:,})"
            )
        return array

    def tensors(self, keys: Iterable[str]) -> list[np.ndarray]:
        return [self.tensor(key) for key in keys]

    def _reply(self, what: str, key: str) -> Any:
        reply = self.replies[(what, key)]
        if what == TENSOR and reply[0] == b"deferred":
            raise RuntimeError("tensor was not read")  # callers check ``deferred`` first
        return reply


def _too_big(key: str, which: str, nbytes: int, bounds: Limits) -> LimitExceeded:
    if which == "job":
        return LimitExceeded(
            f"the job's tensors take {nbytes:,} bytes in Redis, more than this worker's "
            f"max_job_bytes ({bounds.max_job_bytes:,})"
        )
    return LimitExceeded(
        f"tensor '{key}' has {nbytes:,} bytes of data, more than this worker's "
        f"max_tensor_bytes ({bounds.max_tensor_bytes:,})"
    )


def read(
    conn: ScriptRunner,
    requests: Sequence[Request],
    bounds: Limits,
    cache: MetaCache | None = None,
) -> list[Snapshot]:
    """One round trip for the state of every request (in order); one ``Snapshot`` each. Model
    and script metadata found in ``cache`` is not read again; none at all: no round trip."""
    wanted = [request.state_reads() for request in requests]
    index: dict[tuple[str, str], int] = {}
    cached: dict[tuple[str, str], Any] = {}
    uses: list[dict[int, int]] = []  # per key read: job -> how many times it names the key
    for job, pairs in enumerate(wanted):
        for pair in pairs:
            if cache is not None and pair[0] in (MODEL, SCRIPT):
                hit = cached.get(pair) or cache.get(*pair)
                if hit is not None:
                    cached[pair] = hit
                    continue
            n = index.get(pair)
            if n is None:
                n = index[pair] = len(uses)
                uses.append({})
            uses[n][job] = uses[n].get(job, 0) + 1
    replies: Any = []
    if index:
        args: list[Any] = [bounds.max_tensor_bytes, bounds.max_job_bytes, bounds.max_job_bytes]
        for (what, _key), counts in zip(index, uses, strict=True):
            args.append(what)
            args.append(" ".join(f"{j}:{c}" for j, c in counts.items()) if what == TENSOR else "")
        keys = [key for _what, key in index]
        replies = _read_by_slot(conn, keys, args)
        if cache is not None:
            for (what, key), reply in zip(index, replies, strict=True):
                if what in (MODEL, SCRIPT) and reply[0] == b"ok":
                    cache.put(what, key, reply)
    snapshots = []
    for pairs in wanted:
        mine = {p: cached[p] if p in cached else replies[index[p]] for p in pairs}
        deferred = any(reply[0] == b"deferred" for reply in mine.values())
        expect = [(p[1], _digest(p[0], cached[p])) for p in dict.fromkeys(pairs) if p in cached]
        snapshots.append(Snapshot(mine, bounds, deferred, expect))
    return snapshots


def _read_by_slot(conn: ScriptRunner, keys: list[str], args: list[Any]) -> list[Any]:
    """``read_jobs.lua`` once per hash slot of ``keys``; the replies in ``keys``' order."""
    groups = by_slot(keys, conn.slot)
    if len(groups) == 1:  # every key in one slot: always so on a single Redis
        return lua.run_one(conn, READ_JOBS, keys, args)  # type: ignore[no-any-return]
    head = args[:3]
    calls = [
        lua.Call(
            READ_JOBS,
            [keys[n] for n in group],
            head + [a for n in group for a in args[3 + 2 * n : 5 + 2 * n]],
        )
        for group in groups
    ]
    replies: list[Any] = [None] * len(keys)
    for group, reply in zip(groups, lua.run(conn, calls), strict=True):
        if isinstance(reply, Exception):
            raise reply
        for n, one in zip(group, reply, strict=True):
            replies[n] = one
    return replies
