"""RedisAI device names -> each framework's placement, refusing GPUs the host does not have.

A model stored for ``GPU:1`` must run on that GPU or fail with a clear error: falling back to the
CPU silently would hide a misconfigured worker behind slow, wrong-device runs.
"""

from __future__ import annotations

from typing import Any

from aiworker.devices.names import Device
from aiworker.protocol.errors import AIError


def unavailable(device: Device, framework: str, count: int) -> AIError:
    """The error for a GPU this worker host (as ``framework`` sees it) does not have."""
    found = f"{count} GPU" + ("" if count == 1 else "s")
    return AIError(
        f"device {device.name} is not available on this worker host ({framework} found {found})"
    )


def require_gpu(device: Device, framework: str, count: int) -> None:
    """Raise unless ``device`` is a CPU or a GPU ordinal below ``count``."""
    if device.is_gpu and device.ordinal >= count:
        raise unavailable(device, framework, count)


def torch_name(device: Device) -> str:
    """``cpu`` or ``cuda:n`` (``CPU:n`` names a queue, not a different processor)."""
    return f"cuda:{device.ordinal}" if device.is_gpu else "cpu"


def tf_name(device: Device) -> str:
    """``/CPU:0`` or ``/GPU:n``."""
    return f"/GPU:{device.ordinal}" if device.is_gpu else "/CPU:0"


def onnx_providers(device: Device) -> list[Any]:
    """onnxruntime execution providers: CUDA with ``device_id`` first for a GPU, then CPU for the
    nodes CUDA has no kernel for (ONNX Runtime's usual per-node fallback)."""
    if device.is_gpu:
        return [("CUDAExecutionProvider", {"device_id": device.ordinal}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
