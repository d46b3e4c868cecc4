"""TORCH backend: TorchScript modules loaded from bytes, run under ``torch.inference_mode``."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from aiworker.backends.base import Backend, BackendOptions, LoadedModel, ModelSpec
from aiworker.devices import Device
from aiworker.errors import AIError

try:
    import torch
except ImportError as exc:  # the registry turns this into a hint naming the extra
    raise ImportError(f"PyTorch is not installed: {exc}") from exc


def torch_device(device: Device) -> torch.device:
    """RedisAI device -> torch device; refuses GPUs this host lacks instead of falling back."""
    if not device.is_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available() or device.ordinal >= torch.cuda.device_count():
        raise AIError(f"device {device.name} is not available on this worker host")
    return torch.device(f"cuda:{device.ordinal}")


def to_torch(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # A copy: TorchScript may write into its inputs, and stored blobs are read-only buffers.
    return torch.from_numpy(np.array(array, copy=True)).to(device)


def to_numpy(value: Any) -> list[np.ndarray]:
    """Flatten a module's result (tensor, or tuple/list of them) to numpy arrays."""
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    if isinstance(value, (list, tuple)):
        out: list[np.ndarray] = []
        for item in value:
            out.extend(to_numpy(item))
        return out
    raise AIError(f"model returned {type(value).__name__}, expected tensors")


class TorchModel(LoadedModel):
    def __init__(self, module: torch.jit.ScriptModule, device: torch.device, nbytes: int) -> None:
        self.module = module
        self.device = device
        self.nbytes = nbytes

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        tensors = [to_torch(x, self.device) for x in inputs]
        try:
            with torch.inference_mode():
                result = self.module(*tensors)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise AIError(
                str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            ) from exc
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
        try:
            module = torch.jit.load(io.BytesIO(blob), map_location=device)  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError or worse for corrupt archives
            raise AIError(f"Failed to load TorchScript model: {str(exc).splitlines()[0]}") from exc
        module.eval()
        return TorchModel(module, device, nbytes=len(blob))
