"""Replies in RESP terms, printed the way redis-cli prints them on a terminal. Pure code.

``Status`` is a simple string (``OK``), ``ErrorReply`` an error, ``bytes`` (or ``str``) a bulk string,
``int`` an integer, ``None`` nil and a ``list`` an array (nested arrays are indented like redis-cli).
"""

from __future__ import annotations

from typing import Any

from aiworker.protocol.resp import ErrorReply, Status, wire_error

__all__ = ["ErrorReply", "Status", "format_reply", "quote", "wire_error"]


def quote(data: bytes | str) -> str:
    """redis-cli's quoting of a bulk string (sdscatrepr)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
    out = ['"']
    for byte in raw:
        ch = chr(byte)
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch in "\n\r\t\a\b":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\a": "\\a", "\b": "\\b"}[ch])
        elif 0x20 <= byte <= 0x7E:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    out.append('"')
    return "".join(out)


def _format(reply: Any, prefix: str) -> str:
    if reply is None:
        return "(nil)\n"
    if isinstance(reply, ErrorReply):
        return f"(error) {wire_error(reply)}\n"
    if isinstance(reply, Status):
        return f"{reply}\n"
    if isinstance(reply, bool):
        return f"(integer) {int(reply)}\n"
    if isinstance(reply, int):
        return f"(integer) {reply}\n"
    if isinstance(reply, (bytes, bytearray, memoryview, str)):
        return quote(bytes(reply) if not isinstance(reply, str) else reply) + "\n"
    if isinstance(reply, (list, tuple)):
        if not reply:
            return "(empty array)\n"
        width = len(str(len(reply)))
        nested = prefix + " " * (width + 2)
        parts = []
        for i, item in enumerate(reply):
            parts.append(f"{'' if i == 0 else prefix}{i + 1:>{width}}) ")
            parts.append(_format(item, nested))
        return "".join(parts)
    return quote(str(reply)) + "\n"


def format_reply(reply: Any) -> str:
    """The text redis-cli prints for ``reply`` (without the final newline)."""
    return _format(reply, "").rstrip("\n")
