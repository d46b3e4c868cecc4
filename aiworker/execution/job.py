"""One job in a worker: every request runs as a DAG of ops, a single MODELEXECUTE or SCRIPTEXECUTE
being a DAG of one op that LOADs its inputs and PERSISTs its outputs.

A ``JobRun`` is a small state machine, driven by whoever finishes one of its ops: ``start`` and
``op_done`` run the tensor ops that became ready right away (TENSORSET, TENSORGET: no device work)
and return the model and script ops that became ready as ``Member`` units, which the caller puts in
the lane of their device (``aiworker.worker.lane``). No thread waits for a job: an op waiting for
its batch partners holds nothing but its place in the batcher. When the last op ended, ``outcome``
tells what the job produced; nothing here writes to Redis (the completion applies the Outcome).

Each kind of op is a class that knows its own part (``prepare`` against the job's read, ``begin``,
``finish``): the job itself never asks which kind an op is. Ops read the exact tensor versions
they were written against (a later TENSORSET of the same name does not disturb an earlier reader).
Ops run in order per device, as RedisAI ran a DAG's ops in order; ops on different devices run at
the same time. When an op fails, ops that have not started answer ``NA`` and nothing is persisted.
A TIMEOUT is checked before each op starts: once it passed, the job answers ``timedout`` and
nothing is persisted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from aiworker.backends.base import ScriptContext
from aiworker.devices import parse_device
from aiworker.execution import limits
from aiworker.execution.batching import Batch, Member, MemberResult
from aiworker.execution.models import Models, check_outputs, samples_of
from aiworker.execution.outcome import Outcome, StatsRecord, error_text
from aiworker.execution.scripts import call_script
from aiworker.execution.state import Snapshot
from aiworker.protocol import messages, replies
from aiworker.protocol.errors import AIError, AIWorkerError, CountMismatch
from aiworker.protocol.requests import DagOp, Job, ModelExecute, ScriptExecute, TensorGet, TensorSet
from aiworker.storage.model import ModelMeta
from aiworker.storage.script import ScriptMeta

LOADED = -1  # producer index of a LOADed tensor


@dataclass(frozen=True)
class Runtime:
    """What ops need from their worker: its models, limits, and what a script may call."""

    models: Models
    bounds: limits.Limits
    # the ScriptContext of a script op (Redis on its declared KEYS, stored models)
    script_context: Callable[[ScriptExecute], ScriptContext | None]


@dataclass(eq=False, slots=True)
class Op:
    """One op of a job; subclasses per kind (``make_op``)."""

    index: int
    request: Any
    reads: list[tuple[str, int]]  # (name, producer index) of each input
    device: str = ""  # device queue of a model or script op, "" for tensor ops
    after: int = -1  # the op before it in its device's order (-1: none)
    result: Any = replies.NA
    started: bool = False
    done: bool = False
    ok: bool = False

    def prepare(self, snapshot: Snapshot, bounds: limits.Limits) -> None:
        """Check the op against the job's read (its model's or script's metadata, sizes);
        RedisAI's error raised when the job cannot start."""

    def check(self, single: bool) -> None:
        """What a single MODELEXECUTE or SCRIPTEXECUTE checks before it runs (an error counted
        against its model or script)."""

    def begin(self, run: JobRun, inputs: list[np.ndarray]) -> Member | None:
        """Start the op: a tensor op runs now (None); a model or script op is a unit for its
        device's lane."""
        raise NotImplementedError

    def finish(self, run: JobRun, result: MemberResult, member: Member, batch: Batch) -> None:
        """Take a model or script op's result (its outputs, statistics); raises its error."""
        raise NotImplementedError

    def stats_key(self) -> str:
        return ""


class TensorSetOp(Op):
    def prepare(self, snapshot: Snapshot, bounds: limits.Limits) -> None:
        request: TensorSet = self.request
        limits.check_tensor_size(request.key, request.dtype, request.shape, bounds.max_tensor_bytes)
        snapshot.hold(limits.declared_nbytes(request.dtype, request.shape))

    def begin(self, run: JobRun, inputs: list[np.ndarray]) -> Member | None:
        run.store(self, [self.request.array()])
        return None


class TensorGetOp(Op):
    def begin(self, run: JobRun, inputs: list[np.ndarray]) -> Member | None:
        request: TensorGet = self.request
        key = run.spill_key(self.index)
        self.result = replies.encode_tensor(inputs[0], request, key, run.job.fmt)
        if "key" in self.result:
            run.spilled[key] = inputs[0]
        self.ok = True
        return None


class ModelOp(Op):
    meta: ModelMeta

    def stats_key(self) -> str:
        return str(self.request.key)

    def prepare(self, snapshot: Snapshot, bounds: limits.Limits) -> None:
        self.meta = snapshot.model(self.request.key)
        self.device = parse_device(self.meta.device).queue

    def check(self, single: bool) -> None:
        """RedisAI's count checks, before any input is read (``ModelMeta.counts``)."""
        request: ModelExecute = self.request
        inputs, outputs = self.meta.counts()
        if inputs and len(request.inputs) != inputs:
            raise CountMismatch(messages.MODEL_INPUT_COUNT)
        if outputs and len(request.outputs) != outputs:
            raise CountMismatch(messages.MODEL_OUTPUT_COUNT)

    def begin(self, run: JobRun, inputs: list[np.ndarray]) -> Member | None:
        return Member(self.request.key, self.meta, inputs, (run, self), run.entry_id, run.deadline)

    def finish(self, run: JobRun, result: MemberResult, member: Member, batch: Batch) -> None:
        request: ModelExecute = self.request
        if run.single and member.batching:  # the run it got its result from
            size, requests = result.ran_in or (batch.total, len(batch.members))
            run.reply_fields["batch"] = {"size": size, "requests": requests}
        if result.outputs is None:
            if result.counted:
                run.stats.append(StatsRecord(request.key, errors=1))
            raise AIError(result.error)
        try:
            run.one_version(request.key, result.version)
            limit = run.runtime.bounds.max_tensor_bytes
            check_outputs(request.outputs, result.outputs, limit, stored=run.single)
        except AIError:
            run.stats.append(StatsRecord(request.key, errors=1))
            raise
        samples = samples_of(result.outputs, member.size)
        run.stats.append(StatsRecord(request.key, result.duration_us, samples))
        run.duration_us += result.duration_us
        run.store(self, result.outputs)


class ScriptOp(Op):
    meta: ScriptMeta

    def stats_key(self) -> str:
        return str(self.request.key)

    def prepare(self, snapshot: Snapshot, bounds: limits.Limits) -> None:
        self.meta = snapshot.script(self.request.key)
        self.device = parse_device(self.meta.device or "CPU").queue

    def check(self, single: bool) -> None:
        function = self.request.function
        if single and self.meta.entry_points and function not in self.meta.entry_points:
            raise AIError(messages.SCRIPT_FUNCTION_MISSING.format(name=function))

    def begin(self, run: JobRun, inputs: list[np.ndarray]) -> Member | None:
        call = lambda: self._call(run, inputs)  # noqa: E731
        return Member(self.request.key, None, inputs, (run, self), run.entry_id, run.deadline,
                      run=call)  # fmt: skip

    def _call(self, run: JobRun, inputs: list[np.ndarray]) -> MemberResult:
        """The script's run (on a lane thread): its outputs, or its error."""
        request: ScriptExecute = self.request
        try:
            outputs, duration_us, version = call_script(
                run.runtime.models,
                request.key,
                self.meta,
                request.function,
                inputs,
                request.keys,
                request.args,
                len(request.outputs) if run.single else -1,
                request.variadic,
                run.runtime.script_context(request),
            )
        except (AIWorkerError, redis.ResponseError) as exc:  # NOPERM from a script's call ...
            return MemberResult(None, error_text(exc))
        return MemberResult(outputs, duration_us=duration_us, version=version)

    def finish(self, run: JobRun, result: MemberResult, member: Member, batch: Batch) -> None:
        request: ScriptExecute = self.request
        try:
            if result.outputs is None:
                raise AIError(result.error)
            run.one_version(request.key, result.version)
            if len(result.outputs) != len(request.outputs):
                raise AIError(
                    f"Script returned {len(result.outputs)} outputs, expected {len(request.outputs)}"
                )
            for name, array in zip(request.outputs, result.outputs, strict=True):
                limits.check_output(
                    name, array, run.runtime.bounds.max_tensor_bytes, stored=run.single
                )
        except AIWorkerError:
            run.stats.append(StatsRecord(request.key, errors=1))
            raise
        run.stats.append(StatsRecord(request.key, result.duration_us))
        run.duration_us += result.duration_us
        run.store(self, result.outputs)


OP_KINDS: dict[str, type[Op]] = {
    "TENSORSET": TensorSetOp,
    "TENSORGET": TensorGetOp,
    "MODELEXECUTE": ModelOp,
    "SCRIPTEXECUTE": ScriptOp,
}


def make_op(index: int, request: DagOp, reads: list[tuple[str, int]]) -> Op:
    """The op of ``request``, the ``index``-th of its job."""
    return OP_KINDS[request.op](index, request, reads)


@dataclass(eq=False, slots=True)
class JobRun:
    """The state of one job's run (see the module docstring)."""

    job: Job
    ops: list[Op]
    values: dict[tuple[str, int], np.ndarray]
    persist: tuple[str, ...]
    runtime: Runtime
    spill_key: Callable[[int], str]  # where a large TENSORGET result of op i is written
    single: bool = False  # a MODELEXECUTE/SCRIPTEXECUTE: its reply has no per-op results
    deadline: float | None = None  # monotonic time the job's TIMEOUT expires
    stats: list[StatsRecord] = field(default_factory=list)
    spilled: dict[str, np.ndarray] = field(default_factory=dict)
    reply_fields: dict[str, Any] = field(default_factory=dict)
    duration_us: int = 0
    failed: bool = False
    timed_out: bool = False
    running: int = 0  # ops handed out and not yet done
    ticket: Any = None  # what the worker needs to complete it (where its entry came from)
    failed_early: str = ""  # the job could not start (a bug): its error
    held: int = 0  # bytes of its tensors counted against max_job_bytes (``store``)
    versions: dict[str, str] = field(default_factory=dict)  # the version each key ran in
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _unstarted: int = 0  # ops not started yet

    def __post_init__(self) -> None:
        self._unstarted = len(self.ops)
        # Ops run in order per device (tensor ops with the first device's).
        default = next((op.device for op in self.ops if op.device), "")
        last: dict[str, int] = {}
        for op in self.ops:
            device = op.device or default
            op.after = last.get(device, -1)
            last[device] = op.index

    @property
    def entry_id(self) -> str:
        return self.job.entry_id

    @property
    def finished(self) -> bool:
        return self.running == 0 and all(op.done for op in self.ops)

    # driving ----------------------------------------------------------------------------------

    def start(self) -> list[Member]:
        """Run what can run at once; the model and script ops ready to go to their lanes."""
        with self._lock:
            return self._advance()

    def op_done(self, op: Op, result: MemberResult, member: Member, batch: Batch) -> list[Member]:
        """Record a model or script op's result (``member`` of ``batch``); the ops that became
        ready."""
        with self._lock:
            self.running -= 1
            try:
                op.finish(self, result, member, batch)
            except Exception as exc:
                op.result = _error(exc)
            self._ended(op)
            return self._advance() if len(self.ops) > 1 else []

    def op_expired(self, op: Op) -> None:
        """The op's TIMEOUT passed while it waited for its batch: the job times out."""
        with self._lock:
            self.running -= 1
            self.timed_out = True
            op.done = True
            self._advance()  # the ops left answer NA

    def _advance(self) -> list[Member]:
        ready: list[Member] = []
        progress = True
        while progress and self._unstarted:
            progress = False
            for op in self.ops:
                if op.started or (op.after >= 0 and not self.ops[op.after].done):
                    continue
                if not self._produced(op, "done"):
                    continue  # a producer still runs
                op.started = progress = True
                self._unstarted -= 1
                member = self._begin(op)
                if member is None:
                    self._ended(op)
                else:
                    self.running += 1
                    ready.append(member)
        return ready

    def _begin(self, op: Op) -> Member | None:
        if self.failed or self.timed_out:
            return None  # not run: answers NA
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
            return None
        if not self._produced(op, "ok"):
            return None  # its input was never made
        try:
            return op.begin(self, [self.values[read] for read in op.reads])
        except Exception as exc:
            op.result = _error(exc)
            return None

    def _produced(self, op: Op, state: str) -> bool:
        """Whether every op producing an input of ``op`` is ``done`` (or went ``ok``)."""
        for _name, producer in op.reads:
            if producer != LOADED and not getattr(self.ops[producer], state):
                return False
        return True

    def _ended(self, op: Op) -> None:
        op.done = True
        if _is_error(op.result):
            self.failed = True

    def one_version(self, key: str, version: str) -> None:
        """A job runs one version of each model and script: RedisAI's DAG held the ones it
        parsed. A worker's cache hands out the version stored now (a job runs a newer one than
        it read when the model was replaced meanwhile); where that changed between two ops of
        one job, the later op fails rather than mix two versions' results."""
        if version and self.versions.setdefault(key, version) != version:
            raise AIError(messages.REPLACED_DURING_JOB.format(key=key))

    def store(self, op: Op, outputs: Sequence[np.ndarray]) -> None:
        """An op's outputs, as the versions of its output names it made. A model's or script's
        count against max_job_bytes with the job's inputs (``held``); a TENSORSET's were counted
        before the job started."""
        if not isinstance(op, TensorSetOp):
            self.held += sum(limits.nbytes(array) for array in outputs)
            limits.check_job_bytes(self.held, self.runtime.bounds.max_job_bytes)
        for name, array in zip(op.request.writes(), outputs, strict=True):
            self.values[(name, op.index)] = array
        op.result, op.ok = replies.OK, True

    # the result --------------------------------------------------------------------------------

    def outcome(self) -> Outcome:
        """What the finished job produced (the completion writes it)."""
        if self.timed_out:
            return Outcome("timedout", stats=self.stats)
        failed = next((op for op in self.ops if _is_error(op.result)), None)
        if not self.single:
            self.reply_fields["results"] = [op.result for op in self.ops]
        if failed is not None:
            outcome = Outcome.failed(failed.result["error"], self.stats)
            outcome.reply_fields = self.reply_fields
            if not self.single:
                outcome.temp_writes = self.spilled
            return outcome
        if self.single:  # its op's outputs, checked when the op finished
            writes = {name: self.values[(name, 0)] for name in self.persist}
        else:
            try:
                writes = self._persisted()
            except AIWorkerError as exc:
                return Outcome.failed(error_text(exc), self.stats)
        return Outcome(
            "ok",
            writes=writes,
            stats=self.stats,
            duration_us=self.duration_us,  # a DAG's: the sum of its model and script ops'
            reply_fields=self.reply_fields,
            temp_writes=self.spilled,
        )

    def _persisted(self) -> dict[str, np.ndarray]:
        """The last version of each PERSIST key (ops in order), within the output limit."""
        latest = {name: producer for (name, producer) in self.values}
        for op in self.ops:
            latest.update(dict.fromkeys(op.request.writes(), op.index))
        writes = {key: self.values[(key, latest[key])] for key in self.persist}
        for key, array in writes.items():
            limits.check_output(key, array, self.runtime.bounds.max_tensor_bytes)
        return writes


def _error(exc: Exception) -> dict[str, str]:
    """An op's result for its failure: RedisAI's message, or a bug's type too (a bug in an op
    must still answer the job)."""
    if isinstance(exc, AIWorkerError):
        return replies.error_field(error_text(exc))
    return {"error": f"{type(exc).__name__}: {error_text(exc)}"}


def _is_error(result: Any) -> bool:
    return isinstance(result, dict) and "error" in result
