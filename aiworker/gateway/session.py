"""One client connection to the gateway: commands in, replies out, in order.

Each command gets a ``Slot`` in ``replies`` when it is dispatched, and replies leave in that order,
however long an AI.* command takes: ``flush`` writes every leading slot that is filled, in one
write. Commands also *run* in order, as Redis runs one client's commands: plain commands are
pipelined to the client's own Redis connection (``router``), and an AI.* command starts only once
every earlier command has been answered, and holds the commands after it until it is done (RedisAI
blocked the client the same way). So a pipeline ``AI.TENSORSET t ...``, ``EXISTS t`` sees the tensor.

The connection's state lives in Redis (DB, user, transaction, subscriptions), reached by
pass-through; the gateway only follows what the replies say: AUTH and SELECT change the identity
AI.* commands run as off the connection (``aiclients.Identity``), WATCH keeps them off it (a plan's
own MULTI/EXEC would end the client's WATCH), MULTI/EXEC/DISCARD the transaction AI.* commands
join as RedisAI's did (``transaction``).

On a single Redis an AI.* command runs on the client's own connection (``runner``); model and
script stores, a connection that WATCHes, and every AI.* command on Redis Cluster run on the
blocking clients of ``aiclients``, in threads. An AI.* command's large argument is received in
place (``frames``, ``inplace``): the connection reads it straight into its own buffer.

RESP3: a client's HELLO 3 goes to Redis, and from its reply on, the client's connection to Redis
speaks RESP3 (its replies and pushes pass through as they are) and the gateway's own replies are
written in RESP3 (``resp3``: RedisAI's doubles as doubles, nil as null). Its AI.* commands run on
that connection too, their replies read in their RESP2 shapes (``resp.as_resp2``), which the plans
read: so what the client set on its connection (CLIENT TRACKING, NO-EVICT, NO-TOUCH) holds for
them as for a RESP2 client's. A push waits behind a reply Redis sent before it that the gateway
is still completing (``on_push``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial
from typing import Any, Protocol, cast

import redis

from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys

from . import resp
from .aiclients import AIClients, Identity
from .cluster import EMULATED
from .commands import is_job_command, parse_command
from .config import GatewayConfig
from .fanout import FanOut
from .frames import ProtocolError, RequestReader
from .hooks import HOOKS, ReplyHooks
from .inplace import InPlace
from .resp import ErrorReply
from .routers import ClusterRouter, SingleRouter
from .runner import Drive, Runner
from .transaction import IN_TRANSACTION, SUBSCRIBING, Done, Transaction, start
from .translate import STORES, error_reply, reply_plan
from .upstream import Slot, Upstream, hello_credentials

log = logging.getLogger("aiworker.gateway")

NOAUTH = b"-NOAUTH Authentication required.\r\n"
# Redis' answer to a HELLO without AUTH on a connection not authenticated yet
HELLO_NOAUTH = (
    b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    b"HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select "
    b"the RESP protocol version at the same time\r\n"
)
# Reading from the client pauses while this many commands, or this many bytes of them, wait to
# be dispatched.
MAX_WAITING = 4096
MAX_WAITING_BYTES = 64 * 1024 * 1024
# Commands sent to Redis and not answered past which no more are sent (their ``Slot``s are the
# gateway's memory; their replies wait in Redis while the client does not read them). A client
# that reads none of their replies by then is disconnected, as Redis disconnects one past its
# output buffer limit (the gateway would hold its commands for good).
MAX_INFLIGHT = 1024 * 1024
# Replies the client has not read that the gateway keeps (``write_paused`` past it).
MAX_UNREAD = 1024 * 1024
SUBSCRIBE_COMMANDS = {b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"}
TUNNEL_COMMANDS = {*SUBSCRIBE_COMMANDS, b"MONITOR"}
# Commands that may wait in Redis for as long as they like (a client that leaves ends them).
BLOCKING = frozenset({b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BLMPOP", b"BZPOPMIN",
                      b"BZPOPMAX", b"BZMPOP", b"XREAD", b"XREADGROUP", b"WAIT", b"WAITAOF"})  # fmt: skip
# What may pass before AUTH when the gateway requires it.
BEFORE_AUTH = {b"AUTH", b"HELLO", b"QUIT"}
# Commands that are more than passed on (the rest take ``Session._plain``'s short way).
# Unsubscribing on a connection not subscribed: Redis answers one reply per channel (one for
# none), or pushes in RESP3 (Valkey 8.0 a NOSUB error instead, ``Gateway.nosub``): the gateway
# answers them itself (one reply per command holds).
UNSUBSCRIBE_COMMANDS = {b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"}
SPECIAL = {
    *HOOKS,
    *TUNNEL_COMMANDS,
    *UNSUBSCRIBE_COMMANDS,
    *EMULATED,
    b"CLIENT",
    b"QUIT",
    b"HELLO",
}


def unsubscribed(name: bytes, channels: list[bytes], resp3: bool, nosub: bytes | None) -> bytes:
    """What Redis answers a connection subscribed to nothing that unsubscribes ``channels``
    (``nosub``: the server's error for it instead, with ``%s`` where the command's name goes)."""
    if nosub is not None:
        return nosub.replace(b"%s", name.lower())
    head = (b">3\r\n" if resp3 else b"*3\r\n") + b"$%d\r\n%s\r\n" % (len(name), name.lower())
    if not channels:
        return head + (resp.NULL if resp3 else resp.NIL) + b":0\r\n"
    return b"".join(head + b"$%d\r\n%s\r\n:0\r\n" % (len(c), c) for c in channels)


# An AI.* command with more arguments than this, or more bytes before its last (a BLOB, which
# is not parsed as text), is parsed and run in a thread: parsing a million VALUES, or decoding a
# 100 MB script source, held the event loop for seconds. Model and script stores go there too.
LARGE_ARGS = 1024
LARGE_TEXT_BYTES = 1 << 20
_STORE_NAMES = frozenset({b"AI.MODELSTORE", b"AI.MODELSET", b"AI.SCRIPTSTORE", b"AI.SCRIPTSET"})


def _large(args: list[bytes]) -> bool:
    if len(args) > LARGE_ARGS or args[0].upper() in _STORE_NAMES:
        return True
    return sum(len(arg) for arg in args[1:-1]) > LARGE_TEXT_BYTES


def _started(args: list[bytes], keyspace: Keys, runner: Runner) -> Any:
    """An AI.* command in a transaction, parsed: a store to run after EXEC, (plan, its first
    step) to queue, or ``Done`` with the error of one that cannot be parsed (only computation:
    a large command's runs in a thread)."""
    try:
        command = parse_command(args, keyspace)
    except Exception as exc:
        return Done(error_reply(exc))
    if isinstance(command, STORES):
        return command
    plan = reply_plan(runner.state, command)
    return plan, start(plan)


class Host(Protocol):
    """What a session needs of the gateway that accepted it (``server.Gateway``)."""

    config: GatewayConfig
    keyspace: Keys
    identity: Identity
    ai: AIClients
    cluster: bool
    nosub: bytes | None
    auth_required: bool
    url_refused: bool

    def admit(self, session: Session) -> bool: ...

    def left(self, session: Session) -> None: ...

    def forget(self, session: Session) -> None: ...

    def router_for(self, session: Session) -> SingleRouter | ClusterRouter: ...

    def local_reply(self, session: Session, name: bytes, args: list[bytes]) -> bytes | None: ...


class Session(ReplyHooks, asyncio.Protocol):
    """A gateway client's connection (see the module docstring)."""

    def __init__(self, gateway: Host) -> None:
        self.gw = gateway
        config = gateway.config
        self.reader = RequestReader(config.max_bulk, config.max_args, config.max_request)
        self.held: bytes | None = None  # read past Redis' unauthenticated limits, behind an AUTH
        self.transport: asyncio.Transport | None = None
        self.replies: deque[Slot] = deque()
        self.waiting: deque[list[bytes]] = deque()
        self.signed_out()
        self.transaction: Transaction | None = None  # since MULTI
        self.watching = False
        self.inflight = 0  # commands sent to Redis and not answered yet
        self.throttled = False  # dispatch stopped at MAX_INFLIGHT
        self.ai_task: asyncio.Future[Any] | Drive | None = None  # the AI.* command running
        self.ai_blocks = False  # and it is a job (RedisAI blocked the client for it)
        self.gone = False  # the client left (``connection_lost``)
        self.exec_awaited = 0  # EXECs sent whose transactions' AI.* commands await their reply
        self.blocking = 0  # blocking commands (BLOCKING) sent and not answered
        self.released = False  # its connections to Redis are closed
        self._runner_of: tuple[Identity, Runner] | None = None
        self.tunnel = False
        # an EXEC that subscribes, or whose AI.* commands may call Redis after it, is not
        # answered yet: nothing goes on
        self.holding = False
        self.exec_finishing = False  # EXEC's reply came; its AI.* commands finish it
        self.resp3 = False  # the client said HELLO 3
        self.closing = False  # close once the replies before it are written
        self.input_ended = False  # the client shut its side: close once its commands are done
        self.end_passed_on = False  # and that end went on to Redis (a blocking command waits)
        self.skip_next = False  # CLIENT REPLY SKIP
        self.replies_off = False  # CLIENT REPLY OFF
        self.paused = False  # not reading the client (``_update_reading``)
        self.upstreams_paused = False  # not reading Redis: the client does not read its replies
        self.backlog = 0  # bytes received since ``waiting`` was last empty (about)
        self.refusal: bytes | None = None  # a protocol error, answered after what came before
        self.holding_back: set[Upstream] = set()  # upstreams taking no more commands
        self.write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.router = gateway.router_for(self)

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.transport.set_write_buffer_limits(MAX_UNREAD, MAX_UNREAD // 4)
        if not self.gw.admit(self):
            self.transport.write(b"-ERR max number of clients reached\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """The client left. What it sent and the gateway did not start yet is dropped; what
        was started finishes (Redis runs every command it received; a transaction's EXEC may
        leave an AI.* command's calls to do after it), then the connections to Redis close."""
        self.closing = self.gone = True
        self.waiting.clear()
        self._cancel_timer()
        self.gw.left(self)  # its place is free at once, as in Redis, though its work finishes
        self._let_go_when_done()

    def _let_go_when_done(self) -> None:
        """Once the client is gone: as soon as no AI.* command runs and no EXEC whose AI.*
        commands have calls to make after it is unanswered, its connections to Redis close.
        Redis runs what they carried (closing sends it all first) and frees them: a BLPOP
        waiting forever ends there, as it does for a client of Redis' own."""
        if not self.gone or self.released or self.ai_task is not None or self.exec_awaited:
            return
        self.released = True
        if self.transaction is not None:  # never EXECuted: Redis drops it with the connection
            self.transaction.discard()
        self.router.close()
        self.gw.forget(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.tunnel:
            self.router.tunnel_upstream().send_raw(data)
            return
        if self.refusal is not None:
            return  # nothing after a protocol error is read
        try:
            commands = self.reader.feed(data)
        except ProtocolError as exc:
            if exc.rest is not None and self._may_sign_in(exc.commands):
                # Redis runs an AUTH before it reads on: what follows waits for its answer
                self.held = exc.rest
                self._reset_reader()
            else:
                # the commands before it run and are answered first, then the error, then the
                # connection closes (as Redis does)
                self._refuse(str(exc))
            self.waiting.extend(exc.commands)
            self.dispatch()
            return
        if commands:
            self._cancel_timer()  # progress: the next unfinished command has its own time
            self.waiting.extend(commands)
            self.dispatch()
        if self.waiting:
            self.backlog += len(data)
            self._update_reading()
        if self.reader.receiving is not None and not (self.closing or self.tunnel):
            if self.waiting:
                self.backlog += len(self.reader.receiving)
                self._update_reading()
            InPlace.start(self, self.transport, self.reader)
        if self.reader.buffered or self._timer is not None:
            self._watch_partial()

    def eof_received(self) -> bool:
        """The client shut its side of the connection (a half-close, ``nc -N``): the commands it
        sent still run and their replies are written, then the connection closes, as Redis
        does. (A command cut short by the end is dropped.) With a blocking command sent (BLPOP
        k 0), Redis frees the client when the end reaches it, ending the wait (what it answered
        before, a BLPOP served at once included, reached the client): so the end goes on to
        Redis, and the connection closes when Redis closes (``on_upstream_lost``); behind an
        AI.* job (RedisAI blocked the client for it) the job finishes but nothing after it
        runs. Its place among ``max_connections`` is free at once: the client sends nothing
        more (one that closed and left a job running would otherwise hold it until the job
        ended)."""
        self.gw.left(self)
        if self.tunnel and not self.closing:  # Redis answers what it got, then closes: then so
            return self.router.tunnel_upstream().write_eof()  # does the gateway (upstream lost)
        if self.closing or self.tunnel:
            return False  # close now
        if self.blocking and self.ai_task is None:
            self.input_ended = True
            self._cancel_timer()
            self.waiting.clear()  # behind the blocking command: Redis would not run them
            return self._pass_end_on()
        self.input_ended = True
        self._cancel_timer()
        if self.ai_task is not None and self.ai_blocks:
            self.waiting.clear()  # behind a job, which blocked the client: nor would these
        self.flush()
        return True

    def _pass_end_on(self) -> bool:
        """Half-close the connections to Redis (after what was sent): False where one cannot
        be (TLS)."""
        self.end_passed_on = True
        return all(upstream.write_eof() for upstream in self.router.upstreams())

    def pause_writing(self) -> None:  # the client reads slower than replies come
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()
        self.dispatch()  # what waited for the client to read

    # dispatching -----------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Start every waiting command that may start now (see the module docstring). While the
        client does not read its replies (``write_paused``), plain commands still go to Redis,
        which keeps their replies as it would for the client itself (the gateway stops reading
        them), but nothing the gateway answers starts: what it holds for the client stays
        bounded, and a client that sends a long pipeline before reading does not hang."""
        waiting = self.waiting
        while (
            waiting
            and self.ai_task is None
            and not self.closing
            and not self.tunnel
            and not self.holding
            and not self.holding_back
            and not self.end_passed_on
        ):
            args = waiting[0]
            name = args[0].upper()
            if not self.authed and (
                name not in BEFORE_AUTH or (name == b"HELLO" and hello_credentials(args) is None)
            ):
                if self.inflight or self.write_paused:
                    break  # an AUTH may be on its way
                waiting.popleft()
                self._reply_now(NOAUTH if name != b"HELLO" else HELLO_NOAUTH)
            elif name[:3] == b"AI.":
                if self.inflight or self.write_paused:
                    break  # after every earlier command is answered
                waiting.popleft()
                self._ai(args)
            elif name in SPECIAL:
                if (self.inflight or self.write_paused) and self._answered_here(name, args):
                    break  # once what came before is answered (a MULTI, a HELLO)
                waiting.popleft()
                self._special(name, args)
            elif self.inflight >= MAX_INFLIGHT:
                self.throttled = True
                if self.write_paused:  # and Redis keeps their replies: it waits for good
                    log.warning("client sent %d commands and read none of their replies: "
                                "disconnected", self.inflight)  # fmt: skip
                    self.waiting.clear()
                    cast(asyncio.Transport, self.transport).abort()
                break
            else:
                waiting.popleft()
                self._plain(args)
        if not waiting:
            self.backlog = 0
            if self.refusal is not None and not self.closing:
                self._reply_now(self.refusal)
                self._close_after_replies()
        self.router.flush()
        if self._read_held():
            return
        # a blocking command sent after the client's end: Redis frees it when that end reaches
        # it, as it would a direct client (and never runs what came after the command)
        if self.input_ended and self.blocking and not self.end_passed_on and self.ai_task is None:
            waiting.clear()
            if not self._pass_end_on():
                self._close_after_replies()
        self._update_reading()

    def _plain(self, args: list[bytes], slot: Slot | None = None) -> Upstream | FanOut:
        """Pass a command on to Redis (on the connection returned, or on several masters of a
        cluster: ``fanout``)."""
        if slot is None:
            slot = Slot()
        if self.replies_off or self.skip_next:
            self._silence(slot)
        upstream = self.router.route(args, slot)
        self.replies.append(slot)
        self.inflight += 1
        name = args[0].upper()
        if name in BLOCKING and (
            name[:2] != b"XR" or any(arg.upper() == b"BLOCK" for arg in args[1:-1])
        ):  # XREAD and XREADGROUP block only with BLOCK
            slot.blocking = True
            self.blocking += 1
        upstream.send(args, slot)
        return upstream

    def _special(self, name: bytes, args: list[bytes]) -> None:
        """A command the gateway answers itself, or whose reply it learns from."""
        if name == b"RESET":  # Redis ends OFF and answers it (a SKIP just before skips it)
            self.replies_off = False
        if name == b"CLIENT" and len(args) == 3 and args[1].upper() == b"REPLY":
            mode = args[2].upper()
            # ON inside MULTI is queued by Redis (whose connection's replies stay on) and
            # answered in EXEC's reply; OFF and SKIP there take effect at once (at EXEC Redis
            # would leave its array short)
            if self.transaction is None or mode != b"ON":
                if self.transaction is not None and mode == b"OFF":
                    self.transaction.replies_on = False  # EXEC runs an ON queued before it first
                self._client_reply(mode)
                return
            self.transaction.replies_on = True  # replies come again once EXEC ran it
        if name in UNSUBSCRIBE_COMMANDS and self.transaction is None:  # not subscribed: no pipe
            self._reply_now(unsubscribed(name, args[1:], self.resp3, self.gw.nosub))
            return
        transaction = self.transaction
        local = self.gw.local_reply(self, name, args)
        if local is not None:
            if transaction is not None and name != b"QUIT":  # its place: in EXEC's reply
                transaction.answered(partial(self._local_again, name, args, local))
                local = resp.QUEUED
            self._reply_now(local)
            return
        if transaction is None:
            slot = Slot(tunnel=name in TUNNEL_COMMANDS)
            slot.pushed = slot.tunnel  # in RESP3 its own reply is a push
        else:  # a SUBSCRIBE subscribes when EXEC runs (MONITOR: Redis refuses it there)
            if name in SUBSCRIBE_COMMANDS:
                if transaction.has_plans():
                    transaction.answer(ErrorReply(SUBSCRIBING))
                    self._reply_now(resp.QUEUED)
                    return
                transaction.subscribes = True
            slot = Slot(tunnel=name == b"EXEC" and transaction.subscribes)
            if name == b"EXEC" and transaction.shapes_exec():
                self.exec_awaited += 1  # ReplyHooks.on_exec counts it answered
                # its AI.* commands may call Redis after it, before the commands after it run
                self.holding = self.holding or transaction.calls_after_exec()
            if name == b"EXEC" and transaction.replies_on and self.replies_off:
                self.holding = True  # what comes after it is answered if EXEC runs the ON
        hook = HOOKS.get(name)
        if hook is not None:
            slot.hook = partial(hook, self, slot, args)
        upstream = self._plain(args, slot)
        if name == b"AUTH" or (name == b"HELLO" and hello_credentials(args) is not None):
            self.router.signing_in()
        if name == b"RESET":
            assert isinstance(upstream, Upstream)  # (never fanned out)
            self.router.reset(upstream)
        if slot.tunnel:
            if name == b"EXEC":  # a pipe if it runs: what comes after waits for its reply
                self.holding = True
            else:
                self.start_tunnel()

    def _local_again(self, name: bytes, args: list[bytes], first: bytes) -> bytes:
        """A reply the gateway gives itself, in the protocol in effect now (a transaction's
        EXEC: a HELLO may have been queued before it)."""
        return self.gw.local_reply(self, name, args) or first

    def start_tunnel(self) -> None:
        """The connection is a pipe to Redis from the command just answered or sent on: what the
        client pipelined after it goes to Redis as it is."""
        self.tunnel = True
        upstream = self.router.tunnel_upstream()
        while self.waiting:
            upstream.send_raw(resp.command(*self.waiting.popleft()))
        if self.reader.receiving is not None:  # its rest comes to the pipe, not in place
            cast(asyncio.Transport, self.transport).set_protocol(self)
        unfinished = self.reader.take_unfinished()
        if unfinished:
            upstream.send_raw(unfinished)
        self._update_reading()  # reading may have paused while commands piled up behind it
        if self.refusal is not None:  # Redis answers what came before the error, then closes
            if not self._pass_end_on():
                self._close_after_replies()
        elif self.input_ended and not upstream.write_eof():  # the client shut its side meanwhile
            self._close_after_replies()

    def _answered_here(self, name: bytes, args: list[bytes]) -> bool:
        """Whether the gateway answers this command itself (``Host.local_reply``; QUIT aside,
        which ends the connection whatever came before)."""
        if name in UNSUBSCRIBE_COMMANDS:
            return True  # in the protocol HELLO may be about to change
        if name in TUNNEL_COMMANDS:
            return True  # a pipe at once, or queued in a MULTI that may be about to start
        if name == b"CLIENT" and len(args) == 3 and args[1].upper() == b"REPLY":
            return True  # kept here, or queued in a MULTI that may be about to start
        return name != b"QUIT" and self.gw.local_reply(self, name, args) is not None

    def _client_reply(self, mode: bytes) -> None:
        """CLIENT REPLY ON|OFF|SKIP, kept by the gateway: Redis still answers every command
        (the gateway needs its replies in order) and the gateway drops the ones not wanted."""
        if mode == b"ON":  # as Redis: ends OFF and a SKIP still pending, and is answered
            self.replies_off = self.skip_next = False
            self._reply_now(resp.OK)
        elif mode == b"OFF":
            self.replies_off = True
        elif mode == b"SKIP":
            self.skip_next = not self.replies_off  # while OFF, Redis ignores it
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
        if self.transaction is not None:
            self._ai_in_transaction(self.transaction, args, slot)
            return
        self.ai_blocks = is_job_command(args[0])
        if self.ai_blocks and self.input_ended:
            self.waiting.clear()  # the client's end came: Redis would free it blocked here
        if _large(args):  # parsed and run in a thread: the other clients go on meanwhile
            self.ai_task = asyncio.ensure_future(self._parse_in_thread(args, slot))
            return
        try:
            command = parse_command(args, self.gw.keyspace)
        except Exception as exc:
            slot.data = resp.encode(error_reply(exc))
            self.flush()
            return
        if self.gw.cluster or self.watching:  # (stores went to a thread above: ``_large``)
            self.ai_task = asyncio.ensure_future(self._run_in_thread(command, slot))
        else:
            runner = self._runner()
            plan = reply_plan(runner.state, command)
            self.ai_task = runner.start(plan, partial(self._ai_done, slot))

    def _ai_in_transaction(self, transaction: Transaction, args: list[bytes], slot: Slot) -> None:
        """RedisAI refused jobs inside MULTI and ran the rest there (see ``transaction``); a
        large command is parsed and started in a thread, the next commands waiting for it."""
        if is_job_command(args[0]) or self.gw.cluster:
            transaction.answer(ErrorReply(IN_TRANSACTION))
        else:
            runner = self._runner()
            if _large(args):
                self.ai_task = asyncio.ensure_future(
                    self._queue_in_thread(transaction, args, runner, slot)
                )
                return
            self._queue(transaction, _started(args, self.gw.keyspace, runner), runner)
        slot.data = resp.QUEUED
        self.flush()

    async def _queue_in_thread(
        self, transaction: Transaction, args: list[bytes], runner: Runner, slot: Slot
    ) -> None:
        try:
            started = await self.gw.ai.compute(_started, args, self.gw.keyspace, runner)
        except Exception as exc:  # the pool is shut: the gateway is closing
            started = Done(error_reply(exc))
        self.ai_task = None
        self._queue(transaction, started, runner)
        slot.data = resp.QUEUED
        self.flush()
        self.dispatch()

    def _queue(self, transaction: Transaction, started: Any, runner: Runner) -> None:
        """Queue what ``_started`` made of an AI.* command."""
        if isinstance(started, tuple):
            plan, step = started
            if transaction.subscribes:  # its Redis calls after EXEC would meet the pipe
                plan.close()
                transaction.answer(ErrorReply(SUBSCRIBING))
            else:
                transaction.queue_started(plan, step, runner)
        elif isinstance(started, Done):
            transaction.answer(started.reply)
        else:  # a store: run at its place in EXEC's reply, as the DB and user in effect then
            transaction.after_exec(partial(self._store, started))

    async def _store(self, command: Any) -> Any:
        return await self.gw.ai.run(self.identity, command)

    async def _run_in_thread(self, command: Any, slot: Slot) -> None:
        self._ai_done(slot, await self.gw.ai.run(self.identity, command))

    async def _parse_in_thread(self, args: list[bytes], slot: Slot) -> None:
        self._ai_done(slot, await self.gw.ai.parse_and_run(self.identity, args, self.gw.keyspace))

    def _ai_done(self, slot: Slot, reply: Any) -> None:
        """An AI.* command's reply (an exception: its error) is in; the next commands may go."""
        self.ai_task = None
        try:
            slot.data = resp.encode_parts(
                error_reply(reply) if isinstance(reply, Exception) else reply, self.resp3
            )
        except Exception as exc:  # a reply that cannot be encoded is a bug: tell the client
            log.exception("AI command failed")
            slot.data = resp.encode(error_reply(exc))
        if isinstance(reply, Exception) and not isinstance(reply, (redis.RedisError, AIError)):
            log.error("AI command failed: %r", reply)
        self.flush()
        self.dispatch()

    async def finish_exec(self, transaction: Transaction, slot: Slot, data: bytes) -> None:
        """EXEC's reply once the AI.* commands in the transaction are done (``transaction``);
        the client's next commands wait for it."""
        try:
            slot.data = await transaction.exec_reply(data, self._runner())
        except Exception as exc:  # a bug: tell the client
            log.exception("EXEC failed")
            slot.data = resp.encode(error_reply(exc))
        finally:
            self.ai_task = None
            self.exec_finishing = False
        self.flush()
        self.dispatch()

    def _runner(self) -> Runner:
        """The runner of AI.* commands as the connection's identity now, on the client's own
        connection to Redis."""
        if self._runner_of is None or self._runner_of[0] != self.identity:
            state, enqueuer = self.gw.ai.state(self.identity)
            runner = Runner(self.router.own, state, enqueuer, self.gw.config.reply_timeout)
            self._runner_of = (self.identity, runner)
        return self._runner_of[1]

    def signed_out(self) -> None:
        self.identity = self.gw.identity
        self.authed = not self.gw.auth_required
        self.reader.unauthenticated = not self.authed

    def _read_held(self) -> bool:
        """Read what waited for an AUTH's answer, once it came (as Redis reads on after an
        AUTH); whether it was read."""
        if self.held is None or not (self.authed or not (self.inflight or self.waiting)):
            return False
        held, self.held = self.held, None
        self.data_received(held)
        self._update_reading()  # held bytes without a whole command in them dispatch nothing
        return True

    def _may_sign_in(self, commands: list[list[bytes]]) -> bool:
        """Whether an AUTH (or HELLO with AUTH) is on its way to Redis or about to be: while a
        connection is not authenticated, nothing else goes there."""
        return bool(self.inflight) or any(
            args[0].upper() == b"AUTH"
            or (args[0].upper() == b"HELLO" and hello_credentials(args) is not None)
            for args in (*self.waiting, *commands)
        )

    def _reply_now(self, data: bytes) -> None:
        slot = Slot(data)
        self._silence(slot)
        self.replies.append(slot)
        self.flush()

    # replies ---------------------------------------------------------------------------------

    def on_push(self, data: bytes) -> None:
        """A RESP3 push from Redis (an invalidation, a pub/sub message): to the client now,
        after the replies ready before it (it answers no command), or after an EXEC whose reply
        Redis sent before it and the gateway is still completing (nothing was sent after that
        EXEC: ``holding``)."""
        self.flush()
        if self.exec_finishing:
            self.replies.append(Slot(data))
        elif self.transport is not None and not self.closing:
            self.transport.write(data)

    def on_reply(self, upstream: Upstream, slot: Slot, data: bytes) -> None:
        """A reply from Redis for ``slot`` (``replies_done`` sends it on)."""
        if data[:1] == b"-" and self.router.redirect(upstream, slot, data):
            return  # sent again where the cluster said
        self.inflight -= 1
        if slot.blocking:
            self.blocking -= 1
        if self.transaction is not None and data == resp.QUEUED:
            self.transaction.redis_command(slot.hook)  # its hook sees its reply in EXEC's
            slot.data = data
            return
        if slot.hook is not None:
            slot.data = slot.hook(data)  # None: the hook fills the slot later
            return
        slot.data = data

    def on_backed_up(self, upstream: Upstream, over: bool) -> None:
        """``upstream`` takes no more commands (``MAX_HELD`` held behind an AUTH, or Redis not
        reading what was sent), or takes them again: meanwhile no more go to Redis, and reading
        the client pauses once its own commands pile up (at once in a pipe)."""
        if over:
            self.holding_back.add(upstream)
            self._update_reading()
            return
        self.holding_back.discard(upstream)
        if not upstream.closed:
            self.dispatch()  # what waited meanwhile (it updates reading)
        else:
            self._update_reading()

    def replies_done(self) -> None:
        """Every reply of one read from Redis is in: send them, go on with the commands."""
        self.flush()
        if self.waiting and (
            not self.inflight or (self.throttled and self.inflight < MAX_INFLIGHT)
        ):
            self.throttled = False
            self.dispatch()
        else:
            self._read_held()

    def on_raw(self, data: bytes) -> None:
        """Tunnel mode: Redis' bytes go to the client as they come, after every reply before
        them (an EXEC that subscribed may still be making its reply)."""
        self.flush()
        if self.replies:
            self.replies.append(Slot(data))
        elif self.transport is not None and not self.closing:
            self.transport.write(data)

    def on_upstream_lost(self, upstream: Upstream, why: str) -> None:
        """Redis went away: the commands it did not answer get an error, then the client is
        disconnected (its DB, user and transaction were Redis' and are gone); but a Redis
        Cluster master that could not be reached at all held none of that: its commands get
        the error and the client goes on with the other masters."""
        self.router.lost(upstream)
        if self.router.spare(upstream):
            self._unanswered(upstream, resp.error(f"gateway: {why}"), why)
            self.replies_done()
            return
        # after the client's end went on to Redis, Redis freed it: nothing more is answered
        error = b"" if self.end_passed_on else resp.error(f"gateway: {why}")
        if isinstance(self.ai_task, Drive):  # its plan would wait on a connection that is gone
            self.ai_task.cancel(redis.ConnectionError(why))
        self._unanswered(upstream, error, why)
        # the EXECs failed above never reach their hook: nothing is left to wait for
        self.exec_awaited = 0
        self.holding = False
        self.waiting.clear()
        if self.refusal is not None and self.tunnel:  # its pipe ended after what came before
            self._reply_now(self.refusal)
        self._close_after_replies()

    def _unanswered(self, upstream: Upstream, error: bytes, why: str) -> None:
        """The commands ``upstream`` did not answer get ``error`` (an AI.* command's Redis
        calls fail)."""
        while upstream.waiting:
            slot = upstream.waiting.popleft()
            if slot.internal is not None:  # an AI.* command's Redis call: the command fails
                slot.internal(redis.ConnectionError(why))
            else:
                self.inflight -= 1
                self.blocking -= slot.blocking
                slot.data = error

    def flush(self) -> None:
        if self.gone:
            self._let_go_when_done()
            return
        replies = self.replies
        out: list[bytes | memoryview] = []
        while replies and replies[0].data is not None:
            slot = replies.popleft()
            if not slot.silent:
                data = slot.data
                if type(data) is list:
                    out += data  # an AI.* command's reply in pieces
                else:
                    out.append(data)  # type: ignore[arg-type]
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(out) == 1:
            transport.write(out[0])
        elif out:
            transport.writelines(out)
        if not replies and (
            self.closing or (self.input_ended and not self.tunnel and self._all_done())
        ):
            transport.close()

    def _all_done(self) -> bool:
        """Nothing left to run or answer of what the client sent."""
        return not self.waiting and self.ai_task is None and not self.inflight

    def _close_after_replies(self) -> None:
        self.closing = True
        self._cancel_timer()
        self.flush()

    # flow control ----------------------------------------------------------------------------

    def _update_reading(self) -> None:
        """Stop reading the client while its commands pile up in the gateway (or, in a pipe,
        while Redis does not read them), and stop reading Redis while the client does not read
        its replies: they wait in Redis, as they would for the client itself."""
        if self.transport is None or self.transport.is_closing():
            return
        waiting = self.waiting
        pause = (
            self.held is not None
            or len(waiting) > MAX_WAITING
            or (self.backlog > MAX_WAITING_BYTES and bool(waiting))
            or (self.tunnel and bool(self.holding_back))
        )
        if pause != self.paused:
            self.paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
                self._cancel_timer()  # a command cut by the pause has its whole time again
                self._watch_partial()
        # an AI.* command that runs reads on: it holds only its own reply
        pause_upstreams = self.write_paused and self.ai_task is None
        if pause_upstreams != self.upstreams_paused:
            self.upstreams_paused = pause_upstreams
            for upstream in self.router.upstreams():
                upstream.pause() if pause_upstreams else upstream.resume()

    def _watch_partial(self) -> None:
        """A command that started arriving must finish within ``request_timeout`` (slow-loris),
        counted from the end of the command before it (a long pipeline makes progress)."""
        timeout = self.gw.config.request_timeout
        if not timeout or not self.reader.buffered:
            self._cancel_timer()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if self.paused:  # the gateway stopped reading, not the client
            self._watch_partial()
            return
        if self.reader.buffered and self.transport is not None and self.refusal is None:
            self._refuse("Protocol error: command not received in time")
            self.dispatch()  # after the commands before it

    def _refuse(self, message: str) -> None:
        """A protocol error: answered once what came before it is (``dispatch``); nothing
        after it is read, and what was read of it never reaches Redis (a pipe would send it)."""
        self._cancel_timer()
        self.refusal = resp.error(message)
        self._reset_reader()

    def _reset_reader(self) -> None:
        config = self.gw.config
        self.reader = RequestReader(config.max_bulk, config.max_args, config.max_request)
        self.reader.unauthenticated = not self.authed

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
