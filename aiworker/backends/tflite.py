"""TFLITE backend: TensorFlow Lite flatbuffers through LiteRT (``ai-edge-litert``), or TensorFlow's
own ``tf.lite.Interpreter`` where LiteRT does not install.

An interpreter is not thread-safe, so each worker thread gets its own (they share the blob, and
creating one is cheap). Inputs whose shape differs from the interpreter's current one are resized
(dynamic dimensions, e.g. the batch). Quantized models run as stored: a float input for a quantized
integer input is quantized with the tensor's scale and zero point, outputs keep the model's type.
INTRA_OP_PARALLELISM sets the interpreter's thread count; MODEL_EXECUTION_TIMEOUT is checked after
the run (an interpreter cannot be interrupted).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from aiworker.backends import safety
from aiworker.backends.base import Backend, LoadedModel, ModelSpec
from aiworker.backends.util import check_run_time, clock, one_line
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, CountMismatch
from aiworker.protocol.requests import IONames
from aiworker.protocol.tensor import dtype_of

try:
    from ai_edge_litert import interpreter as _litert

    Interpreter: Any = _litert.Interpreter
    RUNTIME = "litert"
except ImportError:
    try:
        import tensorflow as _tf

        Interpreter = _tf.lite.Interpreter
        RUNTIME = "tensorflow"
    except ImportError as exc:  # the registry turns this into a hint naming the extra
        raise ImportError(
            f"neither LiteRT (ai-edge-litert) nor TensorFlow is installed: {exc}"
        ) from exc


LOAD_FAILED = "Failed to load model from buffer"


def runtime_version() -> str:
    """``litert <version>`` or ``tensorflow <version>``: which runtime runs TFLITE models."""
    from importlib.metadata import PackageNotFoundError, version

    package = "ai-edge-litert" if RUNTIME == "litert" else "tensorflow"
    for name in (package, "tensorflow-cpu"):
        try:
            return f"{RUNTIME} {version(name)}"
        except PackageNotFoundError:
            continue
    return RUNTIME


def _quantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float data for a quantized integer input: round(x / scale + zero_point), clipped."""
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    quantized = np.round(np.asarray(value, dtype=np.float64) / scale + zero_point)
    result: np.ndarray = np.clip(quantized, info.min, info.max).astype(detail["dtype"])
    return result


def _prepare_input(index: int, value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    want = np.dtype(detail["dtype"])
    if value.dtype == want:
        return value
    scale = detail["quantization"][0]
    if scale and want.kind in "iu" and value.dtype.kind == "f":
        return _quantize(value, detail)
    try:
        wanted, given = dtype_of(np.empty(0, want)), dtype_of(value)
    except AIError:
        wanted, given = str(want), str(value.dtype)
    raise AIError(f"TFLITE: input {index} expects {wanted} data, got {given}")


class TFLiteModel(LoadedModel):
    def __init__(self, blob: bytes, num_threads: int | None, limit_ms: int) -> None:
        self.blob = blob
        self.num_threads = num_threads
        self.limit_ms = limit_ms
        self.nbytes = len(blob)
        self._local = threading.local()
        first = self._interpreter()  # fails here, at load, for a corrupt blob
        self.names = (
            tuple(str(d["name"]) for d in first.get_input_details()),
            tuple(str(d["name"]) for d in first.get_output_details()),
        )
        self.n_inputs, self.n_outputs = len(self.names[0]), len(self.names[1])

    def io_names(self) -> IONames:
        return self.names

    def _interpreter(self) -> Any:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            try:
                interpreter = Interpreter(model_content=self.blob, num_threads=self.num_threads)
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError):
                # RedisAI's exact message for a blob that is not a TFLite model
                raise AIError(LOAD_FAILED) from None
            self._local.interpreter = interpreter
        return interpreter

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != self.n_inputs:
            raise CountMismatch(messages.MODEL_INPUT_COUNT)
        interpreter = self._interpreter()
        details = interpreter.get_input_details()
        arrays = [
            _prepare_input(i, np.asarray(value), detail)
            for i, (value, detail) in enumerate(zip(inputs, details, strict=True))
        ]
        started = clock()
        try:
            resized = False
            for array, detail in zip(arrays, details, strict=True):
                if tuple(detail["shape"]) != array.shape:
                    interpreter.resize_tensor_input(detail["index"], list(array.shape))
                    resized = True
            if resized:
                interpreter.allocate_tensors()
            for array, detail in zip(arrays, details, strict=True):
                interpreter.set_tensor(detail["index"], array)
            interpreter.invoke()
            outputs = [
                np.array(interpreter.get_tensor(d["index"]))  # a copy: the buffer is reused
                for d in interpreter.get_output_details()
            ]
        except (ValueError, RuntimeError) as exc:
            # an interpreter keeps every error it reported, and repeats them all in the next
            # one's text: this thread starts afresh (the reply to each failure grew with them)
            self._local.interpreter = None
            raise AIError(f"TFLITE: {one_line(str(exc))}") from None
        check_run_time(started, self.limit_ms)
        return outputs


class TFLiteBackend(Backend):
    name = "TFLITE"
    extra = "tflite"
    device_kinds = frozenset({"CPU"})  # the Python runtimes ship no GPU delegate

    @classmethod
    def version(cls) -> str:
        return runtime_version()

    def load(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        self.check_device(spec.device)
        if not safety.check_tflite(blob, self.options.allow_file_ops):
            raise AIError(LOAD_FAILED)
        threads = self.options.intra_op_parallelism or None
        return TFLiteModel(bytes(blob), threads, self.options.model_execution_timeout_ms)
