"""What the gateway learns from Redis' replies to some of a client's commands.

A hook ``hook(session, slot, args, reply)`` sees the reply first and returns the reply the client
gets, or None when it fills the slot itself later (EXEC of a transaction holding AI.* commands):
AUTH and HELLO change the identity AI.* commands run as off the connection, SELECT its DB; WATCH
and UNWATCH whether AI.* commands may use the connection; MULTI, EXEC, DISCARD and RESET the
transaction AI.* commands join (``transaction``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import resp
from .aiclients import Identity
from .transaction import Transaction

if TYPE_CHECKING:
    from .session import Session
    from .upstream import Slot


def _on_auth(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK and len(args) in (2, 3):
        user = args[1].decode("utf-8", "replace") if len(args) == 3 else "default"
        password = args[-1].decode("utf-8", "replace")
        session.identity = Identity(session.identity.db, user, password)
        session.authed = True
        session.router.authenticated(args[1:])
    return data


def _on_hello(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
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


def _on_select(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        identity = session.identity
        session.identity = Identity(int(args[1]), identity.username, identity.password)
    return data


def _on_watch(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        session.watching = True
    return data


def _on_unwatch(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        session.watching = False
    return data


def _on_multi(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        session.transaction = Transaction()
    return data


def _on_exec(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes | None:
    transaction, session.transaction = session.transaction, None
    session.watching = False
    if transaction is None or not transaction.holds_ai():
        return data
    session.ai_task = asyncio.ensure_future(session.finish_exec(transaction, slot, data))
    return None


def _on_discard(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
    if data == resp.OK:
        if session.transaction is not None:
            session.transaction.discard()
        session.transaction = None
        session.watching = False
    return data


def _on_reset(session: Session, slot: Slot, args: list[bytes], data: bytes) -> bytes:
    if data == b"+RESET\r\n":
        session.identity = session.gw.identity
        session.authed = not session.gw.config.require_auth
        if session.transaction is not None:
            session.transaction.discard()
        session.transaction = None
        session.watching = False
    return data


HOOKS = {
    b"AUTH": _on_auth,
    b"HELLO": _on_hello,
    b"SELECT": _on_select,
    b"WATCH": _on_watch,
    b"UNWATCH": _on_unwatch,
    b"MULTI": _on_multi,
    b"EXEC": _on_exec,
    b"DISCARD": _on_discard,
    b"RESET": _on_reset,
}
