"""Autobatching as RedisAI did it, for models stored with BATCHSIZE > 0.

Requests for the same model version whose inputs agree in dtype and in every dimension but the first
wait together in a ``Batcher``. A group is dispatched when its requests add up to BATCHSIZE (the
oldest request alone may exceed it), when they reach MINBATCHSIZE, when the oldest has waited
MINBATCHTIMEOUT ms, or at once when MINBATCHSIZE is 0 (then it takes whatever is queued). Without
MINBATCHTIMEOUT a lone request under MINBATCHSIZE waits for partners, as in RedisAI.

``run_batch`` concatenates the inputs along dim 0, runs the model once and splits the outputs back
by each request's size; if an output's first dimension is not the batch total, every member gets
RedisAI's "Model did not generate the expected batch size".

While a batch of a model runs in this process, a partial batch of the same model waits for it to
finish (a full one may start at once): the requests arriving meanwhile then run together, instead
of competing for the same cores in small batches. Requests therefore never wait longer than one
batch run for that reason.

The ``Batcher`` is pure bookkeeping and not thread-safe: its owner (one device queue of a worker
process, see ``aiworker.worker.schedule``) calls it under its own lock. Batching therefore happens within
one worker process; requests that different processes took batch separately.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


@dataclass(eq=False)
class Member:
    """One request waiting to be batched.

    ``context`` is whatever the owner needs to complete it (a stream entry, or a DAG op's
    future); ``entry_id`` the stream entry it holds pending, if any.
    """

    model_key: str
    meta: ModelMeta
    inputs: list[np.ndarray]
    context: Any = None
    entry_id: str | None = None
    deadline: float | None = None  # monotonic time its own TIMEOUT expires
    arrived: float = field(default_factory=time.monotonic)
    signature: Signature = field(init=False)
    size: int = field(init=False)  # this request's share of a batch: its inputs' first dimension

    def __post_init__(self) -> None:
        self.signature = signature_of(self.inputs)
        self.size = int(self.inputs[0].shape[0]) if self.signature is not None else 1


@dataclass
class Batch:
    members: list[Member]

    @property
    def total(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def model(self) -> tuple[str, str]:
        """(model key, digest): the model version this batch runs."""
        return self.members[0].model_key, self.members[0].meta.digest


@dataclass
class MemberResult:
    """One member's share of a batch run: its outputs, or the error every member got."""

    outputs: list[np.ndarray] | None
    error: str = ""
    duration_us: int = 0
    counted: bool = True  # False when the model never ran (e.g. it failed to load): no stats


GroupKey = tuple[str, str, Signature]


class Batcher:
    """Requests waiting for their batch, grouped by model key, model digest and input signature."""

    def __init__(self) -> None:
        self._groups: dict[GroupKey, list[Member]] = {}
        self._running: dict[tuple[str, str], int] = {}  # model version -> batches running

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def __bool__(self) -> bool:
        return bool(self._groups)

    def add(self, member: Member) -> None:
        key = (member.model_key, member.meta.digest, member.signature)
        self._groups.setdefault(key, []).append(member)

    def waiting(self, model_key: str) -> int:
        """Requests' total size waiting for batches of one model (its every version)."""
        return sum(
            m.size for key, group in self._groups.items() if key[0] == model_key for m in group
        )

    def held_entry_ids(self) -> list[str]:
        """Stream entries held here (pending in the consumer group until their batch completes)."""
        return [m.entry_id for g in self._groups.values() for m in g if m.entry_id]

    def expired(self, now: float) -> list[Member]:
        """Remove and return members whose own TIMEOUT passed while they waited."""
        gone: list[Member] = []
        for key in list(self._groups):
            group = self._groups[key]
            keep = [m for m in group if m.deadline is None or m.deadline > now]
            if len(keep) != len(group):
                gone.extend(m for m in group if m not in keep)
                self._set(key, keep)
        return gone

    def take(self, now: float, force: bool = False) -> Batch | None:
        """The next batch ready to run (oldest first), removed from the batcher; None if none is.

        ``force`` dispatches waiting groups regardless of MINBATCHSIZE (used when shutting down).
        """
        ready: list[tuple[float, GroupKey, list[Member]]] = []
        for key, group in self._groups.items():
            chosen = self._choose(group)
            if force or (
                self._is_ready(group[0].meta, chosen, now)
                and (not self._running.get(key[:2]) or self._is_full(chosen))
            ):
                ready.append((group[0].arrived, key, chosen))
        if not ready:
            return None
        _, key, chosen = min(ready, key=lambda item: item[0])
        self._set(key, [m for m in self._groups[key] if m not in chosen])
        batch = Batch(chosen)
        self._running[batch.model] = self._running.get(batch.model, 0) + 1
        return batch

    def finished(self, batch: Batch) -> None:
        """A batch ``take`` returned has run: its model may start another partial batch."""
        count = self._running.get(batch.model, 0) - 1
        if count > 0:
            self._running[batch.model] = count
        else:
            self._running.pop(batch.model, None)

    @staticmethod
    def _is_full(chosen: list[Member]) -> bool:
        return sum(m.size for m in chosen) >= chosen[0].meta.batchsize

    def next_wakeup(self) -> float | None:
        """When a waiting group's MINBATCHTIMEOUT or a member's TIMEOUT expires (monotonic)."""
        times: list[float] = []
        for group in self._groups.values():
            meta = group[0].meta
            if meta.minbatchsize and meta.minbatchtimeout:
                times.append(group[0].arrived + meta.minbatchtimeout / 1000)
            times.extend(m.deadline for m in group if m.deadline is not None)
        return min(times) if times else None

    def _set(self, key: GroupKey, members: list[Member]) -> None:
        if members:
            self._groups[key] = members
        else:
            del self._groups[key]

    @staticmethod
    def _choose(group: list[Member]) -> list[Member]:
        """The oldest request plus, in arrival order, those that still fit under BATCHSIZE."""
        head = group[0]
        if head.signature is None:
            return [head]
        chosen, total = [head], head.size
        for member in group[1:]:
            if total + member.size <= head.meta.batchsize:
                chosen.append(member)
                total += member.size
        return chosen

    @staticmethod
    def _is_ready(meta: ModelMeta, chosen: list[Member], now: float) -> bool:
        total = sum(m.size for m in chosen)
        if chosen[0].signature is None or total >= meta.batchsize or meta.minbatchsize == 0:
            return True
        if total >= meta.minbatchsize:
            return True
        # the same expression as next_wakeup, so a thread woken at that time finds it ready
        return bool(meta.minbatchtimeout) and now >= chosen[0].arrived + meta.minbatchtimeout / 1000


def run_once(
    models: Models, key: str, meta: ModelMeta, inputs: Sequence[np.ndarray]
) -> MemberResult:
    """Run one request alone (no batch bookkeeping): its result as a batch member's."""
    try:
        with models.model(key, meta) as model:
            try:
                outputs, duration_us = run_model(model, inputs, meta.backend)
            except AIError as exc:
                return MemberResult(None, error_text(exc))
    except AIWorkerError as exc:  # the model failed to load: it never ran, nothing counted
        return MemberResult(None, error_text(exc), counted=False)
    return MemberResult(outputs, duration_us=duration_us)


def run_batch(models: Models, batch: Batch) -> list[MemberResult]:
    """Run a batch once; one result per member, in order.

    Statistics follow RedisAI: every member counts the whole batch's duration.
    """
    members = batch.members
    head = members[0]
    try:
        with models.model(head.model_key, head.meta) as model:
            if len(members) == 1:
                inputs = head.inputs
            else:
                count = len(head.inputs)
                inputs = [np.concatenate([m.inputs[i] for m in members]) for i in range(count)]
            try:
                outputs, duration_us = run_model(model, inputs, head.meta.backend)
            except AIError as exc:
                return [MemberResult(None, error_text(exc)) for _ in members]
    except AIWorkerError as exc:  # the model failed to load: it never ran, nothing to count
        return [MemberResult(None, error_text(exc), counted=False) for _ in members]
    if len(members) == 1:
        return [MemberResult(outputs, duration_us=duration_us)]
    total = batch.total
    if any(np.ndim(out) == 0 or out.shape[0] != total for out in outputs):
        error = messages.MODEL_BATCH_SIZE_MISMATCH
        return [MemberResult(None, error, duration_us) for _ in members]
    results: list[MemberResult] = []
    offset = 0
    for member in members:
        mine = [out[offset : offset + member.size] for out in outputs]
        results.append(MemberResult(mine, duration_us=duration_us))
        offset += member.size
    return results
