"""Runs jobs whose state has been read: ``plan`` checks a job against what its read brought (and
decides whether it runs here, or belongs to another device queue), ``run`` executes it.

Nothing here writes to Redis: the completion step applies the Outcome (outputs, statistics, reply,
acknowledgement) in one atomic script, so a failure anywhere before that leaves no trace but the
error reply. Every failure becomes an Outcome; only a lost connection is raised (the entry then
stays pending and runs again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from aiworker.backends.base import ModelSpec, ScriptContext
from aiworker.devices import parse_device
from aiworker.execution import limits
from aiworker.execution.batching import Batch, Member, MemberResult, run_once
from aiworker.execution.dag import Batching, DagRunner, LanePool
from aiworker.execution.models import Models, check_outputs, run_model, samples_of
from aiworker.execution.outcome import Outcome, StatsRecord, error_text
from aiworker.execution.scripts import call_script
from aiworker.execution.state import MetaCache, Snapshot
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import DagExecute, Job, ModelExecute, ModelVerify, ScriptExecute
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store

RedisCall = Callable[..., Any]


@dataclass
class ModelRun:
    """A MODELEXECUTE ready to run (alone, or as a member of a batch)."""

    job: Job
    meta: model_store.ModelMeta
    inputs: list[np.ndarray]


@dataclass
class ScriptRun:
    job: Job
    meta: script_store.ScriptMeta
    inputs: list[np.ndarray]


@dataclass
class VerifyRun:
    """A MODELVERIFY: load a blob as this worker would, keep nothing."""

    job: Job
    request: ModelVerify


@dataclass
class DagRun:
    job: Job
    snapshot: Snapshot
    ops: list[Any]


Ready = ModelRun | ScriptRun | DagRun | VerifyRun


class Executor:
    """Plans and runs the jobs of one worker process."""

    def __init__(
        self,
        models: Models,
        keys: Keys,
        bounds: limits.Limits,
        lanes: LanePool,
        cluster: bool = False,
    ) -> None:
        self.models = models
        self.keys = keys
        self.limits = bounds
        # On Redis Cluster a DAG's spilled results share its reply's slot (one completion step).
        spill_key = (
            keys.dag_output if cluster else lambda entry_id, i, near: keys.dag_output(entry_id, i)
        )
        self.dags = DagRunner(models, bounds, spill_key, lanes)
        # Metadata cached per worker; the completion checks the version (on Redis Cluster, in
        # the step that counts the model's statistics, which live in its slot).
        self.metas = MetaCache()

    def plan(self, job: Job, snapshot: Snapshot, queue_device: str) -> Ready | Outcome:
        """Check a job against its read; an Outcome when it ends here (an error, or another
        device's job to forward)."""
        request = job.request
        try:
            if isinstance(request, ModelExecute):
                return self._plan_model(job, request, snapshot, queue_device)
            if isinstance(request, ScriptExecute):
                return self._plan_script(job, request, snapshot, queue_device)
            if isinstance(request, DagExecute):
                ops = self.dags.plan(job, snapshot, queue_device)
                return ops if isinstance(ops, Outcome) else DagRun(job, snapshot, ops)
            if isinstance(request, ModelVerify):
                return VerifyRun(job, request)
        except AIWorkerError as exc:
            return Outcome.failed(error_text(exc))
        return Outcome.failed(f"{request.op} is not supported by this worker")

    def _plan_model(
        self, job: Job, request: ModelExecute, snapshot: Snapshot, queue_device: str
    ) -> Ready | Outcome:
        meta = snapshot.model(request.key)
        device = parse_device(meta.device)
        if device.queue != queue_device.upper():
            return Outcome.forward(device.queue)
        errors = [StatsRecord(request.key, errors=1)]
        if meta.inputs and len(request.inputs) != len(meta.inputs):
            return Outcome.failed(messages.MODEL_INPUT_COUNT, errors)
        if meta.outputs and len(request.outputs) != len(meta.outputs):
            return Outcome.failed(messages.MODEL_OUTPUT_COUNT, errors)
        return ModelRun(job, meta, snapshot.tensors(request.inputs))

    def _plan_script(
        self, job: Job, request: ScriptExecute, snapshot: Snapshot, queue_device: str
    ) -> Ready | Outcome:
        meta = snapshot.script(request.key)
        device = parse_device(meta.device)
        if device.queue != queue_device.upper():
            return Outcome.forward(device.queue)
        if meta.entry_points and request.function not in meta.entry_points:
            message = messages.SCRIPT_FUNCTION_MISSING.format(name=request.function)
            return Outcome.failed(message, [StatsRecord(request.key, errors=1)])
        return ScriptRun(job, meta, snapshot.tensors(request.inputs))

    def run(
        self,
        ready: Ready,
        redis_call: RedisCall | None = None,
        batching: Callable[[str], Batching | None] = lambda queue: None,
        fmt: str = "json",
    ) -> Outcome:
        """Run a planned job; ``redis_call`` is what scripts that call Redis use."""
        try:
            if isinstance(ready, ModelRun):
                return self._run_model(ready)
            if isinstance(ready, ScriptRun):
                return self._run_script(ready, redis_call)
            if isinstance(ready, VerifyRun):
                return self._verify(ready.request)
            context = lambda request: self.script_context(request, redis_call)  # noqa: E731
            return self.dags.run(ready.job, ready.snapshot, ready.ops, fmt, batching, context)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # not the job's fault: it stays pending and runs again
        except (AIWorkerError, redis.ResponseError) as exc:  # NOPERM reading a key and the like
            return Outcome.failed(error_text(exc))

    def _run_model(self, ready: ModelRun) -> Outcome:
        request = ready.job.request
        assert isinstance(request, ModelExecute)
        result = run_once(self.models, request.key, ready.meta, ready.inputs)
        return member_outcome(request, result, self.limits)

    def _run_script(self, ready: ScriptRun, redis_call: RedisCall | None) -> Outcome:
        request = ready.job.request
        assert isinstance(request, ScriptExecute)
        errors = [StatsRecord(request.key, errors=1)]
        try:
            outputs, duration_us = call_script(
                self.models,
                request.key,
                ready.meta,
                request.function,
                ready.inputs,
                request.keys,
                request.args,
                len(request.outputs),
                request.variadic,
                self.script_context(request, redis_call),
            )
            for name, array in zip(request.outputs, outputs, strict=True):
                limits.check_output(name, array, self.limits.max_tensor_bytes)
        except AIError as exc:
            return Outcome.failed(error_text(exc), errors)
        writes = dict(zip(request.outputs, outputs, strict=True))
        stats = [StatsRecord(request.key, duration_us)]
        return Outcome("ok", writes=writes, stats=stats, duration_us=duration_us)

    def _verify(self, request: ModelVerify) -> Outcome:
        """Load a blob as a MODELSTORE would have (on the CPU), report, close it."""
        try:
            backend = self.models.registry.get(request.backend)
        except AIWorkerError as exc:  # the framework is not installed here: no verdict
            return Outcome.failed(error_text(exc))
        spec = ModelSpec(
            key="",
            device=parse_device("CPU"),
            inputs=request.inputs,
            outputs=request.outputs,
            batchsize=request.batchsize,
        )
        try:
            backend.load(request.blob, spec).close()
        except AIError as exc:
            outcome = Outcome.failed(error_text(exc))
            outcome.reply_fields = {"loaded": False}
            return outcome
        except Exception as exc:  # a blob the framework chokes on
            outcome = Outcome.failed(f"{request.backend}: {error_text(exc)}")
            outcome.reply_fields = {"loaded": False}
            return outcome
        return Outcome("ok", reply_fields={"loaded": True})

    def script_context(self, request: ScriptExecute, redis_call: RedisCall | None) -> ScriptContext:
        """What a script may call: Redis on its declared KEYS, and stored models."""
        return ScriptContext(keys=request.keys, redis_call=redis_call, run_model=self.run_stored)

    def run_stored(self, key: str, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the model stored at ``key`` (a script's ``redisAI.model_execute``)."""
        meta = model_store.read_meta(self.models.r, key)
        with self.models.model(key, meta) as model:
            outputs, _ = run_model(model, tensors, meta.backend)
        return outputs


def member_outcome(
    request: ModelExecute,
    result: MemberResult,
    bounds: limits.Limits,
    batch: Batch | None = None,
    member: Member | None = None,
) -> Outcome:
    """The Outcome of a MODELEXECUTE that ran alone or as one member of ``batch``."""
    shared = {"batch": {"size": batch.total, "requests": len(batch.members)}} if batch else {}
    errors = [StatsRecord(request.key, errors=1)] if result.counted else []
    if result.outputs is None:
        outcome = Outcome.failed(result.error, errors)
        outcome.reply_fields = shared
        return outcome
    try:
        check_outputs(request.outputs, result.outputs, bounds.max_tensor_bytes)
    except AIError as exc:
        return Outcome.failed(error_text(exc), errors)
    samples = samples_of(result.outputs, member.size if member else 1)
    return Outcome(
        "ok",
        writes=dict(zip(request.outputs, result.outputs, strict=True)),
        stats=[StatsRecord(request.key, result.duration_us, samples)],
        duration_us=result.duration_us,
        reply_fields=shared,
    )
