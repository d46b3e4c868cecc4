"""A gateway client's own connection to a Redis server: commands go out in order, each reply comes
back to the ``Slot`` that waits for it.

Replies are not decoded: ``resp.reply_end`` finds where each ends and its bytes go to the session
as they are (``Session.on_reply``). After SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE or MONITOR the
connection becomes a pipe (``tunnel``): Redis pushes messages that answer no command, so from the
slot of that command on, every byte goes to the client as it comes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

from .resp import MalformedReply, reply_end


class Slot:
    """A reply position in a client's reply stream; ``data`` is None until the reply is known.
    ``hook`` sees a Redis reply first and may change it; ``silent`` replies are not sent (CLIENT
    REPLY OFF/SKIP); ``args`` is kept on a cluster, to send the command again after MOVED/ASK;
    ``tunnel`` marks the command after which the connection is a pipe."""

    __slots__ = ("args", "data", "hook", "silent", "tunnel")

    def __init__(
        self,
        data: bytes | None = None,
        hook: Callable[[bytes], bytes] | None = None,
        silent: bool = False,
        args: list[bytes] | None = None,
        tunnel: bool = False,
    ) -> None:
        self.data = data
        self.hook = hook
        self.silent = silent
        self.args = args
        self.tunnel = tunnel


class Target:
    """Where to connect: a TCP address (optionally TLS) or a unix socket."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.path, self.ssl = host, port, path, ssl_context

    async def connect(self, factory: Callable[[], asyncio.Protocol]) -> None:
        loop = asyncio.get_running_loop()
        if self.path:
            await loop.create_unix_connection(factory, self.path)
        else:
            server_hostname = self.host if self.ssl is not None else None
            await loop.create_connection(
                factory, self.host, self.port, ssl=self.ssl, server_hostname=server_hostname
            )


class Upstream(asyncio.Protocol):
    """One connection to Redis for one gateway client (see the module docstring). ``owner`` is
    the session: it gets ``on_reply(upstream, slot, data)``, ``on_raw(data)`` in tunnel mode and
    ``on_upstream_lost(upstream, why)``."""

    def __init__(self, owner: Any, target: Target, hello: list[list[bytes]]) -> None:
        self.owner = owner
        self.target = target
        self.waiting: deque[Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.tunnel = False
        self.closed = False
        self._out: list[bytes] = []
        self._buf = bytearray()
        # commands sent first on a new connection (AUTH, SELECT of the gateway's URL), unseen
        for command in hello:
            self.send(command, Slot(silent=True, hook=hidden))
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            await self.target.connect(lambda: self)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self._lost(f"cannot reach Redis ({exc})")

    def send(self, args: list[bytes], slot: Slot) -> None:
        """Queue a command; ``flush`` sends what is queued in one write."""
        out = self._out
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            out.append(b"$%d\r\n" % len(arg))
            out.append(arg)
            out.append(b"\r\n")
        self.waiting.append(slot)

    def send_raw(self, data: bytes) -> None:
        self._out.append(data)
        self.flush()

    def flush(self) -> None:
        if self._out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._out))
            self._out.clear()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:
            transport.close()
            return
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.owner.on_raw(data)
            return
        buf = self._buf
        buf += data
        pos = 0
        try:
            while self.waiting:
                end = reply_end(buf, pos)
                if end < 0:
                    break
                slot = self.waiting.popleft()
                self.owner.on_reply(self, slot, bytes(buf[pos:end]))
                pos = end
                if slot.tunnel:
                    self.tunnel = True
                    rest = bytes(buf[pos:])
                    buf.clear()
                    if rest:
                        self.owner.on_raw(rest)
                    return
        except (MalformedReply, ValueError) as exc:
            self._lost(f"unreadable reply from Redis ({exc})")
            return
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("connection to Redis lost")

    def _lost(self, why: str) -> None:
        if self.transport is not None:
            self.transport.close()
        was_closed, self.closed = self.closed, True
        if not was_closed:
            self.owner.on_upstream_lost(self, why)


def hidden(data: bytes) -> bytes:
    """The hook of the commands a new connection sends first: their replies are not the
    client's."""
    return data
