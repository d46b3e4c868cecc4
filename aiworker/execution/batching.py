"""Autobatching as RedisAI did it, for models stored with BATCHSIZE > 0, and the one queue every
unit of device work waits in.

Everything a device lane runs - a single MODELEXECUTE, a DAG's model op, a script call, a model
check - is a ``Member`` waiting in the lane's ``Batcher``. Members of a model stored with
BATCHSIZE > 0 whose inputs agree in dtype and in every dimension but the first wait together for
their batch; every other member is a batch of one, ready at once. So single jobs, DAG ops and batch
members are one thing to the lane: it takes the oldest ready ``Batch`` whenever it may start a run.

A model's group is dispatched when its requests add up to BATCHSIZE (the oldest request alone may
exceed it), when they reach MINBATCHSIZE, when the oldest has waited MINBATCHTIMEOUT ms, or at once
when MINBATCHSIZE is 0 (then it takes whatever is queued). Without MINBATCHTIMEOUT a lone request
under MINBATCHSIZE waits for partners, as in RedisAI - but never without bound: beyond
``max_waiting`` requests or ``max_waiting_bytes`` of inputs waiting in one lane, the oldest group
runs as it is (``overfull``), so nobody can park unbounded memory in a worker.

While a batch of a model runs in this process, a partial batch of the same model waits for it to
finish (a full one may start at once): the requests arriving meanwhile then run together, instead
of competing for the same device in small batches.

``run_batch`` writes the members' inputs into one buffer per input (the backend's host memory:
pinned for a GPU), padded with zero rows up to one of a few sizes when the model asks for it
(``LoadedModel.batch_sizes``: frameworks that specialise on shapes stay fast), runs the model once
and hands each member its rows; padding rows are never returned. If an output's first dimension is
not the batch total, every member gets RedisAI's "Model did not generate the expected batch size".
Before a model first runs a batch of a new input signature, each of its padded sizes is run once on
zeros (``warm_up``), so no request pays for a framework's first-call compilation; warm-up runs are
counted nowhere.

The ``Batcher`` is pure bookkeeping and not thread-safe: its owner (a device lane,
``aiworker.worker.lane``) calls it under its own lock. Batching happens within one worker process.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiworker.backends.base import LoadedModel
from aiworker.execution.models import Models, run_model
from aiworker.execution.outcome import error_text
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.storage.model import ModelMeta

# Per input: (dtype, every dimension but the first). None: a 0-d input, which cannot be batched.
Signature = tuple[tuple[str, tuple[int, ...]], ...] | None


def signature_of(inputs: Sequence[np.ndarray]) -> Signature:
    """What must agree between requests batched together."""
    if not inputs or any(np.ndim(x) == 0 for x in inputs):
        return None
    sizes = {int(x.shape[0]) for x in inputs}
    if len(sizes) != 1:  # inputs disagree on dim 0: no way to split outputs back by size
        return None
    return tuple((str(x.dtype) if x.dtype.kind != "O" else "O", tuple(x.shape[1:])) for x in inputs)


@dataclass
class MemberResult:
    """One member's share of a run: its outputs, or the error every member got."""

    outputs: list[np.ndarray] | None
    error: str = ""
    duration_us: int = 0
    counted: bool = True  # False when the model never ran (e.g. it failed to load): no stats


@dataclass(eq=False)
class Member:
    """One unit of device work waiting to run.

    A model member (``meta`` set) batches with others of its model when BATCHSIZE > 0; any other
    unit (a script call, a model check) sets ``run`` instead and always runs alone. ``context`` is
    whatever the owner needs when it finishes (the job and op it belongs to); ``entry_id`` the
    stream entry it holds pending, if any.
    """

    model_key: str
    meta: ModelMeta | None
    inputs: list[np.ndarray]
    context: Any = None
    entry_id: str | None = None
    deadline: float | None = None  # monotonic time its own TIMEOUT expires
    arrived: float = field(default_factory=time.monotonic)
    run: Callable[[], MemberResult] | None = None  # a unit that is not a model call
    signature: Signature = field(init=False)
    size: int = field(init=False)  # this request's share of a batch: its inputs' first dimension
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.signature = signature_of(self.inputs) if self.run is None else None
        self.size = int(self.inputs[0].shape[0]) if self.signature is not None else 1
        self.nbytes = sum(int(getattr(x, "nbytes", 0)) for x in self.inputs)

    @property
    def batching(self) -> bool:
        return self.meta is not None and self.meta.batchsize > 0 and self.signature is not None


@dataclass
class Batch:
    members: list[Member]

    @property
    def total(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def model(self) -> tuple[str, str]:
        """(model key, digest): the model version this batch runs ("" for other units)."""
        head = self.members[0]
        return head.model_key, head.meta.digest if head.meta is not None else ""


GroupKey = tuple[str, str, Signature] | int


def _group_key(member: Member) -> GroupKey:
    if not member.batching:
        return id(member)  # a batch of one
    assert member.meta is not None
    return (member.model_key, member.meta.digest, member.signature)


class Batcher:
    """Units waiting to run: batching models' requests grouped by model key, digest and input
    signature; every other unit alone."""

    def __init__(self, max_waiting: int = 0, max_waiting_bytes: int = 0) -> None:
        self._groups: dict[GroupKey, list[Member]] = {}
        self._running: dict[tuple[str, str], int] = {}  # model version -> batches running
        self.max_waiting = max_waiting  # 0: no bound
        self.max_waiting_bytes = max_waiting_bytes
        self._count = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return bool(self._groups)

    def add(self, member: Member) -> None:
        self._groups.setdefault(_group_key(member), []).append(member)
        self._count += 1
        self._bytes += member.nbytes

    def waiting(self, model_key: str) -> int:
        """Requests' total size waiting for batches of one model (its every version)."""
        return sum(
            m.size
            for key, group in self._groups.items()
            if isinstance(key, tuple) and key[0] == model_key
            for m in group
        )

    def batchsize(self, model_key: str) -> int:
        """BATCHSIZE of a model waiting here (0: none of its requests waits)."""
        for key, group in self._groups.items():
            if isinstance(key, tuple) and key[0] == model_key and group[0].meta is not None:
                return group[0].meta.batchsize
        return 0

    def held_entry_ids(self) -> list[str]:
        """Stream entries held here (pending in the consumer group until their batch completes)."""
        return [m.entry_id for g in self._groups.values() for m in g if m.entry_id]

    def members(self) -> list[Member]:
        return [m for g in self._groups.values() for m in g]

    def expired(self, now: float) -> list[Member]:
        """Remove and return members whose own TIMEOUT passed while they waited."""
        gone: list[Member] = []
        for key in list(self._groups):
            group = self._groups[key]
            if all(m.deadline is None or m.deadline > now for m in group):
                continue
            keep = [m for m in group if m.deadline is None or m.deadline > now]
            gone.extend(m for m in group if m not in keep)
            self._set(key, keep)
        return gone

    def overfull(self) -> bool:
        """More waits here than the lane may hold: the oldest group runs as it is."""
        return bool(
            (self.max_waiting and self._count > self.max_waiting)
            or (self.max_waiting_bytes and self._bytes > self.max_waiting_bytes)
        )

    def room(self) -> int:
        """How many more units may come in before the batcher is overfull (the bytes estimated
        from the units waiting now); a large number when unbounded."""
        room = self.max_waiting - self._count if self.max_waiting else 1 << 30
        if self.max_waiting_bytes and self._count:
            each = max(1, self._bytes // self._count)
            room = min(room, (self.max_waiting_bytes - self._bytes) // each)
        return max(0, room)

    def take(self, now: float, force: bool = False) -> Batch | None:
        """The next batch ready to run (oldest first), removed from the batcher; None if none is.

        ``force`` dispatches waiting groups regardless of MINBATCHSIZE (a stop, or every thread
        waiting); an ``overfull`` batcher forces its oldest group.
        """
        ready: tuple[float, GroupKey, list[Member]] | None = None
        oldest: tuple[float, GroupKey, list[Member]] | None = None
        for key, group in self._groups.items():
            head = group[0]
            if oldest is None or head.arrived < oldest[0]:
                oldest = (head.arrived, key, group)
            if ready is not None and head.arrived >= ready[0]:
                continue
            if not isinstance(key, tuple):
                ready = (head.arrived, key, group)
                continue
            chosen = self._choose(group)
            if force or (
                self._is_ready(chosen, now)
                and (not self._running.get(key[:2]) or self._is_full(chosen))
            ):
                ready = (head.arrived, key, chosen)
        if ready is None and oldest is not None and self.overfull():
            ready = (oldest[0], oldest[1], self._choose(oldest[2]))
        if ready is None:
            return None
        _, key, chosen = ready
        self._set(key, [m for m in self._groups[key] if m not in chosen])
        batch = Batch(chosen)
        if isinstance(key, tuple):
            self._running[batch.model] = self._running.get(batch.model, 0) + 1
        return batch

    def finished(self, batch: Batch) -> None:
        """A batch ``take`` returned has run: its model may start another partial batch."""
        if batch.members[0].batching:
            count = self._running.get(batch.model, 0) - 1
            if count > 0:
                self._running[batch.model] = count
            else:
                self._running.pop(batch.model, None)

    def next_wakeup(self) -> float | None:
        """When a waiting group's MINBATCHTIMEOUT or a member's TIMEOUT expires (monotonic)."""
        times: list[float] = []
        for group in self._groups.values():
            meta = group[0].meta
            if meta is not None and meta.minbatchsize and meta.minbatchtimeout:
                times.append(group[0].arrived + meta.minbatchtimeout / 1000)
            times.extend(m.deadline for m in group if m.deadline is not None)
        return min(times) if times else None

    def _set(self, key: GroupKey, members: list[Member]) -> None:
        removed = self._groups.get(key, [])
        kept = set(map(id, members))
        for member in removed:
            if id(member) not in kept:
                self._count -= 1
                self._bytes -= member.nbytes
        if members:
            self._groups[key] = members
        else:
            del self._groups[key]

    @staticmethod
    def _is_full(chosen: list[Member]) -> bool:
        meta = chosen[0].meta
        assert meta is not None
        return sum(m.size for m in chosen) >= meta.batchsize

    @staticmethod
    def _choose(group: list[Member]) -> list[Member]:
        """The oldest request plus, in arrival order, those that still fit under BATCHSIZE."""
        head = group[0]
        if not head.batching:
            return [head]
        assert head.meta is not None
        chosen, total = [head], head.size
        for member in group[1:]:
            if total + member.size <= head.meta.batchsize:
                chosen.append(member)
                total += member.size
        return chosen

    @staticmethod
    def _is_ready(chosen: list[Member], now: float) -> bool:
        meta = chosen[0].meta
        assert meta is not None
        total = sum(m.size for m in chosen)
        if total >= meta.batchsize or meta.minbatchsize == 0 or total >= meta.minbatchsize:
            return True
        # the same expression as next_wakeup, so a thread woken at that time finds it ready
        return bool(meta.minbatchtimeout) and now >= chosen[0].arrived + meta.minbatchtimeout / 1000


# running ----------------------------------------------------------------------------------------


def padded_size(total: int, sizes: Sequence[int] | None) -> int:
    """The smallest of ``sizes`` that holds ``total`` rows (``total`` itself when none does or the
    model pads nothing)."""
    if sizes:
        for size in sizes:
            if size >= total:
                return size
    return total


# Which (input signature) each loaded model has been warmed up for; forgotten with the model.
_warmed: weakref.WeakKeyDictionary[LoadedModel, set[Signature]] = weakref.WeakKeyDictionary()


def warm_up(model: LoadedModel, member: Member) -> None:
    """Run each batch size the model pads to once on zeros before its first batch of this input
    signature (not a job: nothing is counted, a failure is left for the real run to report)."""
    meta = member.meta
    assert meta is not None
    sizes = model.batch_sizes(meta.batchsize)
    seen = _warmed.setdefault(model, set())
    if not sizes or member.signature in seen:
        return
    seen.add(member.signature)
    for size in sizes:
        inputs = [_zeros(model, x, size) for x in member.inputs]
        try:
            model.run(inputs)
        except Exception:  # the real run reports what is wrong with the model
            return


def _zeros(model: LoadedModel, like: np.ndarray, rows: int) -> np.ndarray:
    buffer = model.host_buffer((rows, *like.shape[1:]), like.dtype)
    if like.dtype.kind == "O":
        buffer[...] = b""
    else:
        buffer[...] = 0
    return buffer


def _assemble(model: LoadedModel, members: Sequence[Member], rows: int) -> list[np.ndarray]:
    """One buffer per input holding every member's rows, then zero padding up to ``rows``."""
    if len(members) == 1 and rows == members[0].size:
        return members[0].inputs
    inputs: list[np.ndarray] = []
    for i, first in enumerate(members[0].inputs):
        buffer = model.host_buffer((rows, *first.shape[1:]), first.dtype)
        offset = 0
        for member in members:
            part = member.inputs[i]
            buffer[offset : offset + len(part)] = part
            offset += len(part)
        if offset < rows:
            buffer[offset:] = b"" if first.dtype.kind == "O" else 0
        inputs.append(buffer)
    return inputs


def run_once(
    models: Models, key: str, meta: ModelMeta, inputs: Sequence[np.ndarray]
) -> MemberResult:
    """Run one request alone (a script's ``redisAI.model_execute``, or a model not batched)."""
    (result,) = run_batch(models, Batch([Member(key, meta, list(inputs))]))
    return result


def run_batch(models: Models, batch: Batch) -> list[MemberResult]:
    """Run a batch once; one result per member, in order.

    Statistics follow RedisAI: every member counts the whole batch's duration.
    """
    members = batch.members
    head = members[0]
    if head.run is not None:  # not a model call
        return [head.run()]
    assert head.meta is not None
    total = batch.total
    try:
        with models.model(head.model_key, head.meta) as model:
            rows = total
            if head.batching:
                warm_up(model, head)
                rows = padded_size(total, model.batch_sizes(head.meta.batchsize))
            inputs = _assemble(model, members, rows)
            try:
                outputs, duration_us = run_model(model, inputs, head.meta.backend)
            except AIError as exc:
                return [MemberResult(None, error_text(exc)) for _ in members]
    except AIWorkerError as exc:  # the model failed to load: it never ran, nothing to count
        return [MemberResult(None, error_text(exc), counted=False) for _ in members]
    if len(members) == 1 and rows == total:
        return [MemberResult(outputs, duration_us=duration_us)]
    if any(np.ndim(out) == 0 or out.shape[0] != rows for out in outputs):
        error = messages.MODEL_BATCH_SIZE_MISMATCH
        return [MemberResult(None, error, duration_us) for _ in members]
    results: list[MemberResult] = []
    offset = 0
    for member in members:
        mine = [out[offset : offset + member.size] for out in outputs]
        results.append(MemberResult(mine, duration_us=duration_us))
        offset += member.size
    return results
