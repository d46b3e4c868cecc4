"""Autobatching as RedisAI did it, for models stored with BATCHSIZE > 0, and the one queue every
unit of device work waits in.

Everything a device lane runs - a single MODELEXECUTE, a DAG's model op, a script call, a model
check - is a ``Member`` waiting in the lane's ``Batcher``. Members of a model stored with
BATCHSIZE > 0 whose inputs agree in dtype and in every dimension but the first wait together for
their batch; every other member is a batch of one, ready at once. So single jobs, DAG ops and batch
members are one thing to the lane: it takes the oldest ready ``Batch`` whenever it may start a run.

A model's group is dispatched when its requests add up to BATCHSIZE (the oldest request alone may
exceed it), when more wait than one batch takes (a request that does not fit beside the oldest
must not wait for the oldest's partners), when they reach MINBATCHSIZE, when the oldest has waited
MINBATCHTIMEOUT ms, or at once when MINBATCHSIZE is 0 (then it takes whatever is queued). Without
MINBATCHTIMEOUT a lone request under MINBATCHSIZE waits for partners, as in RedisAI - but never
without bound: beyond ``max_waiting`` requests or ``max_waiting_bytes`` of inputs waiting in one
lane, the oldest group runs as it is (``overfull``), so nobody can park unbounded memory in a
worker.

While a batch of a model runs in this process, a partial batch of the same model waits for it to
finish (a full one may start at once): the requests arriving meanwhile then run together, instead
of competing for the same device in small batches.

A group waits for partners of its own model version only: once the model is stored anew or
deleted, none can come. So the stored version of a model whose requests wait is read again
(``to_check``, by the owner, which tells ``stored``) when a group has waited VERSION_CHECK_S, and
every VERSION_CHECK_S after while some do, or at once when a request of another version comes. A
group of a version no longer stored runs at once, as full as it gets: on that version if it is
still loaded, else on the stored one (or failing as a request for a missing model does).

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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiworker.backends.base import LoadedModel
from aiworker.execution.models import Models, run_model
from aiworker.execution.outcome import error_text
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, AIWorkerError, CountMismatch, RunTimedOut
from aiworker.protocol.requests import IONames
from aiworker.storage.model import ModelMeta

# How long requests wait for batch partners before their model's stored version is read again
# (then again as often while some wait): a new version or a MODELDEL gives them no partners.
VERSION_CHECK_S = 1.0

# Per input: (dtype, every dimension but the first). None: inputs that cannot be batched.
Signature = tuple[tuple[str, tuple[int, ...]], ...] | None


def signature_of(inputs: Sequence[np.ndarray]) -> Signature:
    """What must agree between requests batched together; None for a request that runs alone:
    a 0-d input, inputs of different first dimensions (no way to split outputs back by size),
    or no rows at all (RedisAI ran a batch dimension of 0 alone: such a request adds nothing
    to a batch, and waiting for MINBATCHSIZE partners would hold it for nothing)."""
    if not inputs or any(x.ndim == 0 for x in inputs):
        return None
    rows = inputs[0].shape[0]
    if rows == 0 or any(x.shape[0] != rows for x in inputs):
        return None
    return tuple((x.dtype.str if x.dtype.kind != "O" else "O", x.shape[1:]) for x in inputs)


@dataclass
class MemberResult:
    """One member's share of a run: its outputs, or its error."""

    outputs: list[np.ndarray] | None
    error: str = ""
    duration_us: int = 0
    counted: bool = True  # False when the model never ran (e.g. it failed to load): no stats
    listed: IONames | None = None  # a model check's: the names its framework reports
    version: str = ""  # the stored version that ran (``LoadedModel.version``)
    # (rows, requests) of the batch run that gave this result: after a failed run, a part of the
    # batch taken (``_run_members``)
    ran_in: tuple[int, int] | None = None


@dataclass(eq=False, slots=True)
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
    batching: bool = field(init=False)  # a request of a BATCHSIZE model that may batch
    signature: Signature = field(init=False)
    size: int = field(init=False)  # this request's share of a batch: its inputs' first dimension
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        # only a request that may batch is sized and signed (the common job is not)
        batches = self.run is None and self.meta is not None and self.meta.batchsize > 0
        self.signature = signature_of(self.inputs) if batches else None
        self.batching = self.signature is not None
        self.size = int(self.inputs[0].shape[0]) if self.batching else 1
        self.nbytes = sum(x.nbytes for x in self.inputs)


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


GroupKey = tuple[str, str, Signature]


@dataclass(slots=True)
class _Version:
    """What the batcher knows of the version of a model whose requests wait."""

    added: str  # the digest of its request added last
    check_at: float  # when its stored version is to be read (monotonic)
    stored: str | None = None  # the stored digest as last read ("": no model; None: not read)


class Batcher:
    """Units waiting to run: batching models' requests grouped by model key, digest and input
    signature; every other unit in one first-in first-out line of its own (a batch of one each,
    ready at once: the common job costs the batcher no grouping)."""

    def __init__(self, max_waiting: int = 0, max_waiting_bytes: int = 0) -> None:
        self._groups: dict[GroupKey, list[Member]] = {}
        self._singles: deque[Member] = deque()
        self._running: dict[tuple[str, str], int] = {}  # model version -> batches running
        # model version -> (until when a partial batch waits, for how many rows) (``finished``)
        self._held: dict[tuple[str, str], tuple[float, int]] = {}
        self._versions: dict[str, _Version] = {}  # model key -> its version, while a group waits
        self.max_waiting = max_waiting  # 0: no bound
        self.max_waiting_bytes = max_waiting_bytes
        self._count = 0
        self._bytes = 0
        self._deadlines = 0  # members with a TIMEOUT of their own

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def add(self, member: Member) -> None:
        if member.batching:
            assert member.meta is not None
            model, digest = member.model_key, member.meta.digest
            self._groups.setdefault((model, digest, member.signature), []).append(member)
            version = self._versions.get(model)
            if version is None:  # its version is read if it waits VERSION_CHECK_S
                self._versions[model] = _Version(digest, member.arrived + VERSION_CHECK_S)
            elif digest != version.added or version.stored not in (None, digest):
                # a version other than the one seen or read last: which is stored? read it now
                self._versions[model] = _Version(digest, member.arrived)
        else:
            self._singles.append(member)
        self._count += 1
        self._bytes += member.nbytes
        self._deadlines += member.deadline is not None

    def full_units(self) -> int:
        """Runs the waiting members fill: one per single unit, one per BATCHSIZE rows of a
        group (a batch still forming is not one: reading more only fills it)."""
        units = len(self._singles)
        for group in self._groups.values():
            meta = group[0].meta
            assert meta is not None
            units += self._rows(group) // meta.batchsize
        return units

    def waiting(self, model_key: str) -> int:
        """Requests' total size waiting for batches of one model (its every version)."""
        return sum(m.size for key, g in self._groups.items() if key[0] == model_key for m in g)

    def batchsize(self, model_key: str) -> int:
        """BATCHSIZE of a model waiting here (0: none of its requests waits)."""
        for key, group in self._groups.items():
            if key[0] == model_key and group[0].meta is not None:
                return group[0].meta.batchsize
        return 0

    def held_entry_ids(self) -> list[str]:
        """Stream entries held here (pending in the consumer group until their batch completes)."""
        return [m.entry_id for m in self.members() if m.entry_id]

    def members(self) -> list[Member]:
        return [*self._singles, *(m for g in self._groups.values() for m in g)]

    def expired(self, now: float) -> list[Member]:
        """Remove and return members whose own TIMEOUT passed while they waited."""
        if not self._deadlines:
            return []
        gone = [m for m in self._singles if m.deadline is not None and m.deadline <= now]
        if gone:
            self._singles = deque(m for m in self._singles if m not in gone)
        for key in list(self._groups):
            group = self._groups[key]
            if all(m.deadline is None or m.deadline > now for m in group):
                continue
            keep = [m for m in group if m.deadline is None or m.deadline > now]
            gone.extend(m for m in group if m not in keep)
            self._set(key, keep)
        for member in gone:
            self._forget(member)
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
        waiting); an ``overfull`` batcher forces its oldest group. A group of a version no longer
        stored (``stored``) starts at once: no partner can join it any more.
        """
        if self._held:  # holds that lapsed (``finished``)
            self._held = {k: v for k, v in self._held.items() if v[0] > now}
        single = self._singles[0] if self._singles else None
        ready: tuple[float, GroupKey, list[Member]] | None = None
        oldest: tuple[float, GroupKey, list[Member]] | None = None
        for key, group in self._groups.items():
            head = group[0]
            if oldest is None or head.arrived < oldest[0]:
                oldest = (head.arrived, key, group)
            if ready is not None and head.arrived >= ready[0]:
                continue
            chosen = self._choose(group)
            full = self._is_full(chosen, group)
            if (
                force
                or self._superseded(key)
                or full
                or (self._is_ready(chosen, now) and not self._busy(key[:2], chosen))
            ):
                ready = (head.arrived, key, chosen)
        if ready is None and oldest is not None and self.overfull():
            ready = (oldest[0], oldest[1], self._choose(oldest[2]))
        if single is not None and (ready is None or single.arrived <= ready[0]):
            self._singles.popleft()
            self._forget(single)
            return Batch([single])
        if ready is None:
            return None
        _, key, chosen = ready
        self._set(key, [m for m in self._groups[key] if m not in chosen])
        for member in chosen:
            self._forget(member)
        batch = Batch(chosen)
        self._running[batch.model] = self._running.get(batch.model, 0) + 1
        self._held.pop(batch.model, None)
        return batch

    def to_check(self, now: float) -> list[str]:
        """Models whose stored version is to be read now (see the module docstring): the owner
        reads it and tells ``stored``."""
        keys = [key for key, version in self._versions.items() if version.check_at <= now]
        for key in keys:
            self._versions[key].check_at = now + VERSION_CHECK_S
        return keys

    def stored(self, model_key: str, digest: str) -> None:
        """The digest stored at ``model_key`` ("": no model there): its groups of another
        version run at once (``take``)."""
        version = self._versions.get(model_key)
        if version is not None:
            version.stored = digest

    def _superseded(self, key: GroupKey) -> bool:
        """The group's model version is no longer the stored one: no partner can join it."""
        stored = self._versions[key[0]].stored
        return stored is not None and stored != key[1]

    def take_single(self, wanted: Callable[[str], bool]) -> Batch | None:
        """The oldest unit that does not batch, as a batch of one, if ``wanted(its model or
        script key)``, and unless a unit waiting has a TIMEOUT of its own (``expired`` must see
        those first); None otherwise."""
        if not self._singles or self._deadlines or not wanted(self._singles[0].model_key):
            return None
        single = self._singles.popleft()
        self._forget(single)
        return Batch([single])

    def finished(self, batch: Batch, now: float = 0.0, hold_s: float = 0.0) -> None:
        """A batch ``take`` returned has run and its requests are answered: its model may start
        another partial batch, though for up to ``hold_s`` after ``now`` only one that holds as
        many rows as were waiting plus those just answered (or BATCHSIZE).

        Why hold: requesters just answered send their next requests while the reply reaches
        them, and a partial batch started at once leaves them behind: closed-loop clients then
        split for good into a large batch and a few stragglers, each run paying the model's
        whole cost (a 2048-wide MLP, 32 clients: 16-18 requests per run, half the throughput
        of full batches). Why at most the model's last run time: running the stragglers on
        their own would take the device that long anyway."""
        if not batch.members[0].batching:
            return
        count = self._running.get(batch.model, 0) - 1
        if count > 0:
            self._running[batch.model] = count
        else:
            self._running.pop(batch.model, None)
        if hold_s > 0:
            meta = batch.members[0].meta
            assert meta is not None
            waiting = sum(
                self._rows(g) for key, g in self._groups.items() if key[:2] == batch.model
            )
            self._held[batch.model] = (now + hold_s, min(meta.batchsize, waiting + batch.total))

    def _busy(self, model: tuple[str, str], chosen: list[Member]) -> bool:
        """A batch of ``model`` runs, or it holds for the requesters just answered
        (``finished``) and ``chosen`` is smaller than what they would make."""
        if self._running.get(model):
            return True
        held = self._held.get(model)
        return held is not None and self._rows(chosen) < held[1]

    @staticmethod
    def _rows(members: list[Member]) -> int:
        return sum(m.size for m in members)

    def next_wakeup(self) -> float | None:
        """When a waiting group's MINBATCHTIMEOUT, its model's hold (``finished``) or a member's
        TIMEOUT expires (monotonic)."""
        times = [self._held[key[:2]][0] for key in self._groups if key[:2] in self._held]
        for group in self._groups.values():
            meta = group[0].meta
            if meta is not None and meta.minbatchsize and meta.minbatchtimeout:
                times.append(group[0].arrived + meta.minbatchtimeout / 1000)
        if self._deadlines:
            times.extend(m.deadline for m in self.members() if m.deadline is not None)
        return min(times) if times else None

    def _forget(self, member: Member) -> None:
        """A member left the batcher (taken, or expired)."""
        self._count -= 1
        self._bytes -= member.nbytes
        self._deadlines -= member.deadline is not None

    def _set(self, key: GroupKey, members: list[Member]) -> None:
        if members:
            self._groups[key] = members
        else:
            del self._groups[key]
            if not any(other[0] == key[0] for other in self._groups):
                del self._versions[key[0]]  # none of the model's requests waits

    @staticmethod
    def _is_full(chosen: list[Member], group: list[Member]) -> bool:
        """As full as it gets: BATCHSIZE rows, or requests waiting that no longer fit. Either
        way it runs, short of MINBATCHSIZE or not: what waits behind it can run only after it
        (RedisAI ran such a request with the oldest, beyond BATCHSIZE)."""
        meta = chosen[0].meta
        assert meta is not None
        return len(chosen) < len(group) or Batcher._rows(chosen) >= meta.batchsize

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


# The batch sizes each loaded model has been warmed up at, by input signature; forgotten with the
# model.
_warmed: weakref.WeakKeyDictionary[LoadedModel, dict[Signature, set[int]]] = (
    weakref.WeakKeyDictionary()
)
# Sizes whose zeros take more than this (all inputs together) are warmed up only when a batch
# first pads to them: a BATCHSIZE of millions must not allocate millions of rows up front.
WARM_UP_MAX_BYTES = 256 << 20


def warm_up(model: LoadedModel, member: Member, rows: int) -> None:
    """Before the first batch of this input signature, run once on zeros each batch size the
    model pads to (not a job: nothing is counted, a failure is left for the real run to report);
    a size whose inputs would exceed WARM_UP_MAX_BYTES waits for the first batch of ``rows``
    that needs it."""
    meta = member.meta
    assert meta is not None
    sizes = model.batch_sizes(meta.batchsize)
    if not sizes:
        return
    warmed = _warmed.setdefault(model, {}).setdefault(member.signature, set())
    row_bytes = sum(x.nbytes for x in member.inputs) // max(member.size, 1)
    for size in sizes:
        if size in warmed or (size > rows and size * row_bytes > WARM_UP_MAX_BYTES):
            continue
        warmed.add(size)
        try:
            model.run([_zeros(model, x, size) for x in member.inputs])
        except Exception:  # the real run reports what is wrong with the model (or its memory)
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
    if not head.batching:  # the common job: its inputs as they are, no batch bookkeeping
        return [_run_alone(models, head, head.meta)]
    try:
        with models.model(head.model_key, head.meta) as model:
            results = _run_members(model, members)
        for result in results:
            result.version = model.version
        return results
    except AIWorkerError as exc:  # the model failed to load: it never ran, nothing to count
        return [MemberResult(None, error_text(exc), counted=False) for _ in members]


def _run_members(model: LoadedModel, members: list[Member]) -> list[MemberResult]:
    """Run ``members`` as one batch of ``model``. When the run fails, the two halves run on
    their own, and so on down: one requester's input that makes the model fail (an index out of
    range) fails that request alone, not every request it was batched with. A count mismatch
    or a run past MODEL_EXECUTION_TIMEOUT fails them all: the model, not an input, is at fault."""
    head = members[0]
    assert head.meta is not None
    total = sum(member.size for member in members)
    rows = padded_size(total, model.batch_sizes(head.meta.batchsize))
    warm_up(model, head, rows)
    inputs = _assemble(model, members, rows)
    try:
        outputs, duration_us = run_model(model, inputs, head.meta.backend)
    except AIError as exc:
        if len(members) > 1 and not isinstance(exc, (CountMismatch, RunTimedOut)):
            half = len(members) // 2
            return _run_members(model, members[:half]) + _run_members(model, members[half:])
        counted = not isinstance(exc, CountMismatch)
        ran_in = (total, len(members))
        return [
            MemberResult(None, error_text(exc), counted=counted, ran_in=ran_in) for _ in members
        ]
    ran_in = (total, len(members))
    if len(members) == 1 and rows == total:
        return [MemberResult(outputs, duration_us=duration_us, ran_in=ran_in)]
    if any(np.ndim(out) == 0 or out.shape[0] != rows for out in outputs):
        error = messages.MODEL_BATCH_SIZE_MISMATCH
        return [MemberResult(None, error, duration_us, ran_in=ran_in) for _ in members]
    results: list[MemberResult] = []
    offset = 0
    for member in members:
        mine = [out[offset : offset + member.size] for out in outputs]
        results.append(MemberResult(mine, duration_us=duration_us, ran_in=ran_in))
        offset += member.size
    return results


def _run_alone(models: Models, member: Member, meta: ModelMeta) -> MemberResult:
    try:
        with models.model(member.model_key, meta) as model:
            try:
                outputs, duration_us = run_model(model, member.inputs, meta.backend)
            except AIError as exc:
                return MemberResult(
                    None, error_text(exc), counted=not isinstance(exc, CountMismatch)
                )
    except AIWorkerError as exc:  # the model failed to load: it never ran, nothing to count
        return MemberResult(None, error_text(exc), counted=False)
    return MemberResult(outputs, duration_us=duration_us, version=model.version)
