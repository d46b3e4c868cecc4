"""Runs one decoded job: reads its inputs and model version, runs the backend, returns an Outcome.

Nothing here writes to Redis: the worker applies the Outcome (outputs, stats, reply, ack) in one
transaction, so a failure anywhere before that leaves no trace but the error reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from aiworker.backends.base import LoadedModel, ModelSpec, Registry
from aiworker.devices import parse_device
from aiworker.execution import limits
from aiworker.execution.model_cache import ModelCache
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, AIWorkerError, WrongTypeError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import Job, ModelExecute
from aiworker.storage import model as model_store
from aiworker.storage import tensor as codec


@dataclass(frozen=True)
class PreparedModelExecute:
    """A MODELEXECUTE whose model version and inputs have been read."""

    request: ModelExecute
    meta: model_store.ModelMeta
    inputs: list[np.ndarray]


@dataclass(frozen=True)
class StatsRecord:
    """One AI.INFO contribution: a model or script call."""

    key: str
    duration_us: int = 0
    samples: int = 0
    calls: int = 1
    errors: int = 0


@dataclass
class Outcome:
    """What a job produced; applied to Redis by the worker in one transaction."""

    status: str  # "ok" | "error" | "timedout" | "forward"
    error: str = ""
    writes: dict[str, np.ndarray] = field(default_factory=dict)
    stats_key: str | None = None
    duration_us: int = 0
    samples: int = 0
    forward_queue: str = ""
    # DAGs: statistics of every model/script op, extra reply fields (per-op results) and
    # reply-scoped tensors that expire with the reply.
    more_stats: list[StatsRecord] = field(default_factory=list)
    reply_fields: dict[str, Any] = field(default_factory=dict)
    temp_writes: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str, stats_key: str | None = None) -> Outcome:
        return cls("error", error=error, stats_key=stats_key)


def queue_job_reads(pipe: redis.client.Pipeline, request: ModelExecute) -> int:
    """Queue the reads ``prepare_model_execute`` needs on ``pipe``; returns how many replies."""
    pipe.hmget(request.key, list(model_store.META_FIELDS))
    for name in request.inputs:
        pipe.hgetall(name)
    return 1 + len(request.inputs)


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


class Executor:
    """Executes jobs for the queues of one worker process."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        registry: Registry,
        cache: ModelCache,
        max_tensor_bytes: int = 1 << 30,
        max_model_bytes: int = 1 << 31,
    ) -> None:
        self.r = r
        self.keys = keys
        self.registry = registry
        self.cache = cache
        self.max_tensor_bytes = max_tensor_bytes
        self.max_model_bytes = max_model_bytes
        # request op -> handler; each capability (scripts, DAGs) registers its own.
        self.handlers: dict[str, Callable[[Job, str], Outcome]] = {
            "MODELEXECUTE": self._model_execute_job,
        }
        from aiworker.execution.scripts import (
            ScriptRunner,  # here: scripts.py builds on this module
        )

        self.handlers["SCRIPTEXECUTE"] = ScriptRunner(self)

    def execute(self, job: Job, queue_device: str) -> Outcome:
        """Run one job; every failure becomes an error Outcome, never an exception."""
        handler = self.handlers.get(job.request.op)
        if handler is None:
            return Outcome.failed(f"{job.request.op} is not supported by this worker")
        try:
            return handler(job, queue_device)
        except AIWorkerError as exc:
            return Outcome.failed(_error_text(exc))

    def _read_job_state(
        self, request: ModelExecute, replies: list[Any] | None = None
    ) -> tuple[model_store.ModelMeta, list[Any]]:
        """Model metadata and input tensors in one round trip, as one consistent snapshot
        (``replies``: what ``queue_job_reads`` queued, when the caller pipelined several jobs)."""
        if replies is None:
            pipe = self.r.pipeline(transaction=True)
            queue_job_reads(pipe, request)
            replies = pipe.execute(raise_on_error=False)
        meta_reply = replies[0]
        if isinstance(meta_reply, redis.ResponseError):
            raise WrongTypeError()
        if all(v is None for v in meta_reply):
            raise AIError(messages.MODEL_EMPTY)
        return model_store.meta_from_fields(meta_reply), replies[1:]

    def _load(self, key: str, meta: model_store.ModelMeta) -> tuple[str, LoadedModel]:
        """(digest, model) of the version stored now, which may be newer than ``meta``'s."""
        limits.check_model(key, meta, self.max_model_bytes)
        stored_meta, blob = model_store.read_model(self.r, key)
        limits.check_model(key, stored_meta, self.max_model_bytes)
        limits.check_blob(key, stored_meta, blob)
        backend = self.registry.get(stored_meta.backend)
        spec = ModelSpec(
            key=key,
            device=parse_device(stored_meta.device),
            inputs=stored_meta.inputs,
            outputs=stored_meta.outputs,
            batchsize=stored_meta.batchsize,
        )
        try:
            loaded = backend.load(blob, spec)
            loaded.nbytes = loaded.nbytes or len(blob)  # the cache's byte bound needs a size
            return stored_meta.digest, loaded
        except AIError:
            raise
        except Exception as exc:  # a backend bug or a blob it chokes on: this job's error only
            raise AIError(f"{meta.backend}: failed to load model: {_error_text(exc)}") from exc

    def model_for(self, key: str, meta: model_store.ModelMeta) -> LoadedModel:
        def load() -> tuple[str, LoadedModel]:
            try:
                return self._load(key, meta)
            except AIWorkerError as exc:
                if isinstance(exc, AIError):
                    raise
                raise AIError(_error_text(exc)) from exc

        return self.cache.get(key, meta.digest, load)

    def _model_execute_job(self, job: Job, queue_device: str) -> Outcome:
        request = job.request
        assert isinstance(request, ModelExecute)
        prepared = self.prepare_model_execute(request, queue_device)
        if isinstance(prepared, Outcome):
            return prepared
        return self.run_model_execute(prepared)

    def prepare_model_execute(
        self, request: ModelExecute, queue_device: str, replies: list[Any] | None = None
    ) -> PreparedModelExecute | Outcome:
        """Read the model version and decode inputs; an Outcome when the job ends here."""
        meta, input_replies = self._read_job_state(request, replies)
        device = parse_device(meta.device)
        if device.queue != queue_device.upper():
            return Outcome("forward", forward_queue=self.keys.queue(device.queue))
        if meta.inputs and len(request.inputs) != len(meta.inputs):
            return Outcome.failed(messages.MODEL_INPUT_COUNT, request.key)
        if meta.outputs and len(request.outputs) != len(meta.outputs):
            return Outcome.failed(messages.MODEL_OUTPUT_COUNT, request.key)
        inputs = [
            limits.decode_input(name, reply, self.max_tensor_bytes)
            for name, reply in zip(request.inputs, input_replies, strict=True)
        ]
        return PreparedModelExecute(request, meta, inputs)

    def run_model_execute(self, prepared: PreparedModelExecute) -> Outcome:
        """Run a prepared MODELEXECUTE and collect its outputs."""
        request, meta, inputs = prepared.request, prepared.meta, prepared.inputs
        stats_key = request.key
        model = self.model_for(request.key, meta)
        started = time.perf_counter()
        try:
            outputs = model.run(inputs)
        except AIError as exc:
            return Outcome.failed(_error_text(exc), stats_key)
        except Exception as exc:  # the framework raised something unexpected: report, keep serving
            return Outcome.failed(f"{meta.backend}: {_error_text(exc)}", stats_key)
        duration_us = int((time.perf_counter() - started) * 1_000_000)
        if len(outputs) != len(request.outputs):
            return Outcome.failed(messages.MODEL_OUTPUT_COUNT, stats_key)
        writes = {}
        for name, array in zip(request.outputs, outputs, strict=True):
            array = np.asarray(array)
            codec.dtype_of(array)  # refuse output types RedisAI cannot store
            try:
                limits.check_output(name, array, self.max_tensor_bytes)
            except AIError as exc:
                return Outcome.failed(str(exc), stats_key)
            writes[name] = array
        samples = int(outputs[0].shape[0]) if outputs and np.ndim(outputs[0]) else 1
        return Outcome(
            "ok", writes=writes, stats_key=stats_key, duration_us=duration_us, samples=samples
        )
