"""What accelerators this host has, overall and as each framework sees them.

``host_gpu_count`` reads the NVIDIA driver's ``/proc`` entries (and ``CUDA_VISIBLE_DEVICES``)
without importing any framework, so a worker can report its devices cheaply. ``gpu_count`` asks a
framework, importing it only when called: a framework may be built without GPU support even on a
GPU host (the CPU wheels of torch and TensorFlow), and only it knows.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")

# framework -> the module a backend imports for it (the names the backends and tests use)
FRAMEWORKS = ("torch", "tf", "onnx", "tflite")


def _visible(count: int, env: Mapping[str, str]) -> int:
    """Apply ``CUDA_VISIBLE_DEVICES`` (a comma list; CUDA stops at the first invalid entry)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return count
    visible = 0
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        visible += 1
    return min(visible, count)


def host_gpu_count(proc_dir: Path = NVIDIA_PROC, env: Mapping[str, str] | None = None) -> int:
    """NVIDIA GPUs this process may use, from the driver's ``/proc`` entries; 0 without a driver."""
    try:
        count = sum(1 for _ in proc_dir.iterdir())
    except OSError:
        return 0
    return _visible(count, os.environ if env is None else env)


def _torch_count() -> int:
    torch = importlib.import_module("torch")
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _tf_count() -> int:
    tf = importlib.import_module("tensorflow")
    return len(tf.config.list_physical_devices("GPU"))


def _onnx_count() -> int:
    ort = importlib.import_module("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return 0
    return host_gpu_count()


def _tflite_count() -> int:
    return 0  # the LiteRT/TF Lite Python runtimes ship no GPU delegate: TFLITE runs on CPU


_COUNTERS: dict[str, Callable[[], int]] = {
    "torch": _torch_count,
    "tf": _tf_count,
    "onnx": _onnx_count,
    "tflite": _tflite_count,
}


def gpu_count(framework: str) -> int:
    """GPUs ``framework`` (torch, tf, onnx, tflite) can use here; 0 when it is not installed."""
    counter = _COUNTERS.get(framework.lower())
    if counter is None:
        raise ValueError(
            f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}"
        )
    try:
        return counter()
    except ImportError:
        return 0


def available_devices(gpus: int | None = None) -> list[str]:
    """Device names a worker on this host can serve: ``CPU`` plus ``GPU:n`` per visible GPU."""
    count = host_gpu_count() if gpus is None else gpus
    return ["CPU", *(f"GPU:{n}" for n in range(count))]
