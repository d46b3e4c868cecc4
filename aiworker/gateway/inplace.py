"""A large bulk string received straight into a buffer of its own, on either side of the gateway.

An asyncio connection hands its protocol each read as a new ``bytes`` (the event loop's copy); a
reader that waits for a whole 1 MB argument then joins those reads (a second copy) and hiredis
copies them twice more. Once the header of a large bulk string is read and the rest of it is still
to come, the reader (a ``Sink``) says where the rest goes, and the connection's protocol is swapped
for ``InPlace`` (a ``BufferedProtocol``): the event loop then reads straight into that buffer, and
the owner gets the connection back once the string is in. The bytes after it (its CRLF, the next
command) come to the owner as usual. asyncio's and uvloop's transports, TLS ones too, read into the
new protocol's buffer from the next read on (``transport.set_protocol``).

Used for the arguments of AI.* commands (``frames.RequestReader``) and for the replies of reads
that fetch tensors (``resp.Gather``), for strings of ``bulk_read.LARGE_BULK`` bytes or more (the
size from which a worker's reads receive them in place too), in ``bulk_read.new_buffer``s.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Sink:
    """A reader that receives strings in place: ``receiving`` is what is still to come of the
    one being received (None when none is); the connection reads into it and calls ``filled``,
    which calls ``_received`` once the string is all in."""

    receiving: memoryview | None = None

    def filled(self, nbytes: int) -> None:
        """``nbytes`` more of the string came."""
        assert self.receiving is not None
        rest = self.receiving[nbytes:]
        if rest:
            self.receiving = rest
        else:
            self.receiving = None
            self._received()

    def _received(self) -> None:
        raise NotImplementedError


class InPlace(asyncio.BufferedProtocol):
    """Fills ``sink.receiving`` from ``transport``, then gives the connection back to ``owner``;
    what happens to the connection meanwhile goes to ``owner`` as well."""

    def __init__(self, owner: Any, transport: Any, sink: Sink) -> None:
        self.owner = owner
        self.transport = transport
        self.sink = sink

    @classmethod
    def start(cls, owner: Any, transport: Any, sink: Sink) -> None:
        transport.set_protocol(cls(owner, transport, sink))

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self.sink.receiving is not None
        return self.sink.receiving

    def buffer_updated(self, nbytes: int) -> None:
        self.sink.filled(nbytes)
        if self.sink.receiving is None:
            self.transport.set_protocol(self.owner)

    def eof_received(self) -> bool | None:
        return self.owner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()
