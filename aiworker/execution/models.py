"""Models and scripts of one worker process: loaded from Redis into the cache, and run.

``Models.model``/``Models.script`` hand out a loaded version for the duration of a ``with`` block
(see ``model_cache``). ``run_model`` is the one place a model is called and its failures turned into
RedisAI's errors; ``samples_of`` the one place AI.INFO's sample count is decided.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial

import numpy as np
import redis

from aiworker.backends.base import LoadedModel, LoadedScript, ModelSpec, Registry
from aiworker.devices import parse_device
from aiworker.execution import limits
from aiworker.execution.limits import Limits
from aiworker.execution.model_cache import LoadFailed, ModelCache
from aiworker.execution.outcome import error_text
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store

SCRIPT_BACKEND = "TORCH"  # RedisAI's scripts are TorchScript


class Models:
    """Loads models and scripts on first use and keeps them in the process' cache."""

    def __init__(
        self, r: redis.Redis, registry: Registry, cache: ModelCache, bounds: Limits
    ) -> None:
        self.r = r
        self.registry = registry
        self.cache = cache
        self.limits = bounds

    def model(self, key: str, meta: model_store.ModelMeta) -> AbstractContextManager[LoadedModel]:
        """The model stored at ``key`` in the version ``meta`` names (or a newer one), for the
        duration of a ``with`` block."""
        return self.cache.use(key, meta.digest, partial(self._load_model, key))

    @contextmanager
    def script(self, key: str, meta: script_store.ScriptMeta) -> Iterator[LoadedScript]:
        # "script:" keeps a script's digest apart from a model's stored at the same key before.
        loaded = self.cache.use(key, "script:" + meta.digest, lambda: self._load_script(key))
        with loaded as script:
            if not isinstance(script, LoadedScript):  # pragma: no cover - digests are namespaced
                raise AIError(messages.SCRIPT_EMPTY)
            yield script

    def _load_model(self, key: str) -> tuple[str, LoadedModel]:
        try:
            meta, blob = model_store.read_model(self.r, key, max_bytes=self.limits.max_model_bytes)
        except (AIError, redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.ResponseError as exc:  # BUSY, NOPERM and the like: this job's error
            raise AIError(error_text(exc)) from exc
        try:
            backend = self.registry.get(meta.backend)
            spec = ModelSpec(
                key=key,
                device=parse_device(meta.device),
                inputs=meta.inputs,
                outputs=meta.outputs,
                batchsize=meta.batchsize,
            )
            loaded = backend.load(blob, spec)
        except AIError as exc:
            raise LoadFailed(meta.digest, exc) from exc
        except AIWorkerError as exc:  # e.g. the framework is not installed
            raise LoadFailed(meta.digest, AIError(error_text(exc))) from exc
        except Exception as exc:  # a backend bug or a blob it chokes on: this job's error only
            error = AIError(f"failed to load model '{key}': {error_text(exc)}")
            raise LoadFailed(meta.digest, error) from exc
        loaded.nbytes = loaded.nbytes or len(blob)  # the cache's byte bound needs a size
        loaded.version = meta.digest
        return meta.digest, loaded

    def _load_script(self, key: str) -> tuple[str, LoadedModel]:
        try:
            meta, source = script_store.read_script_within(self.r, key, self.limits.max_model_bytes)
        except (AIError, redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.ResponseError as exc:
            raise AIError(error_text(exc)) from exc
        version = "script:" + meta.digest
        try:
            backend = self.registry.get(SCRIPT_BACKEND)
            script = backend.load_script(source, meta.entry_points, parse_device(meta.device))
        except AIError as exc:
            raise LoadFailed(version, exc) from exc
        except AIWorkerError as exc:
            raise LoadFailed(version, AIError(error_text(exc))) from exc
        except Exception as exc:  # a framework failure: this job's error, not the worker's
            error = AIError(f"{SCRIPT_BACKEND}: failed to load script: {exc}")
            raise LoadFailed(version, error) from exc
        script.version = version
        return version, script

    def close(self) -> None:
        self.cache.clear()


def run_model(
    model: LoadedModel, inputs: Sequence[np.ndarray], backend: str
) -> tuple[list[np.ndarray], int]:
    """Call a model once: (outputs, microseconds); its failures as ``AIError``."""
    started = time.perf_counter()
    try:
        outputs = [np.asarray(out) for out in model.run(inputs)]
        limits.check_output_types(outputs)
    except AIError:
        raise
    except Exception as exc:  # the framework raised something unexpected: report, keep serving
        raise AIError(f"{backend}: {error_text(exc)}") from exc
    return outputs, int((time.perf_counter() - started) * 1_000_000)


def samples_of(outputs: Sequence[np.ndarray], requests: int = 1) -> int:
    """AI.INFO's samples of one run: the first output's first dimension (``requests`` when the
    model returned scalars or nothing)."""
    first = outputs[0] if outputs else None
    if first is None or np.ndim(first) == 0:
        return requests
    return int(first.shape[0])


def check_outputs(
    names: Sequence[str], outputs: Sequence[np.ndarray], limit: int, stored: bool = True
) -> None:
    """A model must return one tensor per output key, each within ``max_tensor_bytes`` (and
    storable when ``stored``: ``limits.check_output``)."""
    if len(outputs) != len(names):
        raise AIError(messages.MODEL_OUTPUT_COUNT)
    for name, array in zip(names, outputs, strict=True):
        limits.check_output(name, array, limit, stored)
