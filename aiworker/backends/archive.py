"""Zip archives from model blobs, read and extracted within limits.

A model blob is bounded by max_model_bytes, but what it unpacks to is not: a 1 MB zip of zeros
declares a gigabyte. So before anything is written the central directory is checked (member
count, the sum of declared sizes, names that would leave the target directory, links), and each
member is read in small chunks that stop at its declared size instead of trusting the stream.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from aiworker.protocol.errors import AIError

# A SavedModel has a handful of files plus one per variable shard and asset.
MAX_MEMBERS = 10_000
_COPY_CHUNK = 1 << 20
# The end records of a zip archive: end of central directory, zip64 locator, zip64 end.
_END = struct.Struct("<4s4H2LH")
_LOCATOR64 = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")


def _refused(what: str, reason: str) -> AIError:
    return AIError(f"Invalid {what} zip archive: {reason}")


def _member_path(info: zipfile.ZipInfo, what: str) -> PurePosixPath:
    """The member's relative path; refuses absolute names, drive letters, ``..`` and links."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refused(what, f"member {info.filename!r} has an absolute path")
    if ".." in path.parts:
        raise _refused(what, f"member {info.filename!r} has a '..' path component")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        label = "a symbolic link" if kind == stat.S_IFLNK else "not a regular file"
        raise _refused(what, f"member {info.filename!r} is {label}")
    return path


def check_members(
    archive: zipfile.ZipFile, max_bytes: int, what: str, max_members: int = MAX_MEMBERS
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member with its checked path, once the whole directory has passed the limits."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise _refused(what, f"{len(infos):,} members, more than {max_members:,}")
    total = sum(info.file_size for info in infos)
    if max_bytes and total > max_bytes:
        raise AIError(
            f"Invalid {what}: the zip archive unpacks to {total:,} bytes, more than this "
            f"worker's max_model_extract_bytes ({max_bytes:,})"
        )
    return [(info, _member_path(info, what)) for info in infos]


def directory_where_recorded(blob: bytes | bytearray | memoryview) -> bool:
    """Whether the central directory ends where the archive's end records begin, and those are
    the blob's last bytes: no comment, nothing before or after the archive.

    zipfile shifts every member's recorded offset by any bytes found before the archive; other
    readers (torch's) take the offsets as recorded. Where the two could differ, they could read
    different bytes for the same member: an archive that passes this reads the same in both.
    """
    data = memoryview(blob).cast("B")
    end = len(data) - _END.size
    tail = bytes(data[max(end, 0) :])
    if end < 0 or tail.rfind(b"PK\x05\x06") != 0:  # the last end record, with no comment
        return False
    size, offset = _END.unpack_from(data, end)[5:7]
    directory_end = end
    locator = end - _LOCATOR64.size
    if locator >= _END64.size and bytes(data[locator : locator + 4]) == b"PK\x06\x07":
        record = locator - _END64.size  # zipfile expects it there; torch follows the locator
        if _LOCATOR64.unpack_from(data, locator)[2] != record:
            return False
        if bytes(data[record : record + 4]) != b"PK\x06\x06":
            return False
        size, offset = _END64.unpack_from(data, record)[8:10]
        directory_end = record
    return bool(offset + size == directory_end)


def _chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> Iterator[bytes]:
    """A member's bytes in chunks, at most its declared size: each chunk is decompressed on its
    own, so a deflate bomb never unpacks past it, and data beyond it means the directory lied."""
    left = info.file_size
    with archive.open(info) as source:
        while left > 0:
            block = source.read(min(_COPY_CHUNK, left))
            if not block:
                break
            yield block
            left -= len(block)
        if source.read(1):
            raise _refused(what, f"member {info.filename!r} is larger than its declared size")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> bytes:
    """A member's bytes, read within its declared size (check the sizes before calling)."""
    return b"".join(_chunks(archive, info, what))


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, what: str) -> None:
    with open(target, "wb") as sink:
        for block in _chunks(archive, info, what):
            sink.write(block)


def extract(archive: zipfile.ZipFile, directory: Path, max_bytes: int, what: str) -> None:
    """Extract every member under ``directory`` within the limits above."""
    members = check_members(archive, max_bytes, what)
    root = directory.resolve()
    for info, path in members:
        target = (root / path).resolve()
        if target != root and root not in target.parents:  # belt and braces: checked above
            raise _refused(what, f"member {info.filename!r} leaves the target directory")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_member(archive, info, target, what)
