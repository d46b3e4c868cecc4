"""The clients that carry out AI.* commands, one set per identity a gateway client took.

An identity is what a connection selected and authenticated: (DB, username, password). Its
AI.* commands run in that DB with those credentials, on clients the gateway pools for it, so
Redis' ACLs apply to them exactly as to the user's own commands. On a single Redis the asyncio
client carries the commands (its jobs share one pipelined writer and one reply reader); model and
script stores, which compile and hash whole blobs, run on a blocking client in a thread so that the
event loop keeps serving everyone else. On Redis Cluster every AI.* command runs on the blocking
``ClusterClient`` in a thread (the asyncio client targets a single Redis).

The gateway never loads a framework itself: a model stored through it is checked by a live worker
serving its device (MODELVERIFY), as a client without the framework installed would check it.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import OrderedDict
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiworker.asyncio
from aiworker.client.ops import VerifyHere
from aiworker.client.sync import Client
from aiworker.parser import Command
from aiworker.settings import Settings

from .translate import STORES, error_reply, reply_plan

log = logging.getLogger("aiworker.gateway")

# Pooled identities beyond this are closed, least recently used first, when no command uses them.
MAX_IDENTITIES = 64


@dataclass(frozen=True)
class Identity:
    """What a connection selected and authenticated (None: the gateway's own URL's)."""

    db: int | None = None
    username: str | None = None
    password: str | None = None

    def url(self, url: str) -> str:
        """``url`` with this identity's DB and credentials in place of its own (redis-py lets a
        URL's own win over keyword arguments)."""
        parts = urlsplit(url)
        netloc = parts.netloc
        if self.password is not None:
            host = netloc.rpartition("@")[2]
            user = quote(self.username or "", safe="")
            netloc = f"{user}:{quote(self.password, safe='')}@{host}"
        path, query = parts.path, parts.query
        if self.db is not None:
            if parts.scheme == "unix":
                kept = [(k, v) for k, v in parse_qsl(query) if k != "db"]
                query = urlencode([*kept, ("db", str(self.db))])
            else:
                path = f"/{self.db}"
        return urlunsplit(parts._replace(netloc=netloc, path=path, query=query))


class _Clients:
    """One identity's clients, made on first use."""

    def __init__(self, settings: Settings, identity: Identity, reply_timeout: float) -> None:
        self.settings = settings
        self.identity = identity
        self.reply_timeout = reply_timeout
        self.in_use = 0
        self._async: Any = None
        self._blocking: Any = None

    def asyncio_client(self) -> Any:
        if self._async is None:
            self._async = aiworker.asyncio.Client.from_settings(
                self._settings(), enable_postprocess=False, reply_timeout=self.reply_timeout,
                max_concurrency=64,
            )  # fmt: skip
        return self._async

    def blocking_client(self) -> Any:
        """A ``Client``, or a ``ClusterClient`` on a cluster (made in a worker thread: it asks
        the server what it is)."""
        if self._blocking is None:
            self._blocking = Client.from_settings(
                self._settings(), enable_postprocess=False, reply_timeout=self.reply_timeout
            )
        return self._blocking

    def _settings(self) -> Settings:
        return self.settings.replace(redis_url=self.identity.url(self.settings.redis_url))

    async def close(self) -> None:
        if self._async is not None:
            await self._async.aclose()
        if self._blocking is not None:
            await asyncio.to_thread(self._blocking.close)


def _drive_blocking(client: Any, plan: Generator[Any, Any, Any]) -> Any:
    """A plan on a blocking client (in a worker thread), models never loaded here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unverified model's warning: no one to show it to
        step = next(plan)
        while True:
            try:
                result = False if isinstance(step, VerifyHere) else client._step(step)
            except Exception as exc:
                step = plan.throw(exc)
                continue
            step = plan.send(result)


class AIClients:
    """Carries out AI.* commands for every identity (see the module docstring)."""

    def __init__(self, settings: Settings, cluster: bool, reply_timeout: float, threads: int):
        self.settings = settings
        self.cluster = cluster
        self.reply_timeout = reply_timeout
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="gateway-ai")
        self._clients: OrderedDict[Identity, _Clients] = OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()

    def _for(self, identity: Identity) -> _Clients:
        clients = self._clients.get(identity)
        if clients is None:
            clients = self._clients[identity] = _Clients(
                self.settings, identity, self.reply_timeout
            )
            self._evict()
        self._clients.move_to_end(identity)
        return clients

    def _evict(self) -> None:
        idle = [i for i, c in self._clients.items() if c.in_use == 0]
        for identity in idle[: max(0, len(self._clients) - MAX_IDENTITIES)]:
            task = asyncio.ensure_future(self._clients.pop(identity).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def run(self, identity: Identity, cmd: Command) -> Any:
        """RedisAI's reply to ``cmd`` (an ``ErrorReply`` when it failed)."""
        clients = self._for(identity)
        clients.in_use += 1
        try:
            if self.cluster or isinstance(cmd, STORES):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, self._run_blocking, clients, cmd)
            client = clients.asyncio_client()
            return await self._drive_async(client, reply_plan(client._state, cmd))
        except Exception as exc:
            return error_reply(exc)
        finally:
            clients.in_use -= 1

    @staticmethod
    def _run_blocking(clients: _Clients, cmd: Command) -> Any:
        client = clients.blocking_client()
        try:
            return _drive_blocking(client, reply_plan(client._state, cmd))
        except StopIteration as stop:
            return stop.value

    @staticmethod
    async def _drive_async(client: Any, plan: Generator[Any, Any, Any]) -> Any:
        try:
            step = next(plan)
            while True:
                try:
                    result = False if isinstance(step, VerifyHere) else await client._step(step)
                except Exception as exc:
                    step = plan.throw(exc)
                    continue
                step = plan.send(result)
        except StopIteration as stop:
            return stop.value

    async def close(self) -> None:
        for clients in list(self._clients.values()):
            try:
                await clients.close()
            except Exception as exc:  # closing on the way out: nothing left to tell
                log.debug("closing AI clients: %s", exc)
        self._clients.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
