"""Zip extraction within limits (``aiworker.backends.archive``), without any framework."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from aiworker.backends import archive
from aiworker.backends.base import BackendOptions
from aiworker.protocol.errors import AIError
from aiworker.settings import Settings


def build(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return buffer.getvalue()


def lying_about_size(data: bytes, declared: int) -> bytes:
    """A one-member zip whose headers declare ``declared`` bytes for ``data``."""
    blob = bytearray(build({"payload": data}))
    local = blob.index(b"PK\x03\x04")
    central = blob.index(b"PK\x01\x02")
    struct.pack_into("<I", blob, local + 22, declared)  # local header: uncompressed size
    struct.pack_into("<I", blob, central + 24, declared)  # central directory: the same
    return bytes(blob)


def test_defaults_agree() -> None:
    assert BackendOptions().max_model_extract_bytes == Settings().max_model_extract_bytes == 4 << 30


def test_sizes_come_from_the_directory_before_anything_is_written(tmp_path: Path) -> None:
    blob = build({"a": bytes(3 << 20), "b": bytes(3 << 20)})
    with zipfile.ZipFile(io.BytesIO(blob)) as zipped, pytest.raises(AIError) as info:
        archive.extract(zipped, tmp_path, 5 << 20, "SavedModel")
    assert str(info.value) == (
        "Invalid SavedModel: the zip archive unpacks to 6,291,456 bytes, more than this "
        "worker's max_model_extract_bytes (5,242,880)"
    )
    assert list(tmp_path.iterdir()) == []


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    blob = build({f"f{i}": b"" for i in range(archive.MAX_MEMBERS + 1)})
    with zipfile.ZipFile(io.BytesIO(blob)) as zipped, pytest.raises(AIError) as info:
        archive.extract(zipped, tmp_path, 0, "SavedModel")
    assert str(info.value) == "Invalid SavedModel zip archive: 10,001 members, more than 10,000"


def test_no_more_than_the_declared_size_is_written(tmp_path: Path) -> None:
    """A member whose data inflates past its declared size is cut there (and its checksum then
    fails), so the directory's sum really bounds what is written."""
    blob = lying_about_size(bytes(8 << 20), declared=10)
    with zipfile.ZipFile(io.BytesIO(blob)) as zipped:
        assert zipped.infolist()[0].file_size == 10
        with pytest.raises((AIError, zipfile.BadZipFile)):
            archive.extract(zipped, tmp_path, 100, "SavedModel")
    assert (tmp_path / "payload").stat().st_size <= 10


def test_nested_directories_are_created(tmp_path: Path) -> None:
    blob = build({"top/": b"", "top/variables/data": b"abc", "saved_model.pb": b"pb"})
    with zipfile.ZipFile(io.BytesIO(blob)) as zipped:
        archive.extract(zipped, tmp_path, 100, "SavedModel")
    assert (tmp_path / "top" / "variables" / "data").read_bytes() == b"abc"
    assert (tmp_path / "saved_model.pb").read_bytes() == b"pb"
