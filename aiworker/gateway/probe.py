"""What the Redis server answers where the gateway answers in its place: asked once, at start, on
a connection of the gateway's own (its URL's credentials and database)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from .upstream import Slot, Target, Upstream

PROBE_TIMEOUT_S = 2.0


class _Owner:
    """The probe connection's owner (``upstream.Upstream``): its one reply is internal."""

    def __init__(self, done: asyncio.Future[Any]) -> None:
        self.done = done

    def replies_done(self) -> None:
        pass

    def on_backed_up(self, upstream: Upstream, over: bool) -> None:
        pass

    def on_upstream_lost(self, upstream: Upstream, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(why))


async def ask(target: Target, hello: list[list[bytes]], command: list[bytes]) -> Any:
    """The decoded reply to ``command`` on a fresh connection (an error reply: redis-py's
    exception, returned); ``ConnectionError`` or ``TimeoutError`` when none came."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def answered(reply: Any) -> None:
        if not done.done():
            done.set_result(reply)

    upstream = Upstream(_Owner(done), target, hello)
    upstream.send(command, Slot(internal=answered))
    try:
        return await asyncio.wait_for(done, PROBE_TIMEOUT_S)
    finally:
        upstream.close()


class Unanswered(Exception):
    """The probe got no reply (Redis not reachable): ask again later."""


async def wants_auth(target: Target, hello: list[list[bytes]]) -> bool:
    """Whether Redis refuses a connection logged in as the gateway's URL says until it
    authenticates (a password, and none in that URL): its clients must then AUTH first, and
    Redis' limits for clients not authenticated yet apply (``Session.authed``)."""
    try:
        reply = await ask(target, hello, [b"PING"])
    except (ConnectionError, asyncio.TimeoutError) as exc:
        raise Unanswered(str(exc)) from exc
    return isinstance(reply, redis.AuthenticationError)


async def unsubscribe_error(target: Target, hello: list[list[bytes]]) -> bytes | None:
    """Valkey 8.0 answers an UNSUBSCRIBE on a connection subscribed to nothing with a NOSUB
    error where Redis and Valkey 8.1+ answer a reply per channel: that error, with ``%s`` in the
    command's place, or None (Redis' answer; also on NOAUTH/NOPERM); ``Unanswered`` when no
    reply came."""
    try:
        reply = await ask(target, hello, [b"UNSUBSCRIBE"])
    except (ConnectionError, asyncio.TimeoutError) as exc:
        raise Unanswered(str(exc)) from exc
    if isinstance(reply, redis.ResponseError) and str(reply).startswith("NOSUB"):
        return b"-%s\r\n" % str(reply).replace("'unsubscribe'", "'%s'").encode()
    return None
