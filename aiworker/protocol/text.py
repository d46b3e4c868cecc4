"""Text from Redis replies and stream entries: the one place bytes become ``str``. Pure code."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """``value`` as text: bytes decoded as UTF-8 (invalid sequences replaced, so that anything
    can be shown or compared), None as the empty string, anything else through ``str``."""
    kind = type(value)
    if kind is bytes:  # what Redis replies hold: the hot path first
        return value.decode("utf-8", "replace")  # type: ignore[no-any-return]
    if kind is str:
        return value  # type: ignore[no-any-return]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def strict_text(value: Any) -> str | None:
    """``value`` as text if it is valid UTF-8 (a key name, a reply key), else None."""
    if type(value) is str and value.isascii():  # most names: nothing to check
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    result = str(value)
    try:
        result.encode()
    except UnicodeEncodeError:  # lone surrogates: a name that came from bytes it was not
        return None
    return result
