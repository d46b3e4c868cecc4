"""TORCH models and scripts that touch files are refused at load unless allow_file_ops is set.

Each model here is built with PyTorch and really does what it is refused for: ``torch.from_file``
reads any file the worker's user can read, ``torch.save`` writes one, and ``__setstate__`` runs
inside ``torch.jit.load`` itself.
"""

from __future__ import annotations

import io
import re
import tracemalloc
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
    loaded = torch.jit.load(io.BytesIO(archive(module)))  # as the backend checks it
    with pytest.raises(AIError) as info:
        safety.check_torch_module(loaded, allow=False)
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


def test_the_archive_is_read_without_torchs_private_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch 2.11's private reader lacks ``get_record_size``: the code scan must not need it."""
    monkeypatch.delattr(torch._C, "PyTorchFileReader")
    with pytest.raises(AIError, match=r"^TORCH: the model's code \(code/.*\) uses 'aten::save'"):
        safety.check_torch_archive(archive(Saves()), allow=False)


def test_every_copy_of_a_code_record_is_checked() -> None:
    """A zip may hold two members of one name; torch's reader and zipfile need not pick the same
    one, so a file op in either is refused."""
    blob = archive(Saves())
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".py"):
                dst.writestr(info.filename, data)  # the file op first...
                data = data.replace(b"torch.save(", b"torch.add(")  # ...a harmless copy last
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
                dst.writestr(info.filename, data)
    with pytest.raises(AIError, match="uses 'aten::save'"):
        DEFAULT.load(out.getvalue(), SPEC)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda blob: b"\0" * 64 + blob, "has bytes before or after it"),
        (lambda blob: blob + b"trailing", "has bytes before or after it"),
        (lambda blob: b"not a zip archive at all", "not a TorchScript zip archive"),
        (lambda blob: blob[: len(blob) // 2], "not a TorchScript zip archive"),
    ],
)
def test_archives_zipfile_and_torch_could_read_differently_are_refused(
    edit: Any, message: str
) -> None:
    """zipfile shifts member offsets by bytes found before an archive, torch's reader does not:
    such an archive could show the check one code record and torch another."""
    blob = edit(torch_blob("add"))
    with pytest.raises(AIError) as info:
        DEFAULT.load(blob, SPEC)
    assert str(info.value).startswith("Failed to load TorchScript model: ")
    assert message in str(info.value)


def test_code_larger_than_the_limit_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiworker.backends.safety import torch_ops

    blob = archive(Outer())
    with zipfile.ZipFile(io.BytesIO(blob)) as zipped:
        code = sum(i.file_size for i in zipped.infolist() if i.filename.endswith(".py"))
    monkeypatch.setattr(torch_ops, "_MAX_CODE_BYTES", code - 1)
    with pytest.raises(AIError, match=f"code is larger than {code - 1:,} bytes"):
        DEFAULT.load(blob, SPEC)
    monkeypatch.setattr(torch_ops, "_MAX_CODE_BYTES", code)
    with pytest.raises(AIError, match="uses 'aten::save'"):  # read now, and refused for its op
        DEFAULT.load(blob, SPEC)


def test_a_code_record_is_read_no_further_than_its_declared_size() -> None:
    """A deflated record that declares 100 bytes but unpacks to 64 MB stops at 100 bytes (and
    fails its checksum) instead of being unpacked whole."""
    blob = torch_blob("add")
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith(".py"):
                dst.writestr(info.filename, b"#" * (64 << 20), zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, src.read(info))
    bomb = bytearray(out.getvalue())
    at = bomb.index(b"PK\x01\x02")  # the first central directory entry: a .py one is deflated
    while bomb[at + 10 : at + 12] != b"\x08\x00":
        at = bomb.index(b"PK\x01\x02", at + 4)
    bomb[at + 24 : at + 28] = (100).to_bytes(4, "little")  # its declared (uncompressed) size
    tracemalloc.start()
    try:
        with pytest.raises(AIError, match=r"not a TorchScript zip archive .*CRC"):
            safety.check_torch_archive(bytes(bomb), allow=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes: the record was unpacked past its declared size"


class AddsOne(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


@pytest.mark.parametrize("options", [DEFAULT, ALLOWING], ids=["default", "allow_file_ops"])
def test_code_too_deep_to_compile_is_refused_before_loading(options: TorchBackend) -> None:
    """torch.jit.load compiles the archive's code: nested 5,000 deep it would overflow the
    compiler's stack and kill the worker. Refused whatever allow_file_ops says."""
    deep = b"torch.add(x, " + b"(" * 5000 + b"1" + b")" * 5000 + b")"
    blob = rewrite_code(archive(AddsOne()), b"torch.add(x, 1)", deep)
    assert b"(" * 5000 in blob, "the code was rewritten"
    with pytest.raises(AIError, match=r"^TORCH: the model's code \(code/.*\) nests brackets past"):
        options.load(blob, SPEC)


class Weighted(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(16 << 20))  # 64 MB of zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[0]


def test_an_archive_unpacking_past_max_model_extract_bytes_is_refused() -> None:
    """torch inflates each record to its declared size: a 2 MB blob whose record declared
    2 GiB took that much of a worker's memory. A TorchScript archive is held to
    max_model_extract_bytes as a SavedModel's zip is."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive(Weighted()))) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), zipfile.ZIP_DEFLATED)
    blob = out.getvalue()
    assert len(blob) < 1 << 20  # zeros deflate: the blob is small, what it unpacks to is not
    bounded = TorchBackend(BackendOptions(max_model_extract_bytes=32 << 20))
    with pytest.raises(AIError, match=r"unpacks to [\d,]+ bytes, more than .*\(33,554,432\)"):
        bounded.load(blob, SPEC)
    assert TorchBackend(BackendOptions(max_model_extract_bytes=128 << 20)).load(blob, SPEC)


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
