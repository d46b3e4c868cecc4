"""Runs a DAG job (AI.DAGEXECUTE): ops on DAG-local tensors, in one worker process.

Before any op runs, one round trip reads the LOADed tensors and the metadata of every model and
script the ops use, so a missing key fails the whole DAG with one error, as RedisAI's parser did.
Each op then reads the exact tensor versions it was written against (a later TENSORSET of the same
name does not disturb an earlier reader). Ops are grouped in lanes by device; lanes run in parallel
threads and each lane runs its ops in order, so ops on different devices overlap. MODELEXECUTE ops
on models with BATCHSIZE > 0 join the batcher of their device queue when this process serves it.

When an op fails, ops that have not started answer ``NA`` and nothing is persisted; otherwise the
PERSIST keys are written with the DAG's completion transaction. Results travel in the reply as
described in ``aiworker.protocol.replies``. A DAG runs on the devices of the host whose worker takes it:
the client queues it on the device of its first model or script op.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import redis

from aiworker.devices import parse_device
from aiworker.execution.batching import Batch, Member, MemberResult, run_batch
from aiworker.execution.executor import Executor, Outcome, StatsRecord
from aiworker.parser.dag import op_inputs, op_outputs
from aiworker.protocol import messages
from aiworker.protocol import replies as dag_results
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
from aiworker.storage import tensor as codec
from aiworker.storage import tensor_io

LOADED = -1  # producer index of a LOADed tensor


class Batching(Protocol):
    """A device queue's batcher, as a DAG op uses it (``dispatch.QueueRuntime``)."""

    def run_member(self, member: Member) -> MemberResult: ...


@dataclass
class _Op:
    index: int
    request: Any
    lane: str  # device queue of a model/script op, "" for tensor ops
    reads: list[tuple[str, int]]  # (name, producer index) of each input
    meta: model_store.ModelMeta | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = dag_results.NA
    ok: bool = False


@dataclass
class _Run:
    """The state of one DAG run, shared by its lanes."""

    ops: list[_Op]
    values: dict[tuple[str, int], np.ndarray]
    deadline_ms: int | None
    spill_key: Callable[[int], str]
    failed: threading.Event = field(default_factory=threading.Event)
    timed_out: threading.Event = field(default_factory=threading.Event)
    stats: list[StatsRecord] = field(default_factory=list)
    spilled: dict[str, np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class DagRunner:
    """The executor's DAGEXECUTE handler. ``batching(queue)`` gives the batcher of a device queue
    this process serves, or None."""

    def __init__(
        self, executor: Executor, batching: Callable[[str], Batching | None] | None = None
    ) -> None:
        self.executor = executor
        self.batching = batching or (lambda queue: None)

    def run(self, job: Job, queue_device: str) -> Outcome:
        dag = job.request
        assert isinstance(dag, DagExecute)
        values, metas = self._read_state(dag)
        ops = self._plan(dag, metas)
        devices = [op.lane for op in ops if op.lane]
        if devices and queue_device.upper() not in devices:
            # like a MODELEXECUTE on the wrong queue: hand it to a queue whose devices it uses
            return Outcome("forward", forward_queue=self.executor.keys.queue(devices[0]))
        run = _Run(
            ops,
            values,
            job.deadline_ms,
            lambda i: self.executor.keys.dag_output(job.entry_id, i),
        )
        self._execute(run)
        if run.timed_out.is_set():
            return Outcome("timedout", more_stats=run.stats)
        results = [op.result for op in ops]
        reply = {"results": results}
        failed = [op for op in ops if isinstance(op.result, dict) and "error" in op.result]
        if failed:
            return Outcome(
                "error",
                error=str(failed[0].result["error"]),
                more_stats=run.stats,
                reply_fields=reply,
                temp_writes=run.spilled,
            )
        latest = self._latest(dag, ops)
        writes = {key: values[(key, latest[key])] for key in dag.persist}
        return Outcome(
            "ok",
            writes=writes,
            more_stats=run.stats,
            reply_fields=reply,
            temp_writes=run.spilled,
        )

    # planning ------------------------------------------------------------------------------

    def _read_state(
        self, dag: DagExecute
    ) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, Any]]:
        """LOADed tensors and model/script metadata in one round trip (one snapshot)."""
        from aiworker.execution import scripts

        pipe = self.executor.r.pipeline(transaction=True)
        for key in dag.load:
            pipe.hgetall(key)
        objects = list(
            dict.fromkeys(
                (op.op, op.key) for op in dag.ops if isinstance(op, (ModelExecute, ScriptExecute))
            )
        )
        for kind, key in objects:
            fields = model_store.META_FIELDS if kind == "MODELEXECUTE" else scripts.META_FIELDS
            pipe.hmget(key, list(fields))
        for key in dag.persist:
            pipe.hget(key, "kind")
        replies = pipe.execute(raise_on_error=False)
        loaded = replies[: len(dag.load)]
        values = {
            (key, LOADED): tensor_io.decode_reply(reply)
            for key, reply in zip(dag.load, loaded, strict=True)
        }
        metas: dict[str, Any] = {}
        offset = len(dag.load)
        for (kind, key), reply in zip(objects, replies[offset:], strict=False):
            if kind == "MODELEXECUTE":
                metas[key] = _model_meta(reply)
            else:
                metas["script:" + key] = scripts.script_fields(reply)
        for reply in replies[offset + len(objects) :]:
            if isinstance(reply, redis.ResponseError) or (
                reply is not None and _text(reply) != codec.KIND_TENSOR
            ):
                raise WrongTypeError()  # PERSIST would overwrite a model, script or other key
        return values, metas

    def _plan(self, dag: DagExecute, metas: dict[str, Any]) -> list[_Op]:
        latest = dict.fromkeys(dag.load, LOADED)
        ops: list[_Op] = []
        for index, request in enumerate(dag.ops):
            reads = [(name, latest[name]) for name in op_inputs(request)]
            op = _Op(index, request, "", reads)
            if isinstance(request, ModelExecute):
                meta = metas[request.key]
                if meta.inputs and len(request.inputs) != len(meta.inputs):
                    raise AIError(messages.MODEL_INPUT_COUNT)
                if meta.outputs and len(request.outputs) != len(meta.outputs):
                    raise AIError(messages.MODEL_OUTPUT_COUNT)
                op.meta, op.lane = meta, parse_device(meta.device).queue
            elif isinstance(request, ScriptExecute):
                device = metas["script:" + request.key]["device"] or "CPU"
                op.lane = parse_device(device).queue
            for name in op_outputs(request):
                latest[name] = index
            ops.append(op)
        return ops

    @staticmethod
    def _latest(dag: DagExecute, ops: list[_Op]) -> dict[str, int]:
        latest = dict.fromkeys(dag.load, LOADED)
        for op in ops:
            for name in op_outputs(op.request):
                latest[name] = op.index
        return latest

    # running -------------------------------------------------------------------------------

    def _execute(self, run: _Run) -> None:
        # Local ops (TENSORSET/TENSORGET) join the first device's lane: a DAG on one device then
        # runs on this thread alone, with no thread started for it.
        default = next((op.lane for op in run.ops if op.lane), "")
        lanes: dict[str, list[_Op]] = {}
        for op in run.ops:
            lanes.setdefault(op.lane or default, []).append(op)
        first, *others = list(lanes)
        threads = [
            threading.Thread(target=self._run_lane, args=(run, lanes[lane]), daemon=True)
            for lane in others
        ]
        for thread in threads:
            thread.start()
        self._run_lane(run, lanes[first])
        for thread in threads:
            thread.join()

    def _run_lane(self, run: _Run, ops: list[_Op]) -> None:
        for op in ops:
            try:
                for _name, producer in op.reads:
                    if producer != LOADED:
                        run.ops[producer].done.wait()
                if run.failed.is_set() or run.timed_out.is_set():
                    continue  # not run: answers NA
                if run.deadline_ms is not None and time.time() * 1000 > run.deadline_ms:
                    run.timed_out.set()
                    continue
                if any(not run.ops[p].ok for _n, p in op.reads if p != LOADED):
                    continue
                self._run_op(run, op)
            except AIWorkerError as exc:
                op.result = {"error": _error_text(exc)}
            except Exception as exc:  # a bug in an op must still answer the DAG
                op.result = {"error": f"{type(exc).__name__}: {_error_text(exc)}"}
            finally:
                if isinstance(op.result, dict) and "error" in op.result:
                    run.failed.set()
                op.done.set()

    def _run_op(self, run: _Run, op: _Op) -> None:
        request = op.request
        inputs = [run.values[read] for read in op.reads]
        if isinstance(request, TensorSet):
            self._store(run, op, [request.array()])
        elif isinstance(request, TensorGet):
            key = run.spill_key(op.index)
            op.result = dag_results.encode_tensor(inputs[0], request, key)
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
            for name, array in zip(op_outputs(op.request), outputs, strict=True):
                run.values[(name, op.index)] = array
        op.result, op.ok = dag_results.OK, True

    def _record(self, run: _Run, record: StatsRecord) -> None:
        with run.lock:
            run.stats.append(record)

    def _model_op(self, run: _Run, op: _Op, request: ModelExecute, inputs: list[Any]) -> None:
        assert op.meta is not None
        member = Member(request.key, op.meta, list(inputs))
        batching = self.batching(op.lane) if op.meta.batchsize > 0 else None
        if batching is not None:
            result = batching.run_member(member)
        else:
            result = run_batch(self.executor, Batch([member]))[0]
        if result.outputs is None:
            if result.counted:
                self._record(run, StatsRecord(request.key, errors=1))
            raise AIError(result.error)
        if len(result.outputs) != len(request.outputs):
            self._record(run, StatsRecord(request.key, errors=1))
            raise AIError(messages.MODEL_OUTPUT_COUNT)
        first = result.outputs[0] if result.outputs else None
        samples = member.size if first is None or np.ndim(first) == 0 else int(first.shape[0])
        self._record(run, StatsRecord(request.key, result.duration_us, samples))
        self._store(run, op, result.outputs)

    def _script_op(self, run: _Run, op: _Op, request: ScriptExecute, inputs: list[Any]) -> None:
        from aiworker.execution.scripts import run_script

        started = time.perf_counter()
        try:
            outputs = run_script(
                self.executor,
                request.key,
                request.function,
                inputs,
                request.keys,
                request.args,
                request.variadic,
            )
            if len(outputs) != len(request.outputs):
                raise AIError(
                    f"Script returned {len(outputs)} outputs, expected {len(request.outputs)}"
                )
        except AIWorkerError:
            self._record(run, StatsRecord(request.key, errors=1))
            raise
        duration_us = int((time.perf_counter() - started) * 1_000_000)
        self._record(run, StatsRecord(request.key, duration_us))
        self._store(run, op, outputs)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _model_meta(reply: Any) -> model_store.ModelMeta:
    if isinstance(reply, redis.ResponseError):
        raise WrongTypeError()
    if all(v is None for v in reply):
        raise AIError(messages.MODEL_EMPTY)
    return model_store.meta_from_fields(reply)
