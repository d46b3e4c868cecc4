"""Turns a job whose state has been read into a run: ``prepare`` checks the job against what its
read brought (and decides whether it runs here, or belongs to another device queue) and builds its
``JobRun`` - a DAG, single MODELEXECUTE and SCRIPTEXECUTE included - or its ``VerifyRun`` (a
MODELVERIFY or SCRIPTVERIFY).

Nothing here writes to Redis: the completion step applies the Outcome (outputs, statistics, reply,
acknowledgement) in one atomic step, so a failure anywhere before that leaves no trace but the
error reply. Every failure becomes an Outcome; only a lost connection is raised (the entry then
stays pending and runs again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis

from aiworker.backends.base import LoadedModel, ModelSpec, ScriptContext
from aiworker.devices import parse_device
from aiworker.execution import limits
from aiworker.execution.batching import Batch, Member, MemberResult, run_once
from aiworker.execution.job import LOADED, JobRun, Op, Runtime, make_op
from aiworker.execution.models import SCRIPT_BACKEND, Models, run_model
from aiworker.execution.outcome import Outcome, StatsRecord, error_text
from aiworker.execution.state import MetaCache, Snapshot
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, AIWorkerError, CountMismatch, WrongTypeError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import (
    VERIFY_OPS,
    DagExecute,
    IONames,
    Job,
    ModelVerify,
    ScriptExecute,
    ScriptVerify,
)
from aiworker.storage import model as model_store

RedisCall = Callable[..., Any]


@dataclass(eq=False)
class VerifyRun:
    """A MODELVERIFY or SCRIPTVERIFY: load a blob or compile a script as this worker would, keep
    nothing. One unit of device work."""

    job: Job
    verify: Callable[[ModelVerify | ScriptVerify], MemberResult]
    result: Outcome | None = None
    running: int = 0
    ticket: Any = None  # what the worker needs to complete it
    failed_early: str = ""

    @property
    def entry_id(self) -> str:
        return self.job.entry_id

    @property
    def finished(self) -> bool:
        return self.result is not None

    def start(self) -> list[Member]:
        self.running = 1
        request = cast(ModelVerify | ScriptVerify, self.job.request)
        run = lambda: self.verify(request)  # noqa: E731
        return [Member("", None, [], context=(self, None), entry_id=self.entry_id, run=run)]

    def op_done(self, op: Any, result: MemberResult, member: Member, batch: Batch) -> list[Member]:
        self.running = 0
        fields: dict[str, Any] = {"loaded": True}
        if result.listed is not None:  # what MODELGET META lists for a model without INPUTS
            fields["inputs"], fields["outputs"] = list(result.listed[0]), list(result.listed[1])
        self.result = Outcome("ok", reply_fields=fields)
        if result.outputs is None:
            self.result = Outcome.failed(result.error)
            if result.counted:  # the backend judged the blob: a verdict
                self.result.reply_fields = {"loaded": False}
        return []

    def op_expired(self, op: Any) -> None:
        self.running = 0
        self.result = Outcome("timedout")

    def outcome(self) -> Outcome:
        assert self.result is not None
        return self.result


Run = JobRun | VerifyRun


class Executor:
    """Prepares the jobs of one worker process; ``runtime`` is what their ops run with."""

    def __init__(
        self,
        models: Models,
        keys: Keys,
        bounds: limits.Limits,
        redis_call: RedisCall | None = None,
        cluster: bool = False,
        clock: Callable[..., float] = lambda stream=None: time.time(),
    ) -> None:
        """``clock``: Redis's wall clock on this host (``worker.health.RedisClock.time``), which
        a job's TIMEOUT counts by; ``clock(stream)`` is that of the node the job's stream is on
        (Redis Cluster: each master's clock wrote its streams' entry ids)."""
        self.models = models
        self.clock = clock
        self.keys = keys
        self.limits = bounds
        self.redis_call = redis_call
        self.cluster = cluster
        self.runtime = Runtime(models, bounds, self.script_context)
        # Metadata cached per worker; the completion checks the version (on Redis Cluster, in
        # the step that counts the model's statistics, which live in its slot).
        self.metas = MetaCache()

    def prepare(
        self, job: Job, snapshot: Snapshot, queue_device: str, stream: str
    ) -> Run | Outcome:
        """Check a job against its read; an Outcome when it ends here (an error, or another
        device's job to forward). ``stream``: the one it was read from (its TIMEOUT counts by
        that node's clock)."""
        request = job.request
        try:
            if request.op in VERIFY_OPS:
                return VerifyRun(job, self._verify)
            if request.op == "DAGEXECUTE":
                return self._dag(job, cast(DagExecute, request), snapshot, queue_device, stream)
            return self._single(job, request, snapshot, queue_device, stream)
        except AIWorkerError as exc:
            return Outcome.failed(error_text(exc))

    def _single(
        self, job: Job, request: Any, snapshot: Snapshot, queue_device: str, stream: str
    ) -> Run | Outcome:
        """A MODELEXECUTE or SCRIPTEXECUTE: a DAG of one op over its inputs and outputs."""
        op = make_op(0, request, [(name, LOADED) for name in request.inputs])
        op.prepare(snapshot, self.limits)
        if op.device != queue_device.upper():
            return Outcome.forward(op.device)
        try:
            op.check(single=True)
        except CountMismatch as exc:  # refused before it ran, as RedisAI did: nothing counted
            return Outcome.failed(error_text(exc))
        except AIError as exc:
            return Outcome.failed(error_text(exc), [StatsRecord(op.stats_key(), errors=1)])
        arrays = snapshot.tensors(request.inputs)  # each use counts against max_job_bytes
        values = {(name, LOADED): array for name, array in zip(request.inputs, arrays, strict=True)}
        return self._run(job, [op], values, request.outputs, snapshot.held, True, stream)

    def _dag(
        self,
        job: Job,
        dag: DagExecute,
        snapshot: Snapshot,
        queue_device: str,
        stream: str,
    ) -> Run | Outcome:
        """The DAG's ops with their metadata and devices; a missing key fails the whole DAG with
        one error before any op runs, as RedisAI's parser did."""
        latest = dict.fromkeys(dag.load, LOADED)
        ops: list[Op] = []
        for index, request in enumerate(dag.ops):
            op = make_op(index, request, [(name, latest[name]) for name in request.reads()])
            op.prepare(snapshot, self.limits)
            op.check(single=False)
            for name in request.writes():
                latest[name] = index
            ops.append(op)
        for key in dag.persist:  # checked again, atomically, when the completion writes them
            kind, tag = snapshot.kind(key)
            if kind != "none" and tag != codec.KIND_TENSOR:
                raise WrongTypeError()
        devices = [op.device for op in ops if op.device]
        if devices and queue_device.upper() not in devices:
            # like a MODELEXECUTE on the wrong queue: hand it to a queue whose devices it uses
            return Outcome.forward(devices[0])
        values = {(key, LOADED): snapshot.tensor(key) for key in dict.fromkeys(dag.load)}
        return self._run(job, ops, values, dag.persist, snapshot.held, False, stream)

    def _run(
        self,
        job: Job,
        ops: list[Op],
        values: dict[tuple[str, int], np.ndarray],
        persist: tuple[str, ...],
        held: int,
        single: bool,
        stream: str,
    ) -> JobRun:
        """``held``: bytes of the job's tensors counted so far (``Snapshot.held``)."""
        # On Redis Cluster a DAG's spilled results share its reply's slot (one completion step).
        near = job.reply if self.cluster else None
        spill = lambda index: self.keys.dag_output(stream, job.entry_id, index, near)  # noqa: E731
        return JobRun(
            job,
            ops,
            values,
            persist,
            self.runtime,
            spill,
            single,
            self._deadline(job, stream),
            held=held,
        )

    def _deadline(self, job: Job, stream: str | None = None) -> float | None:
        """The job's TIMEOUT deadline (Redis's wall clock, ms: that of ``stream``'s node) on this
        process' monotonic clock."""
        deadline_ms = job.deadline_ms
        if deadline_ms is None:
            return None
        return time.monotonic() + (deadline_ms - self.clock(stream) * 1000) / 1000

    def _verify(self, request: ModelVerify | ScriptVerify) -> MemberResult:
        """Load a blob as a MODELSTORE would have, or compile a script as a SCRIPTSTORE would
        have (both on the CPU: the device is not used), report, close it. ``counted`` says
        whether the backend gave a verdict (False: the framework is not installed here)."""
        name = SCRIPT_BACKEND if isinstance(request, ScriptVerify) else request.backend
        try:
            backend = self.models.registry.get(name)
        except AIWorkerError as exc:
            return MemberResult(None, error_text(exc), counted=False)
        cpu = parse_device("CPU")
        loaded: LoadedModel
        listed: IONames | None = None
        if isinstance(request, ModelVerify):
            try:
                blob = self._staged_blob(request.key)
            except (AIError, redis.RedisError) as exc:  # no verdict on the blob
                return MemberResult(None, error_text(exc), counted=False)
        try:
            if isinstance(request, ScriptVerify):
                loaded = backend.load_script(request.source, request.entry_points, cpu)
            else:
                spec = ModelSpec(
                    key="",
                    device=cpu,
                    inputs=request.inputs,
                    outputs=request.outputs,
                    batchsize=request.batchsize,
                )
                loaded = backend.load(blob, spec)
                listed = loaded.io_names()
            loaded.close()
        except AIError as exc:
            return MemberResult(None, error_text(exc))
        except Exception as exc:  # a blob or source the framework chokes on
            return MemberResult(None, f"{name}: {error_text(exc)}")
        return MemberResult([], listed=listed)

    def _staged_blob(self, key: str) -> bytes:
        """A MODELVERIFY's blob: only from a staging key (which only model owners may write;
        anyone who may XADD could have the worker load a blob sent in an entry), sized before
        it is fetched."""
        if not self.keys.is_verifying(key):
            raise AIError(f"MODELVERIFY loads only blobs staged at {self.keys.verifying('*')}")
        r = self.models.r
        size = int(r.hstrlen(key, "blob"))
        if not size and not r.exists(key):  # (an empty blob is the framework's to judge)
            raise AIError(f"MODELVERIFY: no blob staged at {key} (expired?)")
        if size > self.limits.max_model_bytes:
            raise AIError(
                f"model blob of {size:,} bytes is larger than max_model_bytes "
                f"({self.limits.max_model_bytes:,})"
            )
        return cast(bytes, r.hget(key, "blob") or b"")

    # what scripts may call ----------------------------------------------------------------------

    def script_context(self, request: ScriptExecute) -> ScriptContext:
        """What a script may call: Redis on its declared KEYS, and stored models."""
        return ScriptContext(
            keys=request.keys,
            redis_call=self.redis_call,
            run_model=self.run_stored,
            keyspace=self.keys,
            exact_keys=request.exact_keys,
        )

    def run_stored(self, key: str, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the model stored at ``key`` (a script's ``redisAI.model_execute``)."""
        meta = model_store.read_meta(self.models.r, key)
        with self.models.model(key, meta) as model:
            outputs, _ = run_model(model, tensors, meta.backend)
        return outputs


__all__ = ["Executor", "JobRun", "Run", "VerifyRun", "run_once"]
