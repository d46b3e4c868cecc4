"""Helpers the TORCH backend's models and scripts share: devices, conversions, error texts."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aiworker.backends.util import one_line
from aiworker.devices import Device, placement
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, BareMessage

try:
    import torch
except ImportError as exc:  # the registry turns this into a hint naming the extra
    raise ImportError(f"PyTorch is not installed: {exc}") from exc

# "RuntimeError: ", and "builtins.ValueError: " as a TorchScript ``raise`` names its class
_ERROR_CLASS = re.compile(r"^[\w.]*(?:Error|Exception): ")
# What TorchScript code raises: ``raise``/``assert`` in TorchScript surface as torch.jit.Error,
# which is no RuntimeError; the rest are ops failing (shapes, indices, types).
TORCH_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, torch.jit.Error)


def torch_device(device: Device) -> torch.device:
    """RedisAI device -> torch device; refuses GPUs this host lacks instead of falling back."""
    if device.is_gpu:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        placement.require_gpu(device, "torch", count)
    return torch.device(placement.torch_name(device))


def torch_error_text(exc: BaseException) -> str:
    """The error itself: a TorchScript failure's message is a traceback whose last line is it.
    torch's own text, sent without an error code as RedisAI did (a ``BareMessage``)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    if "Traceback of TorchScript" in text:
        # an op implemented in Python (torch_redis_ops) appends its Python frames after "At:"
        last = text.split("\n\nAt:\n", 1)[0].strip().splitlines()[-1].strip()
        while _ERROR_CLASS.match(last):
            last = _ERROR_CLASS.sub("", last, count=1)
        return BareMessage(last)
    return BareMessage(one_line(text))


CPU = torch.device("cpu")
# torch's types numpy has (``Tensor.numpy()`` raises TypeError for the rest)
_NUMPY_TYPES = frozenset(
    {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16}
    | {torch.float32, torch.float64, torch.complex64, torch.complex128}
    | {getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)}
)


def pinned_tensor(shape: Sequence[int], dtype: np.dtype[Any]) -> torch.Tensor:
    """An uninitialized page-locked host tensor from torch's caching host allocator: the GPU
    copies from and to it asynchronously (DMA). A non-blocking copy from or to it records an event
    on its stream, so the allocator does not hand the memory out again before the copy is done."""
    like = torch.from_numpy(np.empty(0, dtype))  # TypeError for dtypes torch lacks
    return torch.empty(tuple(shape), dtype=like.dtype, pin_memory=True)


def to_torch(array: np.ndarray, device: torch.device, owned: bool = False) -> torch.Tensor:
    """``array`` as a tensor on ``device``, with one host copy at most.

    On the CPU a copy, unless ``owned`` (a staging buffer the caller gives away): TorchScript may
    write into its inputs, and stored blobs are read-only buffers. On a GPU the device holds its
    own copy, so a page-locked array goes as it is (its owner keeps it until the run has waited
    for its stream); any other is first copied into a page-locked tensor. The copy to the device
    does not block: it is ordered on the current stream.
    """
    if device == CPU:
        return torch.from_numpy(array if owned else array.copy())
    source = torch.from_numpy(array) if array.flags.writeable else None
    if source is None or not source.is_pinned():
        source = pinned_tensor(array.shape, array.dtype)
        source.numpy()[...] = array
    return source.to(device, non_blocking=True)


def to_torch_all(
    arrays: Sequence[np.ndarray],
    device: torch.device,
    owned: Callable[[np.ndarray], bool] = lambda array: False,
) -> list[torch.Tensor]:
    """``to_torch`` of each array, the same array (a key named twice) converted once: one tensor
    for both, as RedisAI passed one key's tensor (a job naming a key 200 times costs one copy,
    not 200). ``owned``: the arrays ``to_torch`` may use in place."""
    done: dict[int, torch.Tensor] = {}
    for array in arrays:
        if id(array) not in done:
            done[id(array)] = to_torch(array, device, owned(array))
    return [done[id(array)] for array in arrays]


def flatten(value: Any) -> list[torch.Tensor]:
    """A module's result (tensor, or tuple/list of them) as a list of tensors."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        out: list[torch.Tensor] = []
        for item in value:
            out.extend(flatten(item))
        return out
    raise AIError(f"model returned {type(value).__name__}, expected tensors")


def check_host_type(tensor: torch.Tensor, n: int) -> None:
    """Output ``n``'s type as an error naming it where numpy has no such type (bfloat16, the
    float8 types): torch's own says "Got unsupported ScalarType BFloat16"."""
    if tensor.dtype not in _NUMPY_TYPES:
        dtype = str(tensor.dtype).removeprefix("torch.")
        raise AIError(messages.OUTPUT_TYPE.format(n=n, dtype=dtype))


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Tensors as numpy arrays, sharing the memory of CPU tensors. Device tensors are copied
    into page-locked arrays without blocking on the current stream, which is then waited for
    once (call it where the tensors were computed: inside their stream's context)."""
    out: list[np.ndarray] = []
    device: torch.device | None = None
    for n, tensor in enumerate(tensors):
        tensor = tensor.detach()
        check_host_type(tensor, n)
        if tensor.device == CPU:
            out.append(tensor.numpy())
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)  # the allocator's tensor: the copy is tracked
        out.append(host.numpy())
        device = tensor.device
    if device is not None:
        torch.cuda.current_stream(device).synchronize()
    return out
