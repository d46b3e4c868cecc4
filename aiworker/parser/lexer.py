"""Split a command line the way Redis and redis-cli do (``sdssplitargs``). Pure code.

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


# sdssplitargs' characters: C's isspace() is skipped between tokens; an unquoted token ends at
# one of _ENDS; NUL ends the line.
_BLANKS = frozenset(" \t\n\v\f\r")
_ENDS = frozenset(" \t\n\r\0")
_UNBALANCED = "Invalid argument(s): unbalanced quotes"


def tokenize(line: str) -> list[str]:
    """Split as Redis' and redis-cli's ``sdssplitargs`` do: blanks separate, a quote starts a
    quoted part (``"`` with ``\\xHH``, ``\\n``-style escapes; ``'`` with ``\\'`` only), and a
    closing quote must end its token (``"a"b`` is unbalanced). Characters beyond ASCII never
    separate (a no-break space is part of its token, as it is to Redis)."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n or line[i] == "\0":
            return tokens
        current: list[str] = []
        while i < n and line[i] not in _ENDS:
            quote = line[i]
            if quote != '"' and quote != "'":
                current.append(quote)
                i += 1
                continue
            i = _quoted(line, i + 1, quote, current)
            if i < n and line[i] not in _BLANKS and line[i] != "\0":
                raise AIError(_UNBALANCED)  # a closing quote must end the token
            break
        tokens.append("".join(current))


def _quoted(line: str, i: int, quote: str, current: list[str]) -> int:
    """Append the quoted part starting at ``line[i]`` (after its opening ``quote``) to
    ``current``; where the rest of the line starts, after the closing quote."""
    n = len(line)
    while True:
        if i >= n or line[i] == "\0":
            raise AIError(_UNBALANCED)
        ch = line[i]
        if ch == quote:
            return i + 1
        if ch == "\\" and i + 1 < n and line[i + 1] != "\0":
            nxt = line[i + 1]
            if quote == "'":
                if nxt == "'":
                    current.append("'")
                    i += 2
                    continue
            else:
                escaped = _hex_escape(line, i) if nxt == "x" else None
                if escaped is not None:
                    current.append(escaped)
                    i += 4
                    continue
                current.append(_ESCAPES.get(nxt, nxt))
                i += 2
                continue
        current.append(ch)
        i += 1
