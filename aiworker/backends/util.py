"""Helpers shared by the framework backends: error text, the run-time limit, numpy conversions.

Nothing here imports a framework, so every backend module (and its tests) can use it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from aiworker.protocol.errors import RunTimedOut

# Swapped by tests for a fake clock: run-time limits are then checked without slow models.
_clock = time.perf_counter

_NUMPY_BY_ONNX_NAME: Mapping[str, Any] = {
    "float": np.float32,
    "double": np.float64,
    "float16": np.float16,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
    "string": object,
}


def one_line(text: str) -> str:
    """Error text as a Redis error reply carried it (RedisAI's clients saw line breaks as spaces)."""
    return text.strip().replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def clock() -> float:
    """Seconds on a monotonic clock (replaceable in tests)."""
    return _clock()


def timeout_error(limit_ms: int, took_ms: float) -> RunTimedOut:
    """The reply for a run that exceeded MODEL_EXECUTION_TIMEOUT."""
    return RunTimedOut(
        f"Model execution timeout: the run took {took_ms:.0f} ms, more than "
        f"MODEL_EXECUTION_TIMEOUT ({limit_ms} ms)"
    )


def check_run_time(started: float, limit_ms: int) -> None:
    """After a run that cannot be interrupted: fail it when it took longer than the limit.

    The outputs are dropped, so a client sees the same thing whichever backend ran the model: a
    run that exceeded MODEL_EXECUTION_TIMEOUT is an error.
    """
    if limit_ms <= 0:
        return
    took_ms = (clock() - started) * 1000
    if took_ms > limit_ms:
        raise timeout_error(limit_ms, took_ms)


def numpy_dtype(onnx_type: str) -> Any:
    """numpy dtype of an ONNX element type name (``float``, ``int64``, ``string``...)."""
    return _NUMPY_BY_ONNX_NAME.get(onnx_type, object)


def as_array(value: Any) -> np.ndarray:
    """A framework's output as a numpy array (numpy arrays pass through unchanged)."""
    return value if isinstance(value, np.ndarray) else np.asarray(value)
