"""One client connection to the gateway: commands in, replies out, in order.

Each command gets a ``Slot`` in ``replies`` when it is dispatched, and replies leave in that order,
however long an AI.* command takes: ``flush`` writes every leading slot that is filled, in one
write. Commands also *run* in order, as Redis runs one client's commands: plain commands are
pipelined to the client's own Redis connection (``router``), and an AI.* command starts only once
every earlier command has been answered, and holds the commands after it until it is done (RedisAI
blocked the client the same way). So a pipeline ``AI.TENSORSET t ...``, ``EXISTS t`` sees the tensor.

The connection's state lives in Redis (DB, user, transaction, subscriptions), reached by
pass-through; the gateway only follows what the replies say: AUTH and SELECT change the identity
AI.* commands run as (``aiclients.Identity``), MULTI/EXEC/DISCARD the transaction an AI.* command
cannot join (it is answered QUEUED and its place in EXEC's reply holds RedisAI's error).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from . import resp
from .aiclients import Identity
from .commands import is_ai_command, parse_command
from .frames import ProtocolError, RequestReader
from .resp import ErrorReply
from .translate import error_reply
from .upstream import Slot, Upstream, hidden

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger("aiworker.gateway")

IN_TRANSACTION = "Cannot run RedisAI command within a transaction or a LUA script"
NOAUTH = b"-NOAUTH Authentication required.\r\n"
# Reading from the client pauses while this many commands wait to be dispatched.
MAX_WAITING = 4096
TUNNEL_COMMANDS = {b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR"}
# What may pass before AUTH when the gateway requires it.
BEFORE_AUTH = {b"AUTH", b"HELLO", b"QUIT"}


class Session(asyncio.Protocol):
    """A gateway client's connection (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        config = gateway.config
        self.reader = RequestReader(config.max_bulk, config.max_args, config.max_request)
        self.transport: asyncio.Transport | None = None
        self.replies: deque[Slot] = deque()
        self.waiting: deque[list[bytes]] = deque()
        self.identity: Identity = gateway.identity
        self.authed = not config.require_auth
        self.in_multi = False
        self.multi_items: list[ErrorReply | None] = []  # AI errors (None: a Redis command)
        self.inflight = 0  # commands sent to Redis and not answered yet
        self.ai_task: asyncio.Future[Any] | None = None
        self.tunnel = False
        self.closing = False  # close once the replies before it are written
        self.skip_next = False  # CLIENT REPLY SKIP
        self.replies_off = False  # CLIENT REPLY OFF
        self.paused = False
        self.write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.router = gateway.router_for(self)

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.gw.admit(self):
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.waiting.clear()
        self._cancel_timer()
        self.router.close()
        self.gw.forget(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.tunnel:
            self.router.tunnel_upstream().send_raw(data)
            return
        try:
            commands = self.reader.feed(data)
        except ProtocolError as exc:
            self.waiting.clear()
            self._reply_now(resp.error(str(exc)))
            self._close_after_replies()
            return
        if commands:
            self.waiting.extend(commands)
            self.dispatch()
        self._watch_partial()

    def pause_writing(self) -> None:  # the client reads slower than replies come
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    # dispatching -----------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Start every waiting command that may start now (see the module docstring)."""
        waiting = self.waiting
        while waiting and self.ai_task is None and not self.closing and not self.tunnel:
            args = waiting[0]
            name = args[0].upper()
            if not self.authed and name not in BEFORE_AUTH:
                if self.inflight:
                    break  # an AUTH may be on its way
                waiting.popleft()
                self._reply_now(NOAUTH)
                continue
            if is_ai_command(name):
                if self.inflight:
                    break  # after every earlier command is answered
                waiting.popleft()
                self._ai(args)
                continue
            waiting.popleft()
            if name == b"CLIENT" and len(args) == 3 and args[1].upper() == b"REPLY":
                self._client_reply(args[2].upper())
                continue
            local = self.gw.local_reply(self, name, args)
            if local is not None:
                self._reply_now(local)
                continue
            self._plain(name, args)
        self.router.flush()
        self._update_reading()

    def _plain(self, name: bytes, args: list[bytes]) -> None:
        hook = _HOOKS.get(name)
        slot = Slot(hook=hook and (lambda data, h=hook: h(self, args, data)))
        self._silence(slot)
        if name in TUNNEL_COMMANDS:
            slot.tunnel = True
            self.tunnel = True
        upstream = self.router.route(args, slot)
        self.replies.append(slot)
        self.inflight += 1
        upstream.send(args, slot)
        if self.tunnel:  # what the client pipelined after it goes to Redis as it is
            while self.waiting:
                upstream.send_raw(resp.command(*self.waiting.popleft()))

    def _client_reply(self, mode: bytes) -> None:
        """CLIENT REPLY ON|OFF|SKIP, kept by the gateway: Redis still answers every command
        (the gateway needs its replies in order) and the gateway drops the ones not wanted."""
        if mode == b"ON":
            self.replies_off = False
            self._reply_now(resp.OK)
        elif mode in (b"OFF", b"SKIP"):
            self.replies_off = self.replies_off or mode == b"OFF"
            self.skip_next = mode == b"SKIP"
        else:
            self._reply_now(resp.error("syntax error"))

    def _silence(self, slot: Slot) -> None:
        if self.replies_off or self.skip_next:
            slot.silent = True
            self.skip_next = False

    def _ai(self, args: list[bytes]) -> None:
        slot = Slot()
        self._silence(slot)
        self.replies.append(slot)
        if self.in_multi:  # RedisAI refused to run inside MULTI; EXEC's reply says so
            self.multi_items.append(ErrorReply(IN_TRANSACTION))
            slot.data = resp.QUEUED
            self.flush()
            return
        try:
            command = parse_command(args, self.gw.keyspace)
        except Exception as exc:
            slot.data = resp.encode(error_reply(exc))
            self.flush()
            return
        self.ai_task = asyncio.ensure_future(self._run_ai(command, slot))

    async def _run_ai(self, command: Any, slot: Slot) -> None:
        try:
            reply = await self.gw.ai.run(self.identity, command)
            slot.data = resp.encode(reply)
        except Exception as exc:  # a reply that cannot be encoded is a bug: tell the client
            log.exception("AI command failed")
            slot.data = resp.encode(error_reply(exc))
        finally:
            self.ai_task = None
        self.flush()
        self.dispatch()

    def _reply_now(self, data: bytes) -> None:
        slot = Slot(data)
        self._silence(slot)
        self.replies.append(slot)
        self.flush()

    # replies ---------------------------------------------------------------------------------

    def on_reply(self, upstream: Upstream, slot: Slot, data: bytes) -> None:
        """A reply from Redis for ``slot``."""
        if slot.hook is hidden:
            return
        if data[:1] == b"-" and self.router.redirect(upstream, slot, data):
            return  # sent again where the cluster said
        self.inflight -= 1
        if slot.hook is not None:
            data = slot.hook(data)
        elif self.in_multi and data == resp.QUEUED:
            self.multi_items.append(None)
        slot.data = data
        self.flush()
        if not self.inflight and self.waiting:
            self.dispatch()

    def on_raw(self, data: bytes) -> None:
        """Tunnel mode: Redis' bytes go to the client as they come."""
        self.flush()
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def on_upstream_lost(self, upstream: Upstream, why: str) -> None:
        """Redis went away: the commands it did not answer get an error, then the client is
        disconnected (its DB, user and transaction were Redis' and are gone)."""
        error = resp.error(f"gateway: {why}")
        while upstream.waiting:
            slot = upstream.waiting.popleft()
            if slot.hook is not hidden:
                self.inflight -= 1
                slot.data = error
        self.waiting.clear()
        self._close_after_replies()

    def flush(self) -> None:
        replies = self.replies
        out = []
        while replies and replies[0].data is not None:
            slot = replies.popleft()
            if not slot.silent:
                out.append(slot.data)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[arg-type]
        if self.closing and not replies:
            transport.close()

    def _close_after_replies(self) -> None:
        self.closing = True
        self._cancel_timer()
        self.flush()

    # flow control ----------------------------------------------------------------------------

    def _update_reading(self) -> None:
        """Stop reading the client while its commands or its unread replies pile up."""
        pause = self.write_paused or len(self.waiting) > MAX_WAITING
        if pause == self.paused or self.transport is None or self.transport.is_closing():
            return
        self.paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
        for upstream in self.router.upstreams():
            upstream.pause() if self.write_paused else upstream.resume()

    def _watch_partial(self) -> None:
        """A command that started arriving must finish within ``request_timeout`` (slow-loris)."""
        timeout = self.gw.config.request_timeout
        if not timeout or not self.reader.buffered:
            self._cancel_timer()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if self.reader.buffered and self.transport is not None:
            self._reply_now(resp.error("Protocol error: command not received in time"))
            self._close_after_replies()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# What the gateway learns from the replies to some commands ---------------------------------


def _on_auth(session: Session, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK and len(args) in (2, 3):
        user = args[1].decode("utf-8", "replace") if len(args) == 3 else "default"
        password = args[-1].decode("utf-8", "replace")
        session.identity = Identity(session.identity.db, user, password)
        session.authed = True
        session.router.authenticated(args[1:])
    return data


def _on_hello(session: Session, args: list[bytes], data: bytes) -> bytes:
    if data[:1] != b"*":
        return data
    words = [arg.upper() for arg in args]
    if b"AUTH" in words:
        at = words.index(b"AUTH")
        if len(args) > at + 2:
            user, password = args[at + 1], args[at + 2]
            session.identity = Identity(
                session.identity.db,
                user.decode("utf-8", "replace"),
                password.decode("utf-8", "replace"),
            )
            session.authed = True
            session.router.authenticated([user, password])
    return data


def _on_select(session: Session, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        identity = session.identity
        session.identity = Identity(int(args[1]), identity.username, identity.password)
    return data


def _on_multi(session: Session, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        session.in_multi = True
        session.multi_items = []
    return data


def _on_exec(session: Session, args: list[bytes], data: bytes) -> bytes:
    items, session.multi_items = session.multi_items, []
    was_in_multi, session.in_multi = session.in_multi, False
    if not was_in_multi or not any(items):
        return data
    answers = resp.array_items(data, 0, len(data))
    if answers is None:  # nil (WATCH), EXECABORT, ...: the transaction did not run
        return data
    replies = iter(answers)
    out = [b"*%d\r\n" % len(items)]
    for item in items:
        out.append(next(replies, resp.NIL) if item is None else resp.encode(item))
    return b"".join(out)


def _on_discard(session: Session, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        session.in_multi = False
        session.multi_items = []
    return data


def _on_reset(session: Session, args: list[bytes], data: bytes) -> bytes:
    if data == b"+RESET\r\n":
        session.identity = session.gw.identity
        session.authed = not session.gw.config.require_auth
        session.in_multi = False
        session.multi_items = []
    return data


_HOOKS = {
    b"AUTH": _on_auth,
    b"HELLO": _on_hello,
    b"SELECT": _on_select,
    b"MULTI": _on_multi,
    b"EXEC": _on_exec,
    b"DISCARD": _on_discard,
    b"RESET": _on_reset,
}
