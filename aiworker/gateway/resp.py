"""The Redis protocol (RESP2, and RESP3 for clients that said HELLO 3) as the gateway writes and
reads it. Pure code.

Replies the gateway builds itself are Python values: ``Status`` a simple string (``+OK``),
``ErrorReply`` an error, ``bytes`` (or ``str``) a bulk string, ``Double`` a double, ``int`` an
integer, ``None`` nil, a ``list`` an array and a ``dict`` a map; ``encode`` writes them in either
protocol (RESP2 has no doubles, maps or typed nil: a double goes as its text, a map as an array of
its keys and values). Replies that come from Redis are never decoded: the gateway only finds where
each one ends (``reply_end``) and passes its bytes on, so a simple string stays a simple string
and nothing is copied into Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis

from aiworker.protocol.resp import Double, ErrorReply, Status, wire_error
from aiworker.storage.bulk_read import LARGE_BULK, new_buffer

from .inplace import Sink

__all__ = ["Double", "ErrorReply", "Status", "wire_error"]

OK = b"+OK\r\n"
QUEUED = b"+QUEUED\r\n"
NIL = b"$-1\r\n"
NULL = b"_\r\n"  # RESP3's nil


def error(message: str) -> bytes:
    """An error reply line (one line: a newline in a message would end the reply early)."""
    line = wire_error(message).replace("\r", " ").replace("\n", " ")
    return b"-" + line.encode("utf-8", "backslashreplace") + b"\r\n"


def _encode(reply: Any, out: list[bytes | memoryview], resp3: bool) -> None:
    if isinstance(reply, bytes):
        if resp3 and isinstance(reply, Double):
            out.append(b"," + reply + b"\r\n")
            return
        out.append(b"$%d\r\n" % len(reply))
        out.append(reply)
        out.append(b"\r\n")
    elif isinstance(reply, (bytearray, memoryview)):
        data = memoryview(reply).cast("B")
        out.append(b"$%d\r\n" % data.nbytes)
        out.append(data)  # joined without a copy of its own
        out.append(b"\r\n")
    elif reply is None:
        out.append(NULL if resp3 else NIL)
    elif isinstance(reply, ErrorReply):
        out.append(error(reply))
    elif isinstance(reply, Status):
        out.append(b"+" + reply.encode() + b"\r\n")
    elif isinstance(reply, (bool, int)):
        out.append(b":%d\r\n" % int(reply))
    elif isinstance(reply, str):
        text = reply.encode("utf-8", "surrogateescape")
        out.append(b"$%d\r\n" % len(text))
        out.append(text)
        out.append(b"\r\n")
    elif isinstance(reply, (list, tuple)):
        out.append(b"*%d\r\n" % len(reply))
        for item in reply:
            _encode(item, out, resp3)
    elif isinstance(reply, dict):
        out.append(b"%%%d\r\n" % len(reply) if resp3 else b"*%d\r\n" % (2 * len(reply)))
        for key, value in reply.items():
            _encode(key, out, resp3)
            _encode(value, out, resp3)
    else:
        raise TypeError(f"cannot send a {type(reply).__name__} as a reply")


def encode(reply: Any, resp3: bool = False) -> bytes:
    """The bytes of a reply value (see the module docstring), in RESP3 if ``resp3``."""
    out = encode_parts(reply, resp3)
    first = out[0]
    return first if len(out) == 1 and isinstance(first, bytes) else b"".join(out)


def encode_parts(reply: Any, resp3: bool = False) -> list[bytes | memoryview]:
    """``encode`` in pieces to write one after another: a blob is not copied into the rest."""
    out: list[bytes | memoryview] = []
    _encode(reply, out, resp3)
    return out


# Above this, a command's last argument is sent as it is rather than copied (``pack``).
LARGE_ARGUMENT = 64 * 1024


def pack(args: Sequence[Any]) -> list[bytes | memoryview]:
    """A command as RESP2 (bytes, text, numbers, memoryviews), packed by hiredis; a long last
    argument (a tensor's blob, a SET's value) follows its header uncopied."""
    last = args[-1]
    if len(args) > 1 and isinstance(last, (bytes, memoryview)) and len(last) > LARGE_ARGUMENT:
        head = hiredis.pack_command(tuple(args[:-1]))
        head = b"*%d%s$%d\r\n" % (len(args), head[head.index(b"\r\n") :], len(last))
        return [head, last, b"\r\n"]
    return [hiredis.pack_command(tuple(args))]


def command(*args: bytes) -> bytes:
    """A command as a RESP array of bulk strings (what clients send)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def as_resp2(value: Any) -> Any:
    """A RESP3 reply as hiredis decodes it, in the shape its RESP2 form decodes to: maps as
    lists of keys and values, booleans as 1 and 0, doubles as their text."""
    if isinstance(value, list):
        return [as_resp2(item) for item in value]
    if isinstance(value, dict):
        return [as_resp2(x) for pair in value.items() for x in pair]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return b"%.17g" % value
    return value


class MalformedReply(Exception):
    """Bytes from Redis that are not RESP (the connection to it is then dropped)."""


# RESP type bytes: a length and that many bytes (bulk string, blob error, verbatim string); a
# count and that many items (array, set, push); a count of pairs (map; an attribute's pairs come
# before the reply they describe); one line (simple string, error, integer, null, double, boolean,
# big number).
_SIZED = frozenset(b"$!=")
_COUNTED = frozenset(b"*~>")
_PAIRS = frozenset(b"%|")
_LINES = frozenset(b"+-:_,#(")
PUSH = 62  # ">": RESP3's out-of-band data (pub/sub messages, client-side caching invalidations)


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
        if kind == 36 or kind in _SIZED:  # $ first: the usual one
            length = int(buf[pos + 1 : eol])
            pos = eol + 2 if length < 0 else eol + 4 + length
            if pos > size:
                return -1
        elif kind in _COUNTED:
            count = int(buf[pos + 1 : eol])
            pos = eol + 2
            if count > 0:
                pending += count
        elif kind in _LINES:
            pos = eol + 2
        elif kind in _PAIRS:
            count = int(buf[pos + 1 : eol])
            pos = eol + 2
            pending += 2 * count + (kind == 124)  # an attribute: its pairs, then the reply
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


# A read this long that starts an internal reply is gathered (``Gather``) rather than decoded by
# hiredis; an array of more strings than ``GATHER_ITEMS`` goes to hiredis.
LARGE_REPLY = 64 * 1024
GATHER_ITEMS = 64


class Gather(Sink):
    """A large reply of bulk strings (a tensor's HGETALL, a job's BLPOP), read as it comes: each
    string is one join of the reads that hold it, where hiredis would copy every read into its
    buffer and the string out of it again. ``feed`` a read at a time; it returns None while the
    reply is unfinished, else the bytes after it. ``reply`` is then the reply as hiredis gives it
    (a list of bytes and None, bytes or None) if ``shaped``; a reply of another shape (an error,
    an integer, a nested or a long array) is left to hiredis: ``chunks`` holds every read so
    far.

    ``in_place``: a string of ``LARGE_BULK`` or more whose rest is still to come is received
    in place (``inplace``): ``feed`` leaves ``receiving`` set, the connection reads into it and
    calls ``filled``, and the string comes as a read-only memoryview of its buffer."""

    def __init__(self, in_place: bool = False) -> None:
        self.in_place = in_place
        self.receiving = None
        self._target: memoryview | None = None
        self._had = 0  # bytes of the string in the read that started it
        self.chunks: list[bytes | memoryview] = []
        self.reply: list[bytes | memoryview | None] | bytes | memoryview | None = None
        self.shaped = False
        self._items: list[bytes | memoryview | None] = []
        self._array = False
        self._left = 1  # strings still to come
        self._body = -1  # bytes of the current string still to come; -1: at a header
        self._skip = 0  # bytes of its CRLF still to come
        self._parts: list[memoryview] = []
        self._line = b""  # a header cut by the end of a read

    def feed(self, data: bytes) -> bytes | None:
        self.chunks.append(data)
        if self._line:
            data, self._line = self._line + data, b""
        view, pos, size = memoryview(data), 0, len(data)
        while True:
            if self._skip:
                skipped = min(self._skip, size - pos)
                pos += skipped
                self._skip -= skipped
                if self._skip:
                    return None
                self._left -= 1
                if not self._left:
                    return self._done(bytes(view[pos:]))
            if self._body < 0:  # a header
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._line = bytes(view[pos:])
                    return None
                kind, number = data[pos : pos + 1], data[pos + 1 : eol]
                pos = eol + 2
                if kind == b"*" and not self._array and not self._items and not self._parts:
                    count = int(number)
                    if not 0 < count <= GATHER_ITEMS:
                        return self._done(b"", shaped=False)
                    self._array, self._left = True, count
                    continue
                if kind != b"$":
                    return self._done(b"", shaped=False)
                length = int(number)
                if length < 0:
                    self._items.append(None)
                    self._left -= 1
                    if not self._left:
                        return self._done(bytes(view[pos:]))
                    continue
                self._body = length
            taken = min(self._body, size - pos)
            if taken < self._body and self.in_place and self._body >= LARGE_BULK:
                target = self._target = new_buffer(self._body)
                target[:taken] = view[pos : pos + taken]
                self.receiving = target[taken:]
                self._had = taken
                return None
            if taken:
                self._parts.append(view[pos : pos + taken])
            pos += taken
            self._body -= taken
            if self._body:
                return None
            self._items.append(b"".join(self._parts))
            self._parts.clear()
            self._body, self._skip = -1, 2

    def _received(self) -> None:
        """The string is complete but for its CRLF."""
        assert self._target is not None
        target = self._target.toreadonly()
        self.chunks.append(target[self._had :])  # the bytes as they came, for hiredis
        self._items.append(target)
        self._target = None
        self._body, self._skip = -1, 2

    def _done(self, rest: bytes, shaped: bool = True) -> bytes:
        self.shaped = shaped
        if shaped:
            self.reply = self._items if self._array else self._items[0]
        self._parts.clear()
        return rest
