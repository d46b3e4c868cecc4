"""Zip archives from model blobs, extracted within limits.

A model blob is bounded by max_model_bytes, but what it unpacks to is not: a 1 MB zip of zeros
declares a gigabyte. So before anything is written the central directory is checked (member
count, the sum of declared sizes, names that would leave the target directory, links), and each
member is copied with a loop that stops at its declared size instead of trusting the stream.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from aiworker.protocol.errors import AIError

# A SavedModel has a handful of files plus one per variable shard and asset.
MAX_MEMBERS = 10_000
_COPY_CHUNK = 1 << 20


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


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, what: str) -> None:
    """Copy at most the declared size; data beyond it means the directory lied."""
    left = info.file_size
    with archive.open(info) as source, open(target, "wb") as sink:
        while left > 0:
            block = source.read(min(_COPY_CHUNK, left))
            if not block:
                break
            sink.write(block)
            left -= len(block)
        if source.read(1):
            raise _refused(what, f"member {info.filename!r} is larger than its declared size")


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
