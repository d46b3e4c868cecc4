"""Device names, discovery and framework placement (pure code; GPUs come from fake /proc dirs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiworker import AIError
from aiworker.devices import available_devices, discovery, gpu_count, parse_device, placement


@pytest.mark.parametrize(
    ("text", "kind", "index", "queue"),
    [
        ("CPU", "CPU", None, "CPU"),
        ("gpu", "GPU", None, "GPU"),
        ("GPU:1", "GPU", 1, "GPU:1"),
        ("cpu:12345", "CPU", 12345, "CPU:12345"),
    ],
)
def test_grammar_keeps_case(text: str, kind: str, index: int | None, queue: str) -> None:
    device = parse_device(text)
    assert (device.name, device.kind, device.index, device.queue) == (text, kind, index, queue)


@pytest.mark.parametrize("text", ["bad_device", "CPU::", "CPU:1.8", "CPU:123456", "TPU", ""])
def test_grammar_rejects(text: str) -> None:
    with pytest.raises(AIError, match=r"^Invalid DEVICE$"):
        parse_device(text)


def fake_proc(tmp_path: Path, gpus: int) -> Path:
    for n in range(gpus):
        (tmp_path / f"0000:0{n}:00.0").mkdir()
    return tmp_path


def test_host_gpu_count(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4)
    assert discovery.host_gpu_count(proc, env={}) == 4
    assert discovery.host_gpu_count(proc, env={"CUDA_VISIBLE_DEVICES": "0,2"}) == 2
    assert discovery.host_gpu_count(proc, env={"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert discovery.host_gpu_count(proc, env={"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == 1
    assert discovery.host_gpu_count(tmp_path / "no-driver", env={}) == 0


def test_available_devices() -> None:
    assert available_devices(gpus=0) == ["CPU"]
    assert available_devices(gpus=2) == ["CPU", "GPU:0", "GPU:1"]


def test_framework_counts_never_fail() -> None:
    for framework in discovery.FRAMEWORKS:
        assert gpu_count(framework) >= 0
    assert gpu_count("tflite") == 0
    with pytest.raises(ValueError, match="unknown framework"):
        gpu_count("caffe")


@pytest.mark.parametrize(
    ("text", "torch", "tf"),
    [("CPU", "cpu", "/CPU:0"), ("CPU:3", "cpu", "/CPU:0"), ("GPU", "cuda:0", "/GPU:0"),
     ("gpu:2", "cuda:2", "/GPU:2")],
)  # fmt: skip
def test_placement_names(text: str, torch: str, tf: str) -> None:
    device = parse_device(text)
    assert (placement.torch_name(device), placement.tf_name(device)) == (torch, tf)


def test_onnx_providers() -> None:
    assert placement.onnx_providers(parse_device("CPU:1")) == ["CPUExecutionProvider"]
    assert placement.onnx_providers(parse_device("GPU:1")) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]


def test_require_gpu() -> None:
    placement.require_gpu(parse_device("CPU"), "torch", 0)
    placement.require_gpu(parse_device("GPU:1"), "torch", 2)
    with pytest.raises(AIError) as info:
        placement.require_gpu(parse_device("GPU:1"), "torch", 1)
    assert (
        str(info.value) == "device GPU:1 is not available on this worker host (torch found 1 GPU)"
    )
