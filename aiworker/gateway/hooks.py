"""What a session learns from Redis' replies to some of its client's commands.

``HOOKS[name](session, slot, args, reply)`` sees the reply first and returns the reply the client
gets, or None when the session fills the slot later (EXEC of a transaction holding AI.* commands).
AUTH and HELLO change the identity AI.* commands run as off the connection, HELLO and RESET the
protocol the client speaks (``resp3``), SELECT the DB; WATCH and UNWATCH whether AI.* commands
may use the connection; MULTI, EXEC, DISCARD and RESET the transaction AI.* commands join
(``transaction``). COMMAND's replies get RedisAI's commands added (``command_table``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from . import resp
from .aiclients import Identity
from .command_table import with_ai_commands
from .frames import RequestReader
from .routers import ClusterRouter, SingleRouter
from .transaction import Transaction
from .upstream import Slot, hello_credentials


class ReplyHooks:
    """The hooks, as methods of the session whose state they change (``session.Session``)."""

    identity: Identity
    authed: bool
    reader: RequestReader
    resp3: bool
    watching: bool
    transaction: Transaction | None
    ai_task: Any
    exec_awaited: int
    exec_finishing: bool
    holding: bool
    replies_off: bool
    skip_next: bool
    router: SingleRouter | ClusterRouter

    def signed_out(self) -> None:
        """Back to the identity and authentication a connection starts with."""
        raise NotImplementedError

    def start_tunnel(self) -> None:
        """From the command just answered on, the connection is a pipe to Redis."""
        raise NotImplementedError

    def finish_exec(
        self, transaction: Transaction, slot: Slot, data: bytes
    ) -> Coroutine[Any, Any, None]:
        """Fill EXEC's slot once the transaction's AI.* commands are done."""
        raise NotImplementedError

    def _signed_in(self, username: bytes, password: bytes) -> None:
        self.identity = Identity(  # any bytes, kept exactly (Identity.credentials)
            self.identity.db,
            username.decode("utf-8", "surrogateescape"),
            password.decode("utf-8", "surrogateescape"),
        )
        self.authed = True
        self.reader.unauthenticated = False
        self.router.authenticated([username, password])

    def _no_transaction(self) -> None:
        if self.transaction is not None:
            self.transaction.discard()
        self.transaction = None
        self.watching = False

    def on_auth(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data == resp.OK and len(args) in (2, 3):
            self._signed_in(args[1] if len(args) == 3 else b"default", args[-1])
        return data

    def _speak(self, resp3: bool) -> None:
        self.resp3 = resp3
        self.router.speak(resp3)

    def on_hello(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data[:1] not in (b"*", b"%"):  # refused (an error): nothing changed
            return data
        credentials = hello_credentials(args)
        if credentials is not None:  # Redis checked them: its reply is no error
            self._signed_in(*credentials)
        if len(args) > 1:  # Redis accepts only 2 and 3, spelt so
            self._speak(args[1] == b"3")
        return data

    def on_command(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        return with_ai_commands(args, data, self.resp3)  # RedisAI's entries in Redis' table

    def on_select(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data == resp.OK:
            identity = self.identity
            self.identity = Identity(int(args[1]), identity.username, identity.password)
        return data

    def on_watch(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data == resp.OK:
            self.watching = True
        return data

    def on_unwatch(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data == resp.OK:
            self.watching = False
        return data

    def on_multi(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data == resp.OK:
            self.transaction = Transaction(lambda: self.resp3)
        return data

    def on_exec(self, slot: Slot, args: list[bytes], data: bytes) -> bytes | None:
        self.exec_awaited = max(0, self.exec_awaited - 1)
        self.holding = False  # what came after it may go (AI.* commands: once they are done)
        if slot.tunnel:  # the transaction subscribes: a pipe from here if it ran
            slot.tunnel = data[:1] == b"*" and data[:3] != b"*-1"
            if slot.tunnel:
                self.start_tunnel()
        if data[:1] == b"-" and not data.startswith(b"-EXECABORT"):
            return data  # no transaction ran (EXEC without MULTI): nothing changed, WATCH kept
        transaction, self.transaction = self.transaction, None
        self.watching = False
        ran = data[:1] == b"*" and data[:3] != b"*-1"  # not aborted (EXECABORT, a WATCH)
        if ran and transaction is not None and transaction.replies_on:
            self.replies_off = self.skip_next = False  # EXEC ran the CLIENT REPLY ON queued
        if transaction is None or not transaction.shapes_exec():
            return data
        self.exec_finishing = True
        self.ai_task = asyncio.ensure_future(self.finish_exec(transaction, slot, data))
        return None

    def on_discard(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data == resp.OK:
            self._no_transaction()
        return data

    def on_reset(self, slot: Slot, args: list[bytes], data: bytes) -> bytes:
        if data == b"+RESET\r\n":
            self.signed_out()
            self._no_transaction()
            self._speak(False)
        return data


HOOKS: dict[bytes, Callable[..., bytes | None]] = {
    b"AUTH": ReplyHooks.on_auth,
    b"HELLO": ReplyHooks.on_hello,
    b"COMMAND": ReplyHooks.on_command,
    b"SELECT": ReplyHooks.on_select,
    b"WATCH": ReplyHooks.on_watch,
    b"UNWATCH": ReplyHooks.on_unwatch,
    b"MULTI": ReplyHooks.on_multi,
    b"EXEC": ReplyHooks.on_exec,
    b"DISCARD": ReplyHooks.on_discard,
    b"RESET": ReplyHooks.on_reset,
}
