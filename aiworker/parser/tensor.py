"""AI.TENSORSET and AI.TENSORGET (as commands and as DAG ops)."""

from __future__ import annotations

from collections.abc import Sequence

from aiworker.parser.common import parse_int, wrong_arity
from aiworker.parser.lexer import to_bytes
from aiworker.protocol import messages
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import TensorGet, TensorSet

BLOB_ARGUMENT = (
    "a single binary string should come after the BLOB argument in 'AI.TENSORSET' command"
)


def parse_tensorset(args: Sequence[str]) -> TensorSet:
    """``AI.TENSORSET key type dim... [BLOB data | VALUES v...]``, validated like RedisAI."""
    if len(args) < 3:
        raise wrong_arity("AI.TENSORSET")
    key = args[0]
    dtype = codec.parse_dtype(args[1])
    i = 2
    dims: list[int] = []
    while i < len(args) and args[i].upper() not in ("BLOB", "VALUES"):
        dim = parse_int(args[i], messages.INVALID_SHAPE)
        if dim <= 0:
            raise AIError(messages.INVALID_SHAPE)
        dims.append(dim)
        i += 1
    shape = tuple(dims)
    if i == len(args):
        return TensorSet(key, dtype, shape, None)
    rest = args[i + 1 :]
    if args[i].upper() == "BLOB":
        if len(rest) != 1:
            raise AIError(BLOB_ARGUMENT)
        blob = to_bytes(rest[0])
        codec.from_blob(dtype, shape, blob)  # length, BOOL and STRING checks
        return TensorSet(key, dtype, shape, blob)
    if len(rest) != codec.element_count(shape):
        raise AIError(messages.WRONG_VALUE_COUNT)
    values = [to_bytes(v) for v in rest] if dtype == "STRING" else list(rest)
    array = codec.from_values(dtype, shape, values)
    return TensorSet(key, dtype, shape, bytes(codec.to_blob(array)))


def parse_tensorget(args: Sequence[str]) -> TensorGet:
    """``AI.TENSORGET key [META] [BLOB | VALUES]``; no format means META and BLOB."""
    if not 1 <= len(args) <= 3:
        raise wrong_arity("AI.TENSORGET")
    if len(args) == 1:
        return TensorGet(args[0], meta=True, data="BLOB")
    words = set()
    for token in args[1:]:
        word = token.upper()
        if word not in ("META", "BLOB", "VALUES"):
            raise AIError(messages.UNSUPPORTED_FORMAT)
        words.add(word)
    if words == {"BLOB", "VALUES"}:  # RedisAI refuses exactly this pair; with META, BLOB wins
        raise AIError(messages.BLOB_AND_VALUES)
    data = "BLOB" if "BLOB" in words else "VALUES" if "VALUES" in words else ""
    return TensorGet(args[0], meta="META" in words, data=data)
