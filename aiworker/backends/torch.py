"""TORCH backend: TorchScript modules loaded from bytes, run under ``torch.inference_mode``, and
TorchScript scripts (``torch_script.py``) with RedisAI's entry-point signature."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from aiworker.backends import safety
from aiworker.backends.base import Backend, BackendOptions, LoadedModel, LoadedScript, ModelSpec
from aiworker.backends.torch_common import to_numpy, to_torch_all, torch_device, torch_error_text
from aiworker.backends.torch_script import TorchScript
from aiworker.backends.util import check_run_time, clock
from aiworker.devices import Device
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError


def _input_range(module: torch.jit.ScriptModule) -> tuple[int, int] | None:
    """(required, total) inputs of ``forward`` from its schema; None when it cannot be read."""
    try:
        arguments = module.forward.schema.arguments[1:]  # type: ignore[attr-defined] # 0: self
    except (AttributeError, RuntimeError):
        return None
    required = sum(1 for a in arguments if a.default_value is None and not a.kwarg_only)
    return required, len(arguments)


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

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.input_range and not self.input_range[0] <= len(inputs) <= self.input_range[1]:
            raise AIError(messages.MODEL_INPUT_COUNT)
        tensors = to_torch_all(inputs, self.device)
        started = clock()
        try:
            with torch.inference_mode():  # forward: a loaded module has no Python hooks to run
                result = self.module.forward(*tensors)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise AIError(torch_error_text(exc)) from exc
        check_run_time(started, self.limit_ms)
        return to_numpy(result)


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
        safety.check_torch_archive(blob, self.options.allow_file_ops)  # loading runs __setstate__
        try:
            module = torch.jit.load(io.BytesIO(blob), map_location=device)  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError or worse for corrupt archives
            raise AIError(f"Failed to load TorchScript model: {str(exc).splitlines()[0]}") from exc
        safety.check_torch_module(module, self.options.allow_file_ops)
        module.eval()
        return TorchModel(module, device, len(blob), self.options.model_execution_timeout_ms)

    def load_script(self, source: str, entry_points: Sequence[str], device: Device) -> LoadedScript:
        script = TorchScript(
            source, entry_points, torch_device(device), self.options.model_execution_timeout_ms
        )
        safety.check_torch_script(script.unit, self.options.allow_file_ops)
        return script
