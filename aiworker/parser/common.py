"""Helpers shared by the command parsers: arity errors, strict integers, TIMEOUT."""

from __future__ import annotations

import re
from collections.abc import Sequence

from aiworker.protocol.errors import AIError

# Redis' string2ll: no sign but "-", no leading zero, no "-0", within a signed 64-bit integer.
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")
_INT64 = range(-(1 << 63), 1 << 63)
_UNSIGNED = re.compile(r"^[0-9]+$")

# Separates the ops of a DAG command.
CHAIN = "|>"


def wrong_arity(command: str) -> AIError:
    """Redis' arity error, as RedisAI's tests spell it (the command name upper-cased)."""
    return AIError(f"wrong number of arguments for '{command}' command")


def is_word(token: str, word: str) -> bool:
    """Case-insensitive keyword match (RedisAI compares keywords with strcasecmp)."""
    return token.upper() == word


def parse_int(token: str, message: str) -> int:
    """A signed decimal integer the way Redis' string2ll reads it, or ``AIError(message)``."""
    if not _INTEGER.fullmatch(token) or int(token) not in _INT64:
        raise AIError(message)
    return int(token)


def parse_unsigned(token: str, message: str) -> int:
    """An unsigned decimal integer (RedisAI's AC_GetUnsignedLongLong), or ``AIError(message)``."""
    if not _UNSIGNED.match(token):
        raise AIError(message)
    return int(token)


def parse_timeout(args: Sequence[str], i: int, missing: str) -> int:
    """The TIMEOUT value at ``args[i]``: a positive number of milliseconds."""
    if i >= len(args):
        raise AIError(missing)
    value = parse_int(args[i], "Invalid value for TIMEOUT")
    if value <= 0:
        raise AIError("Invalid value for TIMEOUT")
    return value
