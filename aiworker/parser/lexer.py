"""Split a command line the way redis-cli does. Pure code.

Bytes that are not UTF-8 (a ``\\xHH`` escape above 0x7f, or a raw byte in a stream entry) are carried
in ``str`` tokens as surrogate escapes, so ``to_bytes`` gives back exactly the bytes that were meant:
a BLOB typed in redis-cli syntax round-trips unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiworker.protocol.errors import AIError

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a", '"': '"', "\\": "\\"}


def to_text(token: str | bytes) -> str:
    """A token as ``str``; undecodable bytes become surrogate escapes (see ``to_bytes``)."""
    kind = type(token)
    if kind is bytes:  # a client's argument: the hot path first
        return token.decode("utf-8", "surrogateescape")  # type: ignore[union-attr]
    if kind is str or isinstance(token, str):
        return token  # type: ignore[return-value]
    return bytes(token).decode("utf-8", "surrogateescape")


def to_bytes(token: str) -> bytes:
    """The bytes a token stands for (inverse of ``to_text``)."""
    return token.encode("utf-8", "surrogateescape")


def normalize(tokens: Iterable[str | bytes | int | float]) -> list[str]:
    """Tokens of any client-side type as ``str`` (numbers as their text, bytes escaped)."""
    return [to_text(t) if isinstance(t, (str, bytes)) else str(t) for t in tokens]


def _hex_escape(line: str, i: int) -> str | None:
    """The character for ``\\xHH`` at ``line[i]`` (a surrogate escape above 0x7f), or None."""
    digits = line[i + 2 : i + 4]
    if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    value = int(digits, 16)
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


def tokenize(line: str) -> list[str]:
    """Split like redis-cli: whitespace separates, quotes group, ``\\xHH`` and ``\\n`` escapes work."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        current: list[str] = []
        while i < n and not line[i].isspace():
            quote = line[i]
            if quote not in "\"'":
                current.append(line[i])
                i += 1
                continue
            i += 1
            while True:
                if i >= n:
                    raise AIError("Invalid argument(s): unbalanced quotes")
                ch = line[i]
                if ch == quote:
                    i += 1
                    break
                if quote == '"' and ch == "\\" and i + 1 < n:
                    nxt = line[i + 1]
                    if nxt == "x":
                        escaped = _hex_escape(line, i)
                        if escaped is not None:
                            current.append(escaped)
                            i += 4
                            continue
                    current.append(_ESCAPES.get(nxt, nxt))
                    i += 2
                    continue
                if quote == "'" and ch == "\\" and i + 1 < n and line[i + 1] == "'":
                    current.append("'")
                    i += 2
                    continue
                current.append(ch)
                i += 1
        tokens.append("".join(current))
    return tokens
