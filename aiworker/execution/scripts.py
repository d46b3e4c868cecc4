"""Calling a stored script's entry point (SCRIPTEXECUTE, and DAG script ops)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import redis

from aiworker.backends.base import ScriptContext
from aiworker.execution import limits
from aiworker.execution.models import SCRIPT_BACKEND, Models
from aiworker.execution.outcome import error_text
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.storage import script as script_store


def call_script(
    models: Models,
    key: str,
    meta: script_store.ScriptMeta,
    function: str,
    tensors: Sequence[np.ndarray],
    keys: Sequence[str] = (),
    args: Sequence[str] = (),
    n_outputs: int = -1,
    variadic: int | None = None,
    context: ScriptContext | None = None,
) -> tuple[list[np.ndarray], int, str]:
    """Run entry point ``function``: (outputs, microseconds, the stored version that ran);
    RedisAI's errors as ``AIError``.

    ``n_outputs`` is how many outputs the caller stores (-1: whatever the function returns)."""
    if meta.entry_points and function not in meta.entry_points:
        raise AIError(messages.SCRIPT_FUNCTION_MISSING.format(name=function))
    with models.script(key, meta) as script:
        started = time.perf_counter()
        try:
            outputs = script.call(function, tensors, keys, args, n_outputs, variadic, context)
        except (AIError, AIWorkerError, redis.RedisError):
            raise
        except Exception as exc:  # an unexpected framework error: report it, keep serving
            raise AIError(f"{SCRIPT_BACKEND}: {error_text(exc)}") from exc
        duration_us = int((time.perf_counter() - started) * 1_000_000)
    limits.check_output_types(outputs)
    return outputs, duration_us, script.version
