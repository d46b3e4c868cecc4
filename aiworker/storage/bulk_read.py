"""RESP2 replies read from a socket with their large bulk strings received in place.

hiredis copies every byte twice on the way in: from the receive buffer into its own buffer
(``feed``), and from there into a new ``bytes`` object. For a job's 600 KB input those are two
copies more than the kernel's, a fifth of what reading it costs the worker's thread. This reader
parses replies itself (small elements from a receive buffer, like hiredis) and receives each bulk
string of at least ``LARGE_BULK`` bytes straight into a buffer of its own: one copy, the kernel's.
Those come back as read-only memoryviews (``np.frombuffer`` wraps them as they are).

What it costs Redis: a reader that is done sooner sleeps more, and the writes that wake it are
Redis's. A read of 32 inputs of 600 KB cost the reading thread 182-190 us an input against
198-208 through hiredis, and Redis 146-161 against 147-149 (``python -m bench.receive``, two
runs; bench/README.md section 9). Waking the reader less often (SO_RCVLOWAT at 256 KB) or reading
in hiredis's 64 KB steps cost Redis as much or more, so the reader asks the kernel for all that
is left of a bulk at once.

Parsing in Python costs about half a microsecond an element, hiredis a tenth of that, so a ``Wire``
uses this reader only for round trips that fetch large tensors (``Wire.pipeline(..., large=True)``).
Replies look as hiredis gives them: status replies and small bulks as ``bytes``, integers as
``int``, nil as None, arrays as lists, error replies as ``hiredis.ReplyError`` values.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis
import numpy as np

# Bulk strings from this size on are received into buffers of their own (here, and by the
# gateway: ``gateway.inplace``).
LARGE_BULK = 64 * 1024
# A line (a header or a status) longer than this is no reply from Redis.
MAX_LINE = 64 * 1024


def new_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes for a bulk string, not zeroed: every byte of it is
    received."""
    return np.empty(size, np.uint8).data


class BulkReader:
    """Reads replies from ``sock``; ``buffer`` is the connection's receive buffer, reused."""

    def __init__(self, sock: socket.socket, buffer: bytearray) -> None:
        self.sock = sock
        self.view = memoryview(buffer)
        self.data = b""  # received and not parsed yet, from ``pos``
        self.pos = 0

    def replies(self, count: int, into: list[Any]) -> list[Any]:
        """The next ``count`` replies, appended to ``into`` (those read before a failure stay)."""
        try:
            for _ in range(count):
                into.append(self._reply())
        except ValueError as exc:  # a length or an integer that is none
            raise hiredis.ProtocolError(f"Protocol error: {exc}") from exc
        return into

    @property
    def buffered(self) -> int:
        """Bytes received beyond the replies read (none after a complete exchange)."""
        return len(self.data) - self.pos

    def _receive(self) -> None:
        received = self.sock.recv_into(self.view)
        if not received:
            raise ConnectionError("Connection closed by server.")
        self.data = self.data[self.pos :] + self.view[:received]
        self.pos = 0

    def _line_end(self) -> int:
        """Where the line at ``pos`` ends, once it has arrived (``data`` may be replaced)."""
        while True:
            searched = len(self.data) - self.pos
            if searched > MAX_LINE:
                raise hiredis.ProtocolError("a reply line too long")
            self._receive()
            end = self.data.find(b"\r\n", max(0, searched - 1))
            if end >= 0:
                return end

    def _reply(self) -> Any:
        # Every element's header is a line; most small replies arrived whole with it.
        data, pos = self.data, self.pos
        end = data.find(b"\r\n", pos)
        if end < 0:
            end = self._line_end()
            data, pos = self.data, self.pos
        kind = data[pos]
        self.pos = end + 2
        if kind == 36:  # $: a bulk string
            size = int(data[pos + 1 : end])
            stop = end + 2 + size
            if 0 <= size < LARGE_BULK and stop + 2 <= len(data):
                if data[stop : stop + 2] != b"\r\n":
                    raise hiredis.ProtocolError("a bulk string without its terminator")
                self.pos = stop + 2
                return data[end + 2 : stop]
            return self._bulk(size)
        if kind == 42:  # *: an array
            size = int(data[pos + 1 : end])
            return None if size < 0 else [self._reply() for _ in range(size)]
        if kind == 58:  # :
            return int(data[pos + 1 : end])
        if kind == 43:  # +
            return data[pos + 1 : end]
        if kind == 45:  # -
            return hiredis.ReplyError(data[pos + 1 : end].decode("utf-8", "replace"))
        raise hiredis.ProtocolError(f"Protocol error, got {bytes([kind])!r} as reply type byte")

    def _bulk(self, size: int) -> bytes | memoryview | None:
        """A bulk string of ``size`` bytes whose header was read: one not all here yet."""
        if size < 0:
            return None
        if size < LARGE_BULK:
            while len(self.data) - self.pos < size + 2:
                self._receive()
            start = self.pos
            self.pos = start + size + 2
            if self.data[start + size : self.pos] != b"\r\n":
                raise hiredis.ProtocolError("a bulk string without its terminator")
            return self.data[start : start + size]
        target = new_buffer(size)
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
