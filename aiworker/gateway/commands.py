"""An AI.* command as a client sent it (a list of ``bytes``) -> its typed request, checked. Pure code.

RedisAI's syntax and errors come from ``aiworker.parser``, which reads text tokens (bytes that are
not UTF-8 ride along as surrogate escapes). Escaping a binary blob costs ~50 ms per MB, so the
two commands that carry large blobs skip it: AI.TENSORSET's BLOB is checked against the
declared type and shape by the codec, and AI.MODELSTORE/MODELSET chunks go through the parser as
one-byte stand-ins and are put back afterwards.

Arguments received in place (``frames``) are read-only memoryviews: only their bytes are used.

Then the checks the workers apply to a job's names, applied to every command: names must be valid
UTF-8, and no command may write one of aiworker's own keys (``aiworker:*``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

from aiworker.parser import QUEUED, Command, parse, parse_tokens
from aiworker.parser.commands import InfoGet, ModelGet, ModelStore, ScriptGet
from aiworker.parser.lexer import to_text
from aiworker.parser.tensor import parse_tensorset
from aiworker.protocol import messages
from aiworker.protocol import tensor as codec
from aiworker.protocol.entries import check_names
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import (
    DagExecute,
    ModelExecute,
    Request,
    ScriptExecute,
    TensorGet,
    TensorSet,
)

from .translate import KeyFirst, key_first

# Arguments at least this long are passed to the parser as stand-ins when they are blob chunks.
LARGE_ARG = 4096
_DATA_WORDS = (b"BLOB", b"VALUES")
_LONG = "\0long argument"


def is_ai_command(name: bytes) -> bool:
    """Whether a command name is one the gateway answers itself (``AI.`` in any case)."""
    return name[:3].upper() == b"AI."


def is_job_command(name: bytes) -> bool:
    """Whether an AI.* command is a job (MODELEXECUTE, SCRIPTEXECUTE, DAGs, deprecated forms)."""
    return name.upper().decode("latin-1") in QUEUED


def parse_command(args: Sequence[bytes], keyspace: Keys) -> Command | KeyFirst:
    """The checked request of an AI.* command; ``AIError`` with RedisAI's message else, or
    where RedisAI read the key before the arguments that are wrong, the check of the key that
    raises one or the other (``translate.KeyFirst``)."""
    name = bytes(args[0]).upper()
    try:
        if name == b"AI.TENSORSET":
            command = _tensorset(args)
        elif name in (b"AI.MODELSTORE", b"AI.MODELSET"):
            command = _modelstore(args)
        else:
            command = parse_tokens([to_text(arg) for arg in args])
    except AIError as exc:  # long arguments (blobs) stand in: no key is one
        first = key_first([to_text(a) if len(a) < LARGE_ARG else _LONG for a in args], exc)
        if first is None or _LONG in first.keys:
            raise
        for key in first.keys:
            _utf8(key)
            if not first.read:
                _not_own(key, keyspace)
        return first
    check(command, keyspace)
    return command


def _word(arg: bytes | memoryview) -> bytes:
    """An argument as a keyword to compare (upper case; a long one is no keyword)."""
    return bytes(arg).upper() if len(arg) <= 16 else b""


def _tensorset(args: Sequence[bytes]) -> Command:
    """AI.TENSORSET with a BLOB as its last argument, the blob kept as it came (bytes, or the
    buffer it was received in); any other form through the parser."""
    if len(args) < 6 or _word(args[-2]) != b"BLOB":
        return parse_tokens([to_text(arg) for arg in args])
    if any(_word(arg) in _DATA_WORDS for arg in args[3:-2]):
        return parse_tokens([to_text(arg) for arg in args])  # BLOB is not the first data keyword
    head = parse_tensorset([to_text(arg) for arg in args[1:-2]])  # key, type, dims: checked
    blob = args[-1]
    codec.from_blob(head.dtype, head.shape, blob)  # length, BOOL and STRING checks
    return TensorSet(head.key, head.dtype, head.shape, blob)


def _modelstore(args: Sequence[bytes]) -> Command:
    """AI.MODELSTORE/MODELSET with long arguments after a BLOB word replaced by stand-ins; the
    real chunks are put back when the parser took exactly those arguments as the blob."""
    words = [_word(arg) == b"BLOB" for arg in args]
    blob_at = words.index(True, 3) if True in words[3:] else len(args)
    large = [n for n in range(blob_at + 1, len(args)) if len(args[n]) >= LARGE_ARG]
    if not large:
        return parse_tokens([to_text(arg) for arg in args])
    tokens = [("\0" if n in large else to_text(arg)) for n, arg in enumerate(args)]
    command = cast(ModelStore, parse(tokens))  # a MODELSTORE/MODELSET parses as one
    stand_in = "".join(tokens[blob_at + 1 :]).encode("utf-8", "surrogateescape")
    if command.blob != stand_in:  # the parser found the blob elsewhere: parse it all as text
        return parse_tokens([to_text(arg) for arg in args])
    return dataclasses.replace(command, blob=b"".join(args[blob_at + 1 :]))


def _utf8(name: str) -> None:
    try:
        name.encode()
    except UnicodeEncodeError:
        shown = name.encode(errors="surrogateescape").decode(errors="backslashreplace")
        raise AIError(messages.NAME_NOT_UTF8.format(name=shown)) from None


def _not_own(name: str, keyspace: Keys) -> None:
    if keyspace.owns(name):
        raise AIError(
            f"WRONGTYPE '{name}' is one of aiworker's own keys ({keyspace.prefix}*): "
            "a command may not write it"
        )


# Jobs, whose names the workers' own check covers; commands that only read their key.
_JOBS = frozenset({ModelExecute, ScriptExecute, DagExecute})
_READS = frozenset({TensorGet, ModelGet, ScriptGet})


def check(command: Command, keyspace: Keys) -> None:
    """The workers' rules for names: valid UTF-8; nothing written under aiworker's prefix."""
    kind = type(command)
    if kind in _JOBS:
        check_names(cast(Request, command), keyspace)
        return
    key = getattr(command, "key", None)
    if key is None:
        return
    _utf8(key)
    reads = kind in _READS or (kind is InfoGet and not cast(InfoGet, command).reset)
    if not reads:
        _not_own(key, keyspace)
