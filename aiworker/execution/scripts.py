"""SCRIPTEXECUTE on a worker: read the script version and inputs, run the entry point, collect
outputs. Registered in the executor's handler table; nothing here writes to Redis.

As for models, the work is split: ``prepare`` reads Redis (one transaction: script metadata and
input tensors), ``run`` calls the entry point; ``call_script`` is the part a DAG reuses on its own
tensors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from aiworker.backends.base import LoadedModel, LoadedScript
from aiworker.devices import parse_device
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.protocol.requests import Job, ScriptExecute
from aiworker.storage import script as script_store
from aiworker.storage import tensor as codec
from aiworker.storage import tensor_io

if TYPE_CHECKING:  # the executor imports this module when it builds its handler table
    from aiworker.execution.executor import Executor, Outcome

SCRIPT_BACKEND = "TORCH"  # RedisAI's scripts are TorchScript


@dataclass(frozen=True)
class PreparedScriptExecute:
    """A SCRIPTEXECUTE whose script version and inputs have been read."""

    request: ScriptExecute
    meta: script_store.ScriptMeta
    inputs: list[np.ndarray]


class ScriptRunner:
    """The SCRIPTEXECUTE handler of one executor (its Redis, registry and model cache)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def __call__(self, job: Job, queue_device: str) -> Outcome:
        request = job.request
        assert isinstance(request, ScriptExecute)
        prepared = self.prepare(request, queue_device)
        if not isinstance(prepared, PreparedScriptExecute):
            return prepared
        return self.run(prepared)

    def prepare(self, request: ScriptExecute, queue_device: str) -> PreparedScriptExecute | Outcome:
        """Read the script version and decode inputs; an Outcome when the job ends here."""
        from aiworker.execution.executor import Outcome

        pipe = self.executor.r.pipeline(transaction=True)
        pipe.hmget(request.key, list(script_store.META_FIELDS))
        for name in request.inputs:
            pipe.hgetall(name)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        meta = script_store.check_reply(replies[0])
        device = parse_device(meta.device)
        if device.queue != queue_device.upper():
            return Outcome("forward", forward_queue=self.executor.keys.queue(device.queue))
        if meta.entry_points and request.function not in meta.entry_points:
            return Outcome.failed(
                messages.SCRIPT_FUNCTION_MISSING.format(name=request.function), request.key
            )
        inputs = [tensor_io.decode_reply(reply) for reply in replies[1:]]
        return PreparedScriptExecute(request, meta, inputs)

    def script_for(self, key: str, meta: script_store.ScriptMeta) -> LoadedScript:
        """The compiled script of this stored version (compiled once per worker process)."""

        def load() -> tuple[str, LoadedModel]:
            stored, source = script_store.read_script(self.executor.r, key)
            backend = self.executor.registry.get(SCRIPT_BACKEND)
            try:
                device = parse_device(stored.device)
                script = backend.load_script(source, stored.entry_points, device)
                return "script:" + stored.digest, script
            except AIError:
                raise
            except AIWorkerError as exc:  # e.g. torch not installed: the cache keeps AIErrors
                raise AIError(str(exc)) from exc
            except Exception as exc:  # a framework failure: this job's error, not the worker's
                raise AIError(f"{SCRIPT_BACKEND}: failed to load script: {exc}") from exc

        # "script:" keeps a script's digest apart from a model's stored at the same key before.
        loaded = self.executor.cache.get(key, "script:" + meta.digest, load)
        if not isinstance(loaded, LoadedScript):  # pragma: no cover - digests are namespaced
            raise AIError(messages.SCRIPT_EMPTY)
        return loaded

    def call_script(
        self,
        key: str,
        meta: script_store.ScriptMeta,
        function: str,
        tensors: Sequence[np.ndarray],
        keys: Sequence[str],
        args: Sequence[str],
        n_outputs: int,
        variadic: int | None = None,
    ) -> list[np.ndarray]:
        """Run one entry point on arrays; raises ``AIError`` with RedisAI's messages."""
        script = self.script_for(key, meta)
        return script.call(function, tensors, keys, args, n_outputs, variadic)

    def run(self, prepared: PreparedScriptExecute) -> Outcome:
        """Run a prepared SCRIPTEXECUTE and collect its outputs."""
        from aiworker.execution.executor import Outcome

        request = prepared.request
        started = time.perf_counter()
        try:
            outputs = self.call_script(
                request.key,
                prepared.meta,
                request.function,
                prepared.inputs,
                request.keys,
                request.args,
                len(request.outputs),
                request.variadic,
            )
        except AIError as exc:
            return Outcome.failed(str(exc) or type(exc).__name__, request.key)
        except (redis.RedisError, AIWorkerError):
            raise
        except Exception as exc:  # an unexpected framework error: report it, keep serving
            return Outcome.failed(f"{SCRIPT_BACKEND}: {exc}", request.key)
        duration_us = int((time.perf_counter() - started) * 1_000_000)
        writes = {}
        for name, array in zip(request.outputs, outputs, strict=True):
            codec.dtype_of(array)  # refuse output types RedisAI cannot store
            writes[name] = array
        return Outcome("ok", writes=writes, stats_key=request.key, duration_us=duration_us)


# The interface DAG ops use: the same metadata read, and a call on DAG-local arrays.
META_FIELDS = script_store.META_FIELDS


def script_fields(reply: Any) -> dict[str, str]:
    """The metadata of an HMGET of META_FIELDS as a dict (RedisAI's errors for missing/other)."""
    meta = script_store.check_reply(reply)
    return {"device": meta.device, "tag": meta.tag, "digest": meta.digest}


def run_script(
    executor: Executor,
    key: str,
    function: str,
    inputs: Sequence[np.ndarray],
    keys: Sequence[str] = (),
    args: Sequence[str] = (),
    variadic: int | None = None,
) -> list[np.ndarray]:
    """Call ``function`` of the script at ``key`` on arrays; every tensor it returns."""
    meta = script_store.read_meta(executor.r, key)
    if meta.entry_points and function not in meta.entry_points:
        raise AIError(messages.SCRIPT_FUNCTION_MISSING.format(name=function))
    script = ScriptRunner(executor).script_for(key, meta)
    return script.call(function, inputs, keys, args, -1, variadic)
