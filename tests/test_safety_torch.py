"""TORCH models and scripts that touch files are refused at load unless allow_file_ops is set.

Each model here is built with PyTorch and really does what it is refused for: ``torch.from_file``
reads any file the worker's user can read, ``torch.save`` writes one, and ``__setstate__`` runs
inside ``torch.jit.load`` itself.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import torch_blob

from aiworker import Client, JobFailed, Worker
from aiworker.backends import safety
from aiworker.backends.base import BackendOptions, ModelSpec
from aiworker.devices import parse_device
from aiworker.protocol.errors import AIError

torch = pytest.importorskip("torch")
from aiworker.backends.torch import TorchBackend  # noqa: E402 - needs torch

SPEC = ModelSpec(key="m", device=parse_device("CPU"))
DEFAULT = TorchBackend(BackendOptions())
ALLOWING = TorchBackend(BackendOptions(allow_file_ops=True))


def archive(module: Any) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


class ReadsFiles(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file("/etc/passwd", shared=False, size=4, dtype=torch.uint8)
        return x + data.float().sum() * 0


class Saves(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, "/tmp/aiworker-test-saved.pt")
        return x


class Outer(torch.nn.Module):  # type: ignore[misc]
    """The file op hides in a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Saves()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2


class WritesOnLoad(torch.nn.Module):  # type: ignore[misc]
    """``__setstate__`` runs inside ``torch.jit.load``, before any graph can be looked at."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.w = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w, self.path, self.training = state
        torch.save(self.w, self.path)


def rewrite_code(blob: bytes, old: bytes, new: bytes) -> bytes:
    """The archive with its code edited, as an attacker writing archives by hand would."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(
                info.filename, data.replace(old, new) if info.filename.endswith(".py") else data
            )
    return out.getvalue()


MODULES = [
    (ReadsFiles(), "aten::from_file", "method 'forward' of 'ReadsFiles'"),
    (Saves(), "aten::save", "method 'forward' of 'Saves'"),
    (Outer(), "aten::save", "method 'forward' of 'Outer'"),  # inlined from the submodule
]


@pytest.mark.parametrize(("module", "op", "where"), MODULES)
def test_modules_with_file_ops_are_refused(module: Any, op: str, where: str) -> None:
    blob = archive(module)
    with pytest.raises(AIError) as info:
        DEFAULT.load(blob, SPEC)
    assert re.match(rf"TORCH: the model's code \(code/.*\) uses {op!r}, which", str(info.value))
    assert "allow_file_ops" in str(info.value)
    ALLOWING.load(blob, SPEC)  # the operator may allow them


@pytest.mark.parametrize(("module", "op", "where"), MODULES)
def test_the_loaded_graphs_are_checked_too(module: Any, op: str, where: str) -> None:
    """After loading, every method's graph (calls inlined, submodules included) is checked: the
    authoritative pass behind the code scan that has to run before loading."""
    loaded = ALLOWING.load(archive(module), SPEC)
    with pytest.raises(AIError) as info:
        safety.check_torch_module(loaded.module, allow=False)  # type: ignore[attr-defined]
    assert str(info.value).startswith(f"TORCH: {where} uses {op!r}, which")


@pytest.mark.parametrize(
    "spelling", [b"torch.save(", b'getattr(torch, "sa" "ve")(', b"ops.aten.save("]
)
def test_code_run_by_loading_is_refused_before_it_runs(spelling: bytes, tmp_path: Path) -> None:
    target = tmp_path / "written-by-load.pt"
    blob = rewrite_code(archive(WritesOnLoad(str(target))), b"torch.save(", spelling)
    with pytest.raises(AIError) as info:
        DEFAULT.load(blob, SPEC)
    assert re.match(r"TORCH: the model's code \(code/.*\) uses 'aten::save'", str(info.value))
    assert not target.exists(), "nothing ran"
    ALLOWING.load(blob, SPEC)
    assert target.exists(), "what the check stops: loading alone wrote a file"


def test_ordinary_modules_still_load() -> None:
    model = DEFAULT.load(torch_blob("add"), SPEC)
    out = model.run([np.ones(2, np.float32), np.ones(2, np.float32)])
    assert out[0].tolist() == [2.0, 2.0]


SCRIPT = """
def peek(x: Tensor) -> Tensor:
    data = torch.from_file("/etc/passwd", shared=False, size=16, dtype=torch.uint8)
    return data.float() + x.sum() * 0

def entry(tensors: List[Tensor], keys: List[str], args: List[str]) -> Tensor:
    return peek(tensors[0])
"""

SAVING_SCRIPT = """
def entry(tensors: List[Tensor], keys: List[str], args: List[str]) -> Tensor:
    torch.save(tensors[0], args[0])
    return tensors[0]
"""


@pytest.mark.parametrize(
    ("source", "op"), [(SCRIPT, "aten::from_file"), (SAVING_SCRIPT, "aten::save")]
)
def test_scripts_with_file_ops_are_refused(source: str, op: str) -> None:
    with pytest.raises(AIError) as info:
        DEFAULT.load_script(source, ["entry"], parse_device("CPU"))
    assert f"uses {op!r}" in str(info.value) and str(info.value).startswith("TORCH: function '")
    ALLOWING.load_script(source, ["entry"], parse_device("CPU"))


def test_a_worker_refuses_a_script_reading_files(client: Client, worker: Worker) -> None:
    client.scriptstore("s", "CPU", SCRIPT, ["entry"])
    client.tensorset("a", np.ones(2, np.float32))
    with pytest.raises(JobFailed, match="uses 'aten::from_file'"):
        client.scriptexecute("s", "entry", inputs=["a"], outputs=["b"])
    assert not client.exists("b")
