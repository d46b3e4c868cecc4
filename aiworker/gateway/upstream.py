"""A gateway client's own connection to a Redis server: commands go out in order, each reply comes
back to the ``Slot`` that waits for it.

The client's replies are not decoded: ``resp.reply_end`` finds where each ends and its bytes go to
the session as they are (``Session.on_reply``); once a read's replies are all delivered,
``Session.replies_done`` writes them to the client in one go. The replies to the commands the
gateway sends itself (``Slot.internal``: an AI.* command's Redis calls, AUTH and SELECT on a new
connection) are decoded by hiredis; while only those are awaited (an AI.* command runs), hiredis
reads the connection's bytes directly, but for a large reply of bulk strings (a tensor's blob):
``resp.Gather`` joins each of its strings once from the reads that hold it, or receives it in
place (``inplace``) when the command asked for that (a ``LargeSlot``: a read that fetches tensors).
After SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE or MONITOR the connection becomes a pipe (``tunnel``):
Redis pushes messages that answer no command, so from the slot of that command on (a subscribing
transaction's EXEC, when it ran), every byte goes to the client as it comes. A RESP3 connection (``resp3``: its client said HELLO 3) may also
get push replies (``>``, client-side caching's invalidations) between any two replies: each goes
to the client as it comes (``on_push``) and answers no slot; its replies are never read by
hiredis directly (it would take a push for the reply awaited), and the gateway's own commands get
their replies in the shapes of RESP2 (``resp.as_resp2``), which AI.* plans read.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser

from .inplace import InPlace
from .resp import LARGE_REPLY, PUSH, Gather, MalformedReply, as_resp2, pack, reply_end

# Commands held behind an AUTH (``Upstream.send``) past which the owner sends no more and stops
# reading its client (``on_backed_up``): they wait in the gateway's memory, where Redis' query buffer
# limit cannot bound them (a BLPOP k 0 before the AUTH holds them for good). The same happens
# while Redis does not read what was sent (a busy script): the transport's buffer is full.
MAX_HELD = 4096
# Bytes of commands kept while the connection to Redis is being made, past which it takes no more
# (asyncio's default high-water mark of a transport's buffer, which takes over once connected).
MAX_CONNECTING = 64 * 1024


class Slot:
    """A reply position in a client's reply stream; ``data`` is None until the reply is known.
    ``hook`` sees a Redis reply first and may change it (None: the reply comes later); ``silent``
    replies are not sent (CLIENT REPLY OFF/SKIP); ``args`` is kept on a cluster, to send the
    command again after MOVED/ASK; ``tunnel`` marks the command after which the connection is a
    pipe. ``internal`` takes the decoded reply of a command the gateway sent itself (it has no
    place in the client's reply stream; an error reply is redis-py's exception)."""

    __slots__ = (
        "args", "blocking", "data", "hook", "internal", "pushed", "redirects", "silent", "tunnel"
    )  # fmt: skip
    large = False  # a ``LargeSlot``: its reply's large strings may come as read-only memoryviews

    def __init__(
        self,
        data: bytes | list[bytes | memoryview] | None = None,
        hook: Callable[[bytes], bytes | None] | None = None,
        silent: bool = False,
        args: list[bytes] | None = None,
        tunnel: bool = False,
        internal: Callable[[Any], None] | None = None,
    ) -> None:
        self.data = data
        self.hook = hook
        self.silent = silent
        self.args = args
        self.tunnel = tunnel
        self.internal = internal
        self.blocking = False  # a blocking command's (``session.BLOCKING``)
        self.redirects = 0  # MOVED/ASK followed (``routers.ClusterRouter``)
        # its own reply may be a RESP3 push (SUBSCRIBE's): no other push is taken for it
        self.pushed = False


class LargeSlot(Slot):
    """The slot of an internal command whose reply's large bulk strings are received in place."""

    __slots__ = ()
    large = True


def hello_credentials(args: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """The (username, password) a HELLO authenticates with, read as Redis reads its options:
    left to right after the protocol version, AUTH taking two values and SETNAME one (so in
    ``HELLO 2 SETNAME AUTH SETNAME x`` no AUTH is given); the last AUTH counts. None: none."""
    credentials = None
    at = 2
    while at < len(args):
        option, left = args[at].upper(), len(args) - 1 - at
        if option == b"AUTH" and left >= 2:
            credentials = (args[at + 1], args[at + 2])
            at += 3
        elif option == b"SETNAME" and left >= 1:
            at += 2
        else:  # Redis refuses the whole HELLO: its reply is an error
            return None
    return credentials


def authenticates(args: Sequence[Any]) -> bool:
    """An AUTH, or a HELLO with AUTH: sent only once every earlier command on the connection
    was answered (``Upstream.send``). Redis 7.2 and later drop a failed AUTH's error when replies
    are still pending before it (redis/redis#15640; Valkey 8.0 too): the reply stream would be
    one short, and every later reply taken for its predecessor's."""
    name = args[0] if args else b""
    if not isinstance(name, bytes) or len(name) not in (4, 5):  # the gateway's own: text
        return False
    name = name.upper()
    return name == b"AUTH" or (name == b"HELLO" and hello_credentials(args) is not None)


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
    the session: it gets ``on_reply(upstream, slot, data)``, ``replies_done()``, ``on_raw(data)``
    in tunnel mode, ``on_push(data)``, ``on_backed_up(upstream, over)`` (it takes no more
    commands, or takes them again: ``_tell_backlog``) and ``on_upstream_lost(upstream, why)``."""

    def __init__(self, owner: Any, target: Target, hello: list[list[bytes]]) -> None:
        self.owner = owner
        self.target = target
        self.waiting: deque[Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.tunnel = False
        self._eof = False  # a half-close to pass on once connected (``write_eof``)
        self.closed = False
        self.resp3 = any(
            command[0].upper() == b"HELLO" and command[1:2] == [b"3"] for command in hello
        )
        self._out: list[bytes | memoryview] = []
        self._buf = bytearray()
        self._internal = 0  # slots in ``waiting`` that are internal
        self._decoder = hiredis.Reader(replyError=BaseParser.parse_error)
        self._decoding = False  # the decoder holds the start of a reply
        self._gather: Gather | None = None  # a large internal reply being read
        # commands held from an ``authenticates`` one on until the replies before it came (and
        # whether each authenticates; None: bytes for a pipe), in order
        self._held: deque[tuple[list[bytes | memoryview], Slot | None, bool]] = deque()
        self._unread = False  # Redis reads slower than commands come (``pause_writing``)
        self._paused = False  # not reading Redis (``pause``): its client does not read either
        self._backed_up = False  # what the owner was told last (``_tell_backlog``)
        self._unsent = 0  # bytes of the first ``_counted`` pieces of ``_out`` while connecting
        self._counted = 0
        # commands sent first on a new connection (AUTH, SELECT of the gateway's URL), unseen
        for command in hello:
            self.send(command, Slot(internal=ignore))
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            await self.target.connect(lambda: self)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self._lost(f"cannot reach Redis ({exc})")

    def send(self, args: Sequence[Any], slot: Slot) -> None:
        """Queue a command (bytes, text, numbers or memoryviews); ``flush`` sends what is
        queued in one write."""
        barrier = authenticates(args)
        if self._held or (barrier and self.waiting):
            self._held.append((pack(args), slot, barrier))
            if len(self._held) == MAX_HELD:
                self._tell_backlog()
            return
        self._queue(pack(args), slot)

    def _queue(self, packed: list[bytes | memoryview], slot: Slot) -> None:
        self._out += packed
        self._waiting_for(slot)
        if len(packed) > 1:  # a large argument: written now, so that flow control sees it
            self.flush()  # (``pause_writing`` stops the owner's dispatch at the next command)

    def _waiting_for(self, slot: Slot) -> None:
        self.waiting.append(slot)
        if slot.internal is not None:
            self._internal += 1

    def _release(self) -> None:
        """Every reply came: the held commands go, up to the next barrier."""
        held = self._held
        while held:
            packed, slot, barrier = held[0]
            if slot is None:  # bytes for a pipe (``send_raw``)
                self._out += packed
            elif barrier and self.waiting:
                break
            else:
                self._queue(packed, slot)
            held.popleft()
        self._tell_backlog()
        if held:
            return
        if self._eof and self.transport is not None and not self.write_eof():  # held back
            self._lost("the client closed its connection")  # TLS: no half-close

    def send_raw(self, data: bytes) -> None:
        if self._held:  # after the held commands
            self._held.append(([data], None, False))
            if len(self._held) == MAX_HELD:
                self._tell_backlog()
            return
        self._out.append(data)
        self.flush()

    def flush(self) -> None:
        out = self._out
        if out and self.transport is not None and not self.closed:
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)
            out.clear()
        elif out and self.transport is None and not self._unread:  # still connecting
            self._unsent += sum(map(len, out[self._counted :]))
            self._counted = len(out)
            if self._unsent > MAX_CONNECTING:
                self.pause_writing()

    def _tell_backlog(self) -> None:
        """Tell the owner when this connection starts or stops taking more commands: too many
        are held behind an AUTH, or Redis does not read what was sent (busy, or slow)."""
        backed_up = not self.closed and (self._unread or len(self._held) >= MAX_HELD)
        if backed_up != self._backed_up:
            self._backed_up = backed_up
            self.owner.on_backed_up(self, backed_up)

    def pause_writing(self) -> None:
        self._unread = True
        self._tell_backlog()

    def resume_writing(self) -> None:
        self._unread = False
        self._tell_backlog()

    def pause(self) -> None:
        """Stop reading Redis (from the connection on, when it is still being made)."""
        self._paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close once what was sent, held commands included, is written: Redis runs it all."""
        for packed, slot, _barrier in self._held:
            self._out += packed
            if slot is not None:
                self.waiting.append(slot)
        self._held.clear()
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def write_eof(self) -> bool:
        """End what is sent to Redis, after what was sent (a half-close; once connected, when
        it is not yet); False: it cannot be (closed, or TLS)."""
        transport = self.transport
        if self.closed:
            return False
        if transport is None or self._held:
            self._eof = True
            return True
        self.flush()
        if not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        if self.closed:
            transport.close()
            return
        self._unread = False  # the transport tells from here on (``pause_writing``)
        if self._paused:
            self.transport.pause_reading()
        self.flush()
        self._tell_backlog()
        if self._eof and not self.write_eof():  # TLS: no half-close, the client's end is ours
            self._lost("the client closed its connection")

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.owner.on_raw(data)
            return
        if (
            self._decoding
            or self._gather is not None
            or (not self._buf and self._internal == len(self.waiting) > 0 and not self.resp3)
        ):
            self._decode(data)
        else:
            try:
                self._split(data)
            except (MalformedReply, ValueError) as exc:
                self._lost(f"unreadable reply from Redis ({exc})")
                return
        if not self.tunnel:
            if self._held and not self.waiting:
                self._release()
            self.owner.replies_done()
            self.flush()  # what the replies' callbacks sent (an AI.* command's next round trip)

    def _decode(self, data: bytes) -> None:
        """Only internal replies are awaited: hiredis reads them (a large one: ``Gather``)."""
        decoder = self._decoder
        gather = self._gather
        if gather is None and not self._decoding:  # the read starts a reply
            large = self.waiting[0].large
            if len(data) >= LARGE_REPLY or (large and data[-2:] != b"\r\n"):  # not all here
                gather = self._gather = Gather(large)
        if gather is not None:
            try:
                rest = gather.feed(data)
            except ValueError as exc:
                self._lost(f"unreadable reply from Redis ({exc})")
                return
            if rest is None:
                if gather.receiving is not None and self.transport is not None:
                    InPlace.start(self, self.transport, gather)
                return
            self._gather = None
            if gather.shaped:
                self._internal -= 1
                self.waiting.popleft().internal(gather.reply)  # type: ignore[misc]
                if not rest:
                    return
                data = rest
            else:  # hiredis reads it all (the reads so far, then this one)
                for chunk in gather.chunks[:-1]:
                    decoder.feed(chunk)  # type: ignore[arg-type]  # any buffer
        decoder.feed(data)
        for _ in range(len(self.waiting)):  # slots added by the callbacks wait for later reads
            try:
                reply = decoder.gets()
            except hiredis.ProtocolError as exc:
                self._lost(f"unreadable reply from Redis ({exc})")
                return
            if reply is False:
                break
            self._internal -= 1
            self.waiting.popleft().internal(reply)  # type: ignore[misc]
        self._decoding = decoder.has_data()

    def _split(self, data: bytes) -> None:
        """Replies found one by one (``reply_end``); the client's are passed on as bytes."""
        buf = self._buf
        if buf:  # the start of a reply came earlier
            buf += data
        pos = self._deliver(buf if buf else data)
        if self.tunnel:  # from here on Redis pushes: the rest goes to the client as it is
            tail = bytes((buf if buf else data)[pos:])
            buf.clear()
            self.owner.replies_done()
            if tail:
                self.owner.on_raw(tail)
        elif buf:
            del buf[:pos]
        elif pos < len(data):
            buf += memoryview(data)[pos:]

    def _deliver(self, data: bytes | bytearray) -> int:
        """Hand every complete reply in ``data`` to its slot (up to a tunnel's); where the
        rest starts."""
        pos, size, waiting = 0, len(data), self.waiting
        while pos < size:
            end = reply_end(data, pos)
            if end < 0:
                break
            if data[pos] == PUSH and not (waiting and waiting[0].pushed):
                self.owner.on_push(bytes(data[pos:end]))  # a SUBSCRIBE's own reply is a push
                pos = end
                continue
            if not waiting:
                break
            slot = waiting.popleft()
            if pos == 0 and end == size and type(data) is bytes:
                reply = data  # the usual read: one whole reply
            else:
                with memoryview(data) as view:
                    reply = bytes(view[pos:end])
            if slot.internal is not None:
                self._internal -= 1
                self._decoder.feed(reply)
                decoded = self._decoder.gets()
                slot.internal(as_resp2(decoded) if self.resp3 else decoded)
            else:
                self.owner.on_reply(self, slot, reply)
            pos = end
            if slot.tunnel:
                self.tunnel = True
                break
        return pos

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("connection to Redis lost")

    def _lost(self, why: str) -> None:
        if self.transport is not None:
            self.transport.close()
        for _packed, slot, _barrier in self._held:  # never sent: answered as unanswered ones
            if slot is not None:
                self._waiting_for(slot)
        self._held.clear()
        was_closed, self.closed = self.closed, True
        self._tell_backlog()
        if not was_closed:
            self.owner.on_upstream_lost(self, why)


def ignore(reply: Any) -> None:
    """The ``internal`` of commands whose replies nobody reads (a new connection's AUTH and
    SELECT, ASKING): a failed AUTH shows in the commands after it."""
