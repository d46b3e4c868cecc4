"""RESP2, the Redis protocol, as the gateway writes and reads it. Pure code.

Replies the gateway builds itself are Python values: ``Status`` a simple string (``+OK``),
``ErrorReply`` an error, ``bytes`` (or ``str``) a bulk string, ``int`` an integer, ``None`` nil and
a ``list`` an array; ``encode`` writes them. Replies that come from Redis are never decoded: the
gateway only finds where each one ends (``reply_end``) and passes its bytes on, so a simple string
stays a simple string and nothing is copied into Python objects.
"""

from __future__ import annotations

from typing import Any


class Status(str):
    """A simple-string reply such as ``OK``, ``NA`` or ``TIMEDOUT``."""

    __slots__ = ()


class ErrorReply(str):
    """An error reply; the text is RedisAI's message as redis-py shows it (no ``ERR``)."""

    __slots__ = ()


# RedisAI messages sent without the "ERR " prefix (redis-py shows every message without it).
_NO_ERR_PREFIX = (
    "WRONGTYPE",
    "NOAUTH",
    "NOPROTO",
    "EXECABORT",
    "Number of keys given as",
    "Unsupported command within DAG",
    "Invalid argument: ",
    "Function ",
    "Wrong number of inputs in function",
    "Wrong inputs type in function",
    "Deprecated AI.",
    "AI.MODELEXECUTE cannot be used",
    "AI.SCRIPTEXECUTE cannot be used",
    "CROSSSLOT",
)


def wire_error(message: str) -> str:
    """The error line as Redis sent it: RedisAI's ``ERR`` prefix where it had one."""
    if message.startswith(_NO_ERR_PREFIX) or message.startswith("ERR "):
        return message
    return "ERR " + message


OK = b"+OK\r\n"
QUEUED = b"+QUEUED\r\n"
NIL = b"$-1\r\n"


def error(message: str) -> bytes:
    """An error reply line (one line: a newline in a message would end the reply early)."""
    line = wire_error(message).replace("\r", " ").replace("\n", " ")
    return b"-" + line.encode("utf-8", "backslashreplace") + b"\r\n"


def _encode(reply: Any, out: list[bytes]) -> None:
    if isinstance(reply, (bytes, bytearray, memoryview)):
        out.append(b"$%d\r\n" % len(reply))
        out.append(reply if isinstance(reply, bytes) else bytes(reply))
        out.append(b"\r\n")
    elif reply is None:
        out.append(NIL)
    elif isinstance(reply, ErrorReply):
        out.append(error(str(reply)))
    elif isinstance(reply, Status):
        out.append(b"+" + reply.encode() + b"\r\n")
    elif isinstance(reply, (bool, int)):
        out.append(b":%d\r\n" % int(reply))
    elif isinstance(reply, str):
        data = reply.encode("utf-8", "surrogateescape")
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    elif isinstance(reply, (list, tuple)):
        out.append(b"*%d\r\n" % len(reply))
        for item in reply:
            _encode(item, out)
    else:
        raise TypeError(f"cannot send a {type(reply).__name__} as a reply")


def encode(reply: Any) -> bytes:
    """The RESP2 bytes of a reply value (see the module docstring)."""
    out: list[bytes] = []
    _encode(reply, out)
    return out[0] if len(out) == 1 else b"".join(out)


def command(*args: bytes) -> bytes:
    """A command as a RESP array of bulk strings (what clients send)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class MalformedReply(Exception):
    """Bytes from Redis that are not RESP2 (the connection to it is then dropped)."""


def reply_end(buf: bytes | bytearray, pos: int) -> int:
    """Where the reply starting at ``buf[pos]`` ends (the index after it), or -1 when ``buf``
    does not hold all of it yet. Only headers are read; bulk payloads are skipped."""
    pending = 1
    size = len(buf)
    while pending:
        if pos >= size:
            return -1
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        kind = buf[pos]
        if kind == 36:  # $ bulk string
            length = int(buf[pos + 1 : eol])
            pos = eol + 2 if length < 0 else eol + 4 + length
            if pos > size:
                return -1
        elif kind == 42:  # * array
            count = int(buf[pos + 1 : eol])
            pos = eol + 2
            if count > 0:
                pending += count
        elif kind in (43, 45, 58):  # + - :
            pos = eol + 2
        else:
            raise MalformedReply(f"unexpected reply type byte {bytes([kind])!r}")
        pending -= 1
    return pos


def array_items(buf: bytes | bytearray, start: int, end: int) -> list[bytes] | None:
    """The raw items of the array reply ``buf[start:end]``; None when it is not an array (nil,
    an error, ...)."""
    if buf[start] != 42:
        return None
    eol = buf.find(b"\r\n", start)
    count = int(buf[start + 1 : eol])
    if count < 0:
        return None
    items = []
    pos = eol + 2
    for _ in range(count):
        item_end = reply_end(buf, pos)
        items.append(bytes(buf[pos:item_end]))
        pos = item_end
    return items
