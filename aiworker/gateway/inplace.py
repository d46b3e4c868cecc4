"""A large bulk string received straight into a buffer of its own, on either side of the gateway.

An asyncio connection hands its protocol each read as a new ``bytes`` (the event loop's copy); a
reader that waits for a whole 1 MB argument then joins those reads (a second copy) and hiredis
copies them twice more. Once the header of a large bulk string is read and the rest of it is still
to come, the connection's protocol is swapped for ``InPlace`` (a ``BufferedProtocol``): the event
loop then reads the rest straight into the string's own buffer, and the owner gets the connection
back when the buffer is full. The bytes after the string (its CRLF, the next command) come to the
owner as usual. asyncio's and uvloop's transports, TLS ones too, read into the new protocol's
buffer from the next read on (``transport.set_protocol``).

Used for the arguments of AI.* commands (``frames.RequestReader``) and for the replies of reads
that fetch tensors (``resp.Gather``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

# Bulk strings from this size on are received in place when their rest is still to come.
IN_PLACE_BYTES = 64 * 1024


def new_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes, not zeroed: every byte of it is received."""
    return np.empty(size, np.uint8).data


class InPlace(asyncio.BufferedProtocol):
    """Fills ``view`` from ``transport``, then gives the connection back to ``owner`` and calls
    ``done``; what happens to the connection meanwhile goes to ``owner`` as well."""

    def __init__(
        self,
        owner: Any,
        transport: Any,
        view: memoryview,
        done: Callable[[], None],
    ) -> None:
        self.owner = owner
        self.transport = transport
        self.view = view
        self.done = done
        self.filled = 0

    @classmethod
    def start(cls, owner: Any, transport: Any, view: memoryview, done: Callable[[], None]) -> None:
        transport.set_protocol(cls(owner, transport, view, done))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        if self.filled == len(self.view):
            self.transport.set_protocol(self.owner)
            self.done()

    def eof_received(self) -> bool | None:
        return self.owner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()
