"""One job in a worker: every request runs as a DAG of ops, a single MODELEXECUTE or SCRIPTEXECUTE
being a DAG of one op that LOADs its inputs and PERSISTs its outputs.

A ``JobRun`` is a small state machine, driven by whoever finishes one of its ops: ``start`` and
``op_done`` run the tensor ops that became ready right away (TENSORSET, TENSORGET: no device work)
and return the model and script ops that became ready as ``Member`` units, which the caller puts in
the lane of their device (``aiworker.worker.lane``). No thread waits for a job: an op waiting for
its batch partners holds nothing but its place in the batcher. When the last op ended, ``outcome``
tells what the job produced; nothing here writes to Redis (the completion applies the Outcome).

Ops read the exact tensor versions they were written against (a later TENSORSET of the same name
does not disturb an earlier reader); independent ops may run at the same time. When an op fails,
ops that have not started answer ``NA`` and nothing is persisted. A DAG's TIMEOUT is checked
before each op starts: once it passed, the job answers ``timedout`` and nothing is persisted.
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
from aiworker.execution import limits
from aiworker.execution.batching import Batch, Member, MemberResult
from aiworker.execution.models import Models, check_outputs, samples_of
from aiworker.execution.outcome import Outcome, StatsRecord, error_text
from aiworker.execution.scripts import call_script
from aiworker.protocol import replies
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.protocol.requests import (
    DagOp,
    Job,
    ModelExecute,
    ScriptExecute,
    TensorGet,
    TensorSet,
)
from aiworker.storage.model import ModelMeta
from aiworker.storage.script import ScriptMeta

LOADED = -1  # producer index of a LOADed tensor


@dataclass(eq=False)
class Op:
    index: int
    request: DagOp
    device: str  # device queue of a model or script op, "" for tensor ops
    reads: list[tuple[str, int]]  # (name, producer index) of each input
    meta: ModelMeta | ScriptMeta | None = None
    after: int = -1  # the op before it in its device's order (-1: none)
    result: Any = replies.NA
    started: bool = False
    done: bool = False
    ok: bool = False


@dataclass(frozen=True)
class Runtime:
    """What ops need from their worker: its models, limits, and what a script may call."""

    models: Models
    bounds: limits.Limits
    # the ScriptContext of a script op (Redis on its declared KEYS, stored models)
    script_context: Callable[[ScriptExecute], ScriptContext | None]


@dataclass(eq=False)
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
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # Ops run in order per device (tensor ops with the first device's), as RedisAI ran a
        # DAG's ops in order; ops on different devices run at the same time.
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
                if isinstance(op.request, ModelExecute):
                    self._model_done(op, op.request, result, member, batch)
                else:
                    self._script_done(op, result)
            except AIWorkerError as exc:
                op.result = {"error": error_text(exc)}
            except Exception as exc:  # a bug in an op must still answer the job
                op.result = {"error": f"{type(exc).__name__}: {error_text(exc)}"}
            self._ended(op)
            return self._advance()

    def _advance(self) -> list[Member]:
        ready: list[Member] = []
        progress = True
        while progress:
            progress = False
            for op in self.ops:
                if op.started or (op.after >= 0 and not self.ops[op.after].done):
                    continue
                if any(not self.ops[p].done for _name, p in op.reads if p != LOADED):
                    continue  # a producer still runs
                op.started = True
                progress = True
                if self.failed or self.timed_out:
                    op.done = True  # not run: answers NA
                    continue
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.timed_out = True
                    op.done = True
                    continue
                if any(not self.ops[p].ok for _name, p in op.reads if p != LOADED):
                    op.done = True  # its input was never made
                    continue
                try:
                    member = self._begin(op)
                except AIWorkerError as exc:
                    op.result = {"error": error_text(exc)}
                    member = None
                except Exception as exc:  # a bug in an op must still answer the job
                    op.result = {"error": f"{type(exc).__name__}: {error_text(exc)}"}
                    member = None
                if member is None:
                    self._ended(op)
                else:
                    self.running += 1
                    ready.append(member)
        return ready

    def _ended(self, op: Op) -> None:
        op.done = True
        if isinstance(op.result, dict) and "error" in op.result:
            self.failed = True

    def _begin(self, op: Op) -> Member | None:
        """Run a tensor op now; a model or script op becomes a unit for its lane."""
        request = op.request
        inputs = [self.values[read] for read in op.reads]
        if isinstance(request, TensorSet):
            self._store(op, [request.array()])
            return None
        if isinstance(request, TensorGet):
            key = self.spill_key(op.index)
            op.result = replies.encode_tensor(inputs[0], request, key, self.job.fmt)
            if "key" in op.result:
                self.spilled[key] = inputs[0]
            op.ok = True
            return None
        if isinstance(request, ModelExecute):
            assert isinstance(op.meta, ModelMeta)
            return Member(
                request.key,
                op.meta,
                inputs,
                context=(self, op),
                entry_id=self.entry_id,
                deadline=self.deadline,
            )
        assert isinstance(request, ScriptExecute) and isinstance(op.meta, ScriptMeta)
        run = lambda: self._call_script(op, request, inputs)  # noqa: E731
        return Member(request.key, None, inputs, (self, op), self.entry_id, self.deadline, run=run)

    def _store(self, op: Op, outputs: Sequence[np.ndarray]) -> None:
        for name, array in zip(op.request.writes(), outputs, strict=True):
            self.values[(name, op.index)] = array
        op.result, op.ok = replies.OK, True

    # model and script ops -------------------------------------------------------------------------

    def op_expired(self, op: Op) -> None:
        """The op's TIMEOUT passed while it waited for its batch: the job times out."""
        with self._lock:
            self.running -= 1
            self.timed_out = True
            op.done = True
            self._advance()  # the ops left answer NA

    def _model_done(
        self, op: Op, request: ModelExecute, result: MemberResult, member: Member, batch: Batch
    ) -> None:
        if self.single and member.batching:
            self.reply_fields["batch"] = {"size": batch.total, "requests": len(batch.members)}
        if result.outputs is None:
            if result.counted:
                self.stats.append(StatsRecord(request.key, errors=1))
            raise AIError(result.error)
        try:
            check_outputs(request.outputs, result.outputs, self.runtime.bounds.max_tensor_bytes)
        except AIError:
            self.stats.append(StatsRecord(request.key, errors=1))
            raise
        samples = samples_of(result.outputs, member.size)
        self.stats.append(StatsRecord(request.key, result.duration_us, samples))
        self.duration_us += result.duration_us
        self._store(op, result.outputs)

    def _call_script(
        self, op: Op, request: ScriptExecute, inputs: list[np.ndarray]
    ) -> MemberResult:
        """A script op's run (on a lane thread): its outputs, or its error."""
        assert isinstance(op.meta, ScriptMeta)
        try:
            outputs, duration_us = call_script(
                self.runtime.models,
                request.key,
                op.meta,
                request.function,
                inputs,
                request.keys,
                request.args,
                len(request.outputs) if self.single else -1,
                request.variadic,
                self.runtime.script_context(request),
            )
        except (AIWorkerError, redis.ResponseError) as exc:  # NOPERM from a script's call ...
            return MemberResult(None, error_text(exc))
        return MemberResult(outputs, duration_us=duration_us)

    def _script_done(self, op: Op, result: MemberResult) -> None:
        request = op.request
        assert isinstance(request, ScriptExecute)
        try:
            if result.outputs is None:
                raise AIError(result.error)
            if len(result.outputs) != len(request.outputs):
                raise AIError(
                    f"Script returned {len(result.outputs)} outputs, expected {len(request.outputs)}"
                )
            for name, array in zip(request.outputs, result.outputs, strict=True):
                limits.check_output(name, array, self.runtime.bounds.max_tensor_bytes)
        except AIWorkerError:
            self.stats.append(StatsRecord(request.key, errors=1))
            raise
        self.stats.append(StatsRecord(request.key, result.duration_us))
        self.duration_us += result.duration_us
        self._store(op, result.outputs)

    # the result --------------------------------------------------------------------------------

    def outcome(self) -> Outcome:
        """What the finished job produced (the completion writes it)."""
        if self.timed_out:
            return Outcome("timedout", stats=self.stats)
        failed = next((op for op in self.ops if isinstance(op.result, dict) and "error" in op.result),
                      None)  # fmt: skip
        if self.single:
            if failed is not None:
                outcome = Outcome.failed(str(failed.result["error"]), self.stats)
                outcome.reply_fields = self.reply_fields
                return outcome
        else:
            self.reply_fields["results"] = [op.result for op in self.ops]
            if failed is not None:
                outcome = Outcome.failed(str(failed.result["error"]), self.stats)
                outcome.reply_fields, outcome.temp_writes = self.reply_fields, self.spilled
                return outcome
        latest = {name: producer for (name, producer) in self.values}
        for op in self.ops:  # the last version of each name (ops in order)
            latest.update(dict.fromkeys(op.request.writes(), op.index))
        writes = {key: self.values[(key, latest[key])] for key in self.persist}
        try:
            for key, array in writes.items():
                limits.check_output(key, array, self.runtime.bounds.max_tensor_bytes)
        except AIWorkerError as exc:
            return Outcome.failed(error_text(exc), self.stats)
        return Outcome(
            "ok",
            writes=writes,
            stats=self.stats,
            duration_us=self.duration_us if self.single else 0,
            reply_fields=self.reply_fields,
            temp_writes=self.spilled,
        )
