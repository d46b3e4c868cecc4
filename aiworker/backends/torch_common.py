"""Helpers the TORCH backend's models and scripts share: devices, conversions, error texts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from aiworker.backends.util import one_line
from aiworker.devices import Device, placement
from aiworker.protocol.errors import AIError

try:
    import torch
except ImportError as exc:  # the registry turns this into a hint naming the extra
    raise ImportError(f"PyTorch is not installed: {exc}") from exc

_ERROR_CLASS = re.compile(r"^\w*(?:Error|Exception): ")


def torch_device(device: Device) -> torch.device:
    """RedisAI device -> torch device; refuses GPUs this host lacks instead of falling back."""
    if device.is_gpu:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        placement.require_gpu(device, "torch", count)
    return torch.device(placement.torch_name(device))


def torch_error_text(exc: BaseException) -> str:
    """The error itself: a TorchScript failure's message is a traceback whose last line is it."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    if "Traceback of TorchScript" in text:
        # an op implemented in Python (torch_redis_ops) appends its Python frames after "At:"
        last = text.split("\n\nAt:\n", 1)[0].strip().splitlines()[-1].strip()
        while _ERROR_CLASS.match(last):
            last = _ERROR_CLASS.sub("", last, count=1)
        return last
    return one_line(text)


CPU = torch.device("cpu")


def to_torch(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # A copy: TorchScript may write into its inputs, and stored blobs are read-only buffers.
    tensor = torch.from_numpy(array.copy())
    return tensor if device == CPU else tensor.to(device)


def to_torch_all(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """``to_torch`` of each array, the same array (a key named twice) converted once: one tensor
    for both, as RedisAI passed one key's tensor (and a job naming a key 200 times costs one
    copy, not 200)."""
    done: dict[int, torch.Tensor] = {}
    for array in arrays:
        if id(array) not in done:
            done[id(array)] = to_torch(array, device)
    return [done[id(array)] for array in arrays]


def to_numpy(value: Any) -> list[np.ndarray]:
    """Flatten a module's result (tensor, or tuple/list of them) to numpy arrays."""
    if isinstance(value, torch.Tensor):
        if value.device == CPU and not value.requires_grad:
            return [value.numpy()]
        return [value.detach().cpu().numpy()]
    if isinstance(value, (list, tuple)):
        out: list[np.ndarray] = []
        for item in value:
            out.extend(to_numpy(item))
        return out
    raise AIError(f"model returned {type(value).__name__}, expected tensors")
