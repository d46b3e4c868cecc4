"""Runs a DAG job (AI.DAGEXECUTE): ops on DAG-local tensors, in one worker process.

The job's read (``state.read``) brought the LOADed tensors and the metadata of every model and
script the ops use, so a missing key fails the whole DAG with one error before any op runs, as
RedisAI's parser did. Each op reads the exact tensor versions it was written against (a later
TENSORSET of the same name does not disturb an earlier reader).

Ops are grouped in lanes by device. A DAG on one device - the common case - runs on the thread that
took it, with no hand-off. Ops on other devices run in parallel on lane threads from a bounded pool
(``LanePool``); when none is free the DAG runs all its ops on its own thread, in order (a DAG's op
order is always a valid order), so DAGs never wait on each other for threads. MODELEXECUTE ops on
models with BATCHSIZE > 0 join the batcher of their device queue when this process serves it.

When an op fails, ops that have not started answer ``NA`` and nothing is persisted; otherwise the
PERSIST keys are written by the DAG's completion. A DAG runs on the devices of the host whose worker
takes it: the client queues it on the device of its first model or script op.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from aiworker.backends.base import ScriptContext
from aiworker.devices import parse_device
from aiworker.execution import limits
from aiworker.execution.batching import Member, MemberResult, run_once
from aiworker.execution.models import Models, check_outputs, samples_of
from aiworker.execution.outcome import Outcome, StatsRecord, error_text
from aiworker.execution.scripts import call_script
from aiworker.execution.state import Snapshot
from aiworker.protocol import messages
from aiworker.protocol import replies as results
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, AIWorkerError, WrongTypeError
from aiworker.protocol.requests import (
    DagExecute,
    Job,
    ModelExecute,
    ScriptExecute,
    TensorGet,
    TensorSet,
)
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store

LOADED = -1  # producer index of a LOADed tensor


class Batching(Protocol):
    """A device queue's batcher, as a DAG op uses it: add the op and wait for its batch's result
    (implemented by the queue's scheduler, which may run batches on the waiting thread)."""

    def run_member(self, member: Member) -> MemberResult: ...


class LanePool:
    """Threads for DAG lanes beyond the first, bounded; a DAG that finds none free runs its lanes
    one after the other on its own thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.Semaphore(size)
        self._pool = ThreadPoolExecutor(max(1, size), thread_name_prefix="aiworker-dag-lane")

    def try_take(self, count: int) -> bool:
        taken = 0
        while taken < count and self._free.acquire(blocking=False):
            taken += 1
        if taken < count:
            for _ in range(taken):
                self._free.release()
            return False
        return True

    def run(self, work: Callable[[], None]) -> Any:
        def lane() -> None:
            try:
                work()
            finally:
                self._free.release()

        return self._pool.submit(lane)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Op:
    index: int
    request: Any
    lane: str  # device queue of a model/script op, "" for tensor ops
    reads: list[tuple[str, int]]  # (name, producer index) of each input
    meta: Any = None  # ModelMeta or ScriptMeta
    # set once the op ended; only when the DAG's lanes run on several threads
    done: threading.Event | None = None
    result: Any = results.NA
    ok: bool = False


@dataclass
class _Run:
    """The state of one DAG run, shared by its lanes."""

    ops: list[_Op]
    values: dict[tuple[str, int], np.ndarray]
    deadline_ms: int | None
    spill_key: Callable[[int], str]
    fmt: str
    batching: Callable[[str], Batching | None]
    context: Callable[[ScriptExecute], ScriptContext | None]
    failed: threading.Event = field(default_factory=threading.Event)
    timed_out: threading.Event = field(default_factory=threading.Event)
    stats: list[StatsRecord] = field(default_factory=list)
    spilled: dict[str, np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class DagRunner:
    """Runs DAG jobs with one process' models; ``batching(queue)`` is the batcher of a device
    queue this process serves, or None."""

    def __init__(
        self,
        models: Models,
        bounds: limits.Limits,
        spill_key: Callable[[str, int, str | None], str],
        lanes: LanePool,
    ) -> None:
        self.models = models
        self.limits = bounds
        self.spill_key = spill_key
        self.lanes = lanes

    def plan(self, job: Job, snapshot: Snapshot, queue_device: str) -> list[_Op] | Outcome:
        """The DAG's ops with their metadata and lanes; an Outcome when it ends before running."""
        dag = job.request
        assert isinstance(dag, DagExecute)
        latest = dict.fromkeys(dag.load, LOADED)
        ops: list[_Op] = []
        for index, request in enumerate(dag.ops):
            op = _Op(index, request, "", [(name, latest[name]) for name in request.reads()])
            if isinstance(request, ModelExecute):
                meta = snapshot.model(request.key)
                if meta.inputs and len(request.inputs) != len(meta.inputs):
                    raise AIError(messages.MODEL_INPUT_COUNT)
                if meta.outputs and len(request.outputs) != len(meta.outputs):
                    raise AIError(messages.MODEL_OUTPUT_COUNT)
                op.meta, op.lane = meta, parse_device(meta.device).queue
            elif isinstance(request, ScriptExecute):
                op.meta = snapshot.script(request.key)
                op.lane = parse_device(op.meta.device or "CPU").queue
            elif isinstance(request, TensorSet):
                limits.check_tensor_size(
                    request.key, request.dtype, request.shape, self.limits.max_tensor_bytes
                )
            for name in request.writes():
                latest[name] = index
            ops.append(op)
        for key in dag.persist:  # checked again, atomically, when the completion writes them
            kind, tag = snapshot.kind(key)
            if kind != "none" and tag != codec.KIND_TENSOR:
                raise WrongTypeError()
        devices = [op.lane for op in ops if op.lane]
        if devices and queue_device.upper() not in devices:
            # like a MODELEXECUTE on the wrong queue: hand it to a queue whose devices it uses
            return Outcome.forward(devices[0])
        return ops

    def run(
        self,
        job: Job,
        snapshot: Snapshot,
        ops: list[_Op],
        fmt: str,
        batching: Callable[[str], Batching | None],
        context: Callable[[ScriptExecute], ScriptContext | None],
    ) -> Outcome:
        """Run the planned ops; ``context`` gives each script op what it may call."""
        dag = job.request
        assert isinstance(dag, DagExecute)
        values = {(key, LOADED): snapshot.tensor(key) for key in dict.fromkeys(dag.load)}
        spill = lambda i: self.spill_key(job.entry_id, i, job.reply)  # noqa: E731
        run = _Run(ops, values, job.deadline_ms, spill, fmt, batching, context)
        self._execute(run)
        if run.timed_out.is_set():
            return Outcome("timedout", stats=run.stats)
        reply = {"results": [op.result for op in ops]}
        failed = [op for op in ops if isinstance(op.result, dict) and "error" in op.result]
        if failed:
            outcome = Outcome.failed(str(failed[0].result["error"]), run.stats)
            outcome.reply_fields, outcome.temp_writes = reply, run.spilled
            return outcome
        latest = dict.fromkeys(dag.load, LOADED)
        for op in ops:
            latest.update(dict.fromkeys(op.request.writes(), op.index))
        writes = {key: values[(key, latest[key])] for key in dag.persist}
        for key, array in writes.items():
            limits.check_output(key, array, self.limits.max_tensor_bytes)
        return Outcome(
            "ok", writes=writes, stats=run.stats, reply_fields=reply, temp_writes=run.spilled
        )

    # running -------------------------------------------------------------------------------

    def _execute(self, run: _Run) -> None:
        # Tensor ops join the first device's lane: a DAG on one device runs on this thread alone.
        default = next((op.lane for op in run.ops if op.lane), "")
        lanes: dict[str, list[_Op]] = {}
        for op in run.ops:
            lanes.setdefault(op.lane or default, []).append(op)
        if len(lanes) == 1 or not self.lanes.try_take(len(lanes) - 1):
            self._run_lane(run, run.ops)
            return
        for op in run.ops:
            op.done = threading.Event()
        first, *others = list(lanes)
        futures = [self.lanes.run(partial(self._run_lane, run, lanes[lane])) for lane in others]
        self._run_lane(run, lanes[first])
        for future in futures:
            future.result()

    def _run_lane(self, run: _Run, ops: list[_Op]) -> None:
        for op in ops:
            try:
                for _name, producer in op.reads:
                    done = run.ops[producer].done if producer != LOADED else None
                    if done is not None:
                        done.wait()
                if run.failed.is_set() or run.timed_out.is_set():
                    continue  # not run: answers NA
                if run.deadline_ms is not None and time.time() * 1000 > run.deadline_ms:
                    run.timed_out.set()
                    continue
                if any(not run.ops[p].ok for _n, p in op.reads if p != LOADED):
                    continue
                self._run_op(run, op)
            except AIWorkerError as exc:
                op.result = {"error": error_text(exc)}
            except Exception as exc:  # a bug in an op must still answer the DAG
                op.result = {"error": f"{type(exc).__name__}: {error_text(exc)}"}
            finally:
                if isinstance(op.result, dict) and "error" in op.result:
                    run.failed.set()
                if op.done is not None:
                    op.done.set()

    def _run_op(self, run: _Run, op: _Op) -> None:
        request = op.request
        inputs = [run.values[read] for read in op.reads]
        if isinstance(request, TensorSet):
            self._store(run, op, [request.array()])
        elif isinstance(request, TensorGet):
            key = run.spill_key(op.index)
            op.result = results.encode_tensor(inputs[0], request, key, run.fmt)
            if "key" in op.result:
                with run.lock:
                    run.spilled[key] = inputs[0]
            op.ok = True
        elif isinstance(request, ModelExecute):
            self._model_op(run, op, request, inputs)
        elif isinstance(request, ScriptExecute):
            self._script_op(run, op, request, inputs)

    def _store(self, run: _Run, op: _Op, outputs: list[np.ndarray]) -> None:
        with run.lock:
            for name, array in zip(op.request.writes(), outputs, strict=True):
                run.values[(name, op.index)] = array
        op.result, op.ok = results.OK, True

    def _record(self, run: _Run, record: StatsRecord) -> None:
        with run.lock:
            run.stats.append(record)

    def _model_op(
        self,
        run: _Run,
        op: _Op,
        request: ModelExecute,
        inputs: list[Any],
    ) -> None:
        meta: model_store.ModelMeta = op.meta
        batcher = run.batching(op.lane) if meta.batchsize > 0 else None
        member = Member(request.key, meta, list(inputs)) if batcher is not None else None
        if batcher is not None and member is not None:
            result = batcher.run_member(member)
        else:
            result = run_once(self.models, request.key, meta, inputs)
        if result.outputs is None:
            if result.counted:
                self._record(run, StatsRecord(request.key, errors=1))
            raise AIError(result.error)
        try:
            check_outputs(request.outputs, result.outputs, self.limits.max_tensor_bytes)
        except AIError:
            self._record(run, StatsRecord(request.key, errors=1))
            raise
        samples = samples_of(result.outputs, member.size if member is not None else 1)
        self._record(run, StatsRecord(request.key, result.duration_us, samples))
        self._store(run, op, result.outputs)

    def _script_op(self, run: _Run, op: _Op, request: ScriptExecute, inputs: list[Any]) -> None:
        meta: script_store.ScriptMeta = op.meta
        try:
            outputs, duration_us = call_script(
                self.models,
                request.key,
                meta,
                request.function,
                inputs,
                request.keys,
                request.args,
                -1,
                request.variadic,
                run.context(request),
            )
            if len(outputs) != len(request.outputs):
                raise AIError(
                    f"Script returned {len(outputs)} outputs, expected {len(request.outputs)}"
                )
            for name, array in zip(request.outputs, outputs, strict=True):
                limits.check_output(name, array, self.limits.max_tensor_bytes)
        except AIWorkerError:
            self._record(run, StatsRecord(request.key, errors=1))
            raise
        self._record(run, StatsRecord(request.key, duration_us))
        self._store(run, op, outputs)
