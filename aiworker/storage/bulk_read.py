"""RESP2 replies read from a socket with their large bulk strings received in place.

hiredis copies every byte twice on the way in: from the receive buffer into its own buffer
(``feed``), and from there into a new ``bytes`` object. For a job's 600 KB input those are two
copies more than the kernel's, a fifth of what reading it costs the worker's thread. This reader
parses replies itself (small elements from a receive buffer, like hiredis) and receives each bulk
string of at least ``LARGE_BULK`` bytes straight into a buffer of its own: one copy, the kernel's.
Those come back as read-only memoryviews (``np.frombuffer`` wraps them as they are).

What it costs Redis: a reader that is done sooner sleeps more, and the writes that wake it are
Redis's. A read of 32 inputs of 600 KB cost the reading thread 158-174 us an input against
175-185 through hiredis, and Redis 178-195 against 170-179 (``python -m bench.receive``, three
runs). Waking the reader less often (SO_RCVLOWAT at 256 KB) or reading in hiredis's 64 KB steps
cost Redis as much or more, so the reader asks the kernel for all that is left of a bulk at once.

Parsing in Python costs about a microsecond an element against hiredis's tenth, so a ``Wire`` uses
this reader only for round trips that fetch large tensors (``Wire.pipeline(..., large=True)``).
Replies look as hiredis gives them: status replies and small bulks as ``bytes``, integers as
``int``, nil as None, arrays as lists, error replies as ``hiredis.ReplyError`` values.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis
import numpy as np

# Bulk strings from this size on are received into buffers of their own.
LARGE_BULK = 64 * 1024
# A line (a header or a status) longer than this is no reply from Redis.
MAX_LINE = 64 * 1024


class BulkReader:
    """Reads replies from ``sock``; ``buffer`` is the connection's receive buffer, reused."""

    def __init__(self, sock: socket.socket, buffer: bytearray) -> None:
        self.sock = sock
        self.chunk = buffer
        self.view = memoryview(buffer)
        self.data = bytearray()  # received and not parsed yet, from ``pos``
        self.pos = 0

    def replies(self, count: int, into: list[Any]) -> list[Any]:
        """The next ``count`` replies, appended to ``into`` (those read before a failure stay)."""
        for _ in range(count):
            into.append(self._reply())
        return into

    @property
    def buffered(self) -> int:
        """Bytes received beyond the replies read (none after a complete exchange)."""
        return len(self.data) - self.pos

    def _receive(self) -> None:
        if self.pos:
            del self.data[: self.pos]
            self.pos = 0
        received = self.sock.recv_into(self.chunk)
        if not received:
            raise ConnectionError("Connection closed by server.")
        self.data += self.view[:received]

    def _line(self) -> bytes:
        start = self.pos
        end = self.data.find(b"\r\n", start)
        while end < 0:
            if len(self.data) - self.pos > MAX_LINE:
                raise hiredis.ProtocolError("a reply line too long")
            searched = len(self.data) - self.pos
            self._receive()
            end = self.data.find(b"\r\n", max(0, searched - 1))
            start = 0
        self.pos = end + 2
        return bytes(self.data[start:end])

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            return self._bulk(int(rest))
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            return hiredis.ReplyError(rest.decode("utf-8", "replace"))
        raise hiredis.ProtocolError(f"Protocol error, got {kind!r} as reply type byte")

    def _bulk(self, size: int) -> bytes | memoryview | None:
        if size < 0:
            return None
        if size < LARGE_BULK:
            while len(self.data) - self.pos < size + 2:
                self._receive()
            start = self.pos
            self.pos = start + size + 2
            if self.data[start + size : self.pos] != b"\r\n":
                raise hiredis.ProtocolError("a bulk string without its terminator")
            return bytes(self.data[start : start + size])
        target = np.empty(size, np.uint8).data  # uninitialised: every byte is received
        have = min(len(self.data) - self.pos, size)
        target[:have] = self.data[self.pos : self.pos + have]
        self.pos += have
        while have < size:
            received = self.sock.recv_into(target[have:])
            if not received:
                raise ConnectionError("Connection closed by server.")
            have += received
        while len(self.data) - self.pos < 2:
            self._receive()
        if self.data[self.pos : self.pos + 2] != b"\r\n":
            raise hiredis.ProtocolError("a bulk string without its terminator")
        self.pos += 2
        return target.toreadonly()
