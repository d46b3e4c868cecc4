"""TORCH backend: TorchScript modules loaded from bytes, run under ``torch.inference_mode``, and
TorchScript scripts (``torch_script.py``) with RedisAI's entry-point signature.

Host memory and copies per run (``torch_common.to_torch``/``to_host``): on the CPU an input is
copied once (a Redis reply is read-only, and TorchScript may write into its inputs), unless it is
a buffer from ``host_buffer``, which the module uses in place; outputs are the module's own
memory. On a GPU ``host_buffer`` is page-locked: a batch written there goes to the device with a
non-blocking copy and no host copy, any other input is copied once into page-locked memory first,
and outputs come back into page-locked memory with non-blocking copies and one wait on the run's
stream (each thread runs on a CUDA stream of its own).

On the CPU a model is loaded, and forwards that took long enough last time run, on the
forward threads (``forward_threads``: many threads owning OpenMP pools slow every forward down).
"""

from __future__ import annotations

import contextlib
import io
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from aiworker.backends import safety
from aiworker.backends.base import (
    Backend,
    BackendOptions,
    LoadedModel,
    LoadedScript,
    ModelSpec,
    powers_of_two,
)
from aiworker.backends.forward_threads import FORWARD_THREADS, worth_handing_off
from aiworker.backends.torch_common import (
    TORCH_ERRORS,
    flatten,
    pinned_tensor,
    to_host,
    to_torch_all,
    torch_device,
    torch_error_text,
)
from aiworker.backends.torch_script import TorchScript
from aiworker.backends.util import check_run_time, clock
from aiworker.devices import Device
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, CountMismatch
from aiworker.protocol.requests import IONames


def _input_range(module: torch.jit.ScriptModule) -> tuple[int, int] | None:
    """(required, total) inputs of ``forward`` from its schema; None when it cannot be read."""
    try:
        arguments = module.forward.schema.arguments[1:]  # type: ignore[attr-defined] # 0: self
    except (AttributeError, RuntimeError):
        return None
    # has_default_value: an argument defaulting to None has None as its default_value too
    required = sum(1 for a in arguments if not a.has_default_value() and not a.kwarg_only)
    return required, len(arguments)


def optimized(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The module frozen and optimized for inference (``torch.jit.optimize_for_inference``: weights
    folded in as constants, conv+batch-norm folded, oneDNN convolutions on the CPU), or as it is
    when that fails (a module that changes its own attributes cannot be frozen).

    Chosen by measurement (``python -m bench.torch_modes``, bench/README.md): on the CPU a small
    conv net ran 2.4-3.1x faster than under the default profiling executor, the legacy settings
    or plain freezing, at fixed, padded and varying batch sizes alike; an MLP within noise of the
    others. Per model, unlike the process-wide executor and fusion settings.
    """
    try:
        return torch.jit.optimize_for_inference(module)
    except Exception:  # torch raises RuntimeError and worse; the module runs unoptimized
        return module


class _HandedOut:
    """The host buffers a model handed out (``host_buffer``): a run may use them, and views of
    them, in place. Arrays are remembered by identity until they are gone."""

    def __init__(self) -> None:
        self._arrays: dict[int, weakref.ref[np.ndarray]] = {}

    def add(self, array: np.ndarray) -> np.ndarray:
        key = id(array)
        self._arrays[key] = weakref.ref(array, lambda _: self._arrays.pop(key, None))
        return array

    def __contains__(self, array: np.ndarray) -> bool:
        if not self._arrays:  # nothing handed out (a model that is not batched)
            return False
        for candidate in (array, array.base):
            ref = self._arrays.get(id(candidate))
            if ref is not None and ref() is candidate:
                return True
        return False


class TorchModel(LoadedModel):
    def __init__(
        self,
        module: torch.jit.ScriptModule,
        device: torch.device,
        nbytes: int,
        limit_ms: int = 0,
    ) -> None:
        self.module = module
        self.device = device
        self.nbytes = nbytes
        self.limit_ms = limit_ms
        self.input_range = _input_range(module)
        self._handed_out = _HandedOut()
        self._streams = threading.local()
        self._forward_s: float | None = None  # the last forward's time (None: none yet)

    def io_names(self) -> IONames:
        """As RedisAI's TORCH backend: ``forward``'s argument names, and an empty name for each
        output (TorchScript names none; a returned tuple counts its elements)."""
        try:
            schema = self.module.forward.schema  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):
            return (), ()
        returns = schema.returns
        count = len(returns)
        if count == 1 and isinstance(returns[0].type, torch.TupleType):
            count = len(returns[0].type.elements())
        return tuple(a.name for a in schema.arguments[1:]), ("",) * count

    def batch_sizes(self, batchsize: int) -> list[int] | None:
        """On a GPU, powers of two (warmed up at load): the profiling executor re-specialises on
        each new shape (ResNet-50 on an H200: 1,558 img/s at sizes varying 1-32 against 4,230 at
        a fixed 32). On the CPU, exact sizes: nothing re-specialises badly there, so padding
        only adds rows (bench/README.md, "TorchScript modes for batch shapes")."""
        return powers_of_two(batchsize) if self.device.type == "cuda" else None

    def host_buffer(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """On a GPU, page-locked memory (the copy to the device does not block and needs no
        staging copy); on the CPU, memory a run uses in place. Either way a run given this
        array (or a view of it) copies nothing on the host."""
        dtype = np.dtype(dtype)
        try:
            if self.device.type == "cuda":
                return self._handed_out.add(pinned_tensor(shape, dtype).numpy())
            return self._handed_out.add(np.empty(shape, dtype))
        except TypeError:  # a dtype torch lacks: the run refuses it anyway
            return super().host_buffer(shape, dtype)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.input_range and not self.input_range[0] <= len(inputs) <= self.input_range[1]:
            raise CountMismatch(messages.MODEL_INPUT_COUNT)
        if self.device.type == "cuda":
            with self._on_stream():
                outputs, started = self._forward(inputs)
        elif worth_handing_off(self._forward_s):
            outputs, started = FORWARD_THREADS.run(self._forward, inputs)
        else:  # the common small job: no hand-off, no stream machinery
            outputs, started = self._forward(inputs)
        self._forward_s = clock() - started
        check_run_time(started, self.limit_ms)
        return outputs

    def _forward(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """(outputs on the host, when the forward started)."""
        tensors = to_torch_all(inputs, self.device, self._handed_out.__contains__)
        started = clock()
        try:
            with torch.inference_mode():  # forward: a loaded module has no Python hooks
                result = self.module.forward(*tensors)
        except TORCH_ERRORS as exc:
            raise AIError(torch_error_text(exc)) from exc
        return to_host(flatten(result)), started  # waits for the device

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        """On a GPU, this thread's own CUDA stream: runs in flight on several threads overlap
        (one's copies with another's kernels), and each waits for its own work only. It is
        waited for on the way out, failed runs included: copies in flight read host buffers the
        caller may free once the run returns."""
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        try:
            with torch.cuda.stream(stream):
                yield
        finally:
            stream.synchronize()  # type: ignore[no-untyped-call]


class TorchBackend(Backend):
    name = "TORCH"
    extra = "torch"
    device_kinds = frozenset({"CPU", "GPU"})

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        if options.intra_op_parallelism:
            torch.set_num_threads(options.intra_op_parallelism)
        if options.inter_op_parallelism:
            # torch allows this once, before any parallel work ran in this process
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(options.inter_op_parallelism)

    @classmethod
    def version(cls) -> str:
        return str(torch.__version__)

    def load(self, blob: bytes, spec: ModelSpec) -> LoadedModel:
        device = torch_device(spec.device)
        # loading runs __setstate__, and inflates every record to its declared size
        options = self.options
        safety.check_torch_archive(blob, options.allow_file_ops, options.max_model_extract_bytes)
        if device.type == "cpu":  # optimizing runs ops: on a forward thread, as the forwards
            return FORWARD_THREADS.run(self._load, blob, device)  # type: ignore[no-any-return]
        return self._load(blob, device)

    def _load(self, blob: bytes, device: torch.device) -> TorchModel:
        try:
            module = torch.jit.load(io.BytesIO(blob), map_location=device)  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError or worse for corrupt archives
            raise AIError(f"Failed to load TorchScript model: {str(exc).splitlines()[0]}") from exc
        safety.check_torch_module(module, self.options.allow_file_ops)
        module = optimized(module.eval())
        if device.type == "cuda":  # runs use streams of their own: the weights must be there
            torch.cuda.synchronize(device)
        return TorchModel(module, device, len(blob), self.options.model_execution_timeout_ms)

    def load_script(self, source: str, entry_points: Sequence[str], device: Device) -> LoadedScript:
        script = TorchScript(
            source, entry_points, torch_device(device), self.options.model_execution_timeout_ms
        )
        safety.check_torch_script(script.unit, self.options.allow_file_ops)
        return script
