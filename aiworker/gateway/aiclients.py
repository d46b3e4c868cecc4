"""What AI.* commands run as, and the blocking clients for the work done off the event loop.

An identity is what a connection selected and authenticated: (DB, username, password). On a single
Redis most AI.* commands run on the client's own connection (``runner``); this module holds, per
identity, what that needs besides: the device queues of models and scripts (``State``, cached),
the length limits of job queues (``Enqueuer``), and a blocking client for the work done in
threads, with that identity's DB and credentials (so Redis' ACLs apply to it exactly as to the
user's own commands): model and script stores (they hash whole blobs), the commands of a
connection that WATCHes keys (a plan's MULTI/EXEC would end the client's WATCH), and every AI.*
command on Redis Cluster (on the ``ClusterClient``).

The gateway never loads a framework itself: a model or script stored through it is checked by a
live worker serving its device (MODELVERIFY, SCRIPTVERIFY), as a client without the framework
installed would check it. (Importing torch here froze every connection for ~0.2 s, compiling a
script held the interpreter lock, and the process grew by ~200 MB.)
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.cluster import ClusterNode
from redis.exceptions import RedisClusterException

from aiworker.client.ops import State, VerifyHere
from aiworker.client.sync import Client
from aiworker.parser import Command
from aiworker.protocol.keys import Keys
from aiworker.settings import Settings
from aiworker.storage.plans import drive_steps
from aiworker.storage.queues import Enqueuer

from .commands import parse_command
from .translate import KeyFirst, error_reply, reply_plan

T = TypeVar("T")

log = logging.getLogger("aiworker.gateway")

# Pooled identities beyond this are closed, least recently used first, when no command uses them.
MAX_IDENTITIES = 64


@dataclass(frozen=True)
class Identity:
    """What a connection selected and authenticated (None: the gateway's own URL's). Username
    and password are the client's bytes decoded with ``surrogateescape`` (Redis' passwords are
    any bytes): ``credentials`` gives them back exactly."""

    db: int | None = None
    username: str | None = None
    password: str | None = None

    def credentials(self) -> dict[str, bytes]:
        """redis-py's ``username`` and ``password`` arguments, as the client sent them (none
        when it never authenticated: the gateway's URL's own apply)."""
        if self.password is None:
            return {}
        return {
            "username": _exact(self.username or "default"),
            "password": _exact(self.password),
        }

    def url(self, url: str) -> str:
        """``url`` with this identity's DB in place of its own, and without credentials when it
        has its own (``credentials``: redis-py lets a URL's own, in its user part or its query,
        win over keyword arguments, and unquotes a URL's as UTF-8). The DB goes in the query,
        where redis-py reads it first (before a path's)."""
        parts = urlsplit(url)
        netloc, query = parts.netloc, parts.query
        if self.password is not None:
            netloc = netloc.rpartition("@")[2]
            query = _without(query, {"username", "password"})
        if self.db is not None:
            query = urlencode([*parse_qsl(_without(query, {"db"}), True), ("db", str(self.db))])
        # not urlunsplit: it writes unix:///path as unix:/path, which redis-py refuses
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _without(query: str, names: set[str]) -> str:
    """A URL's ``query`` without the values of ``names``."""
    return urlencode([(k, v) for k, v in parse_qsl(query, True) if k not in names])


def _exact(value: str) -> bytes:
    """The bytes a client sent, from their ``surrogateescape`` text."""
    return value.encode("utf-8", "surrogateescape")


class _Clients:
    """One identity's device cache and blocking client (made on first use)."""

    def __init__(
        self,
        settings: Settings,
        identity: Identity,
        reply_timeout: float,
        masters: Callable[[], list[tuple[str, int]]] | None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.reply_timeout = reply_timeout
        self.masters = masters  # on a cluster: the masters the gateway knows
        self.state = State(Keys(settings.prefix), raw=True, unverified=_log_unverified)
        self.enqueuer = Enqueuer(self.state.keyspace)
        self.in_use = 0
        self._blocking: Any = None

    def blocking_client(self) -> Any:
        """A ``Client``, or a ``ClusterClient`` when the gateway serves a cluster (made in a
        worker thread: a cluster client learns the slot map). The gateway's own knowledge
        decides which, never the identity's: a user whose ACL denies INFO, or a Redis not
        reachable yet, would take a cluster for a single node. A client that could not be made
        is not kept: the next command tries again."""
        if self._blocking is None:
            settings = self.settings.replace(redis_url=self.identity.url(self.settings.redis_url))
            # on a cluster it starts from any master the gateway knows, the URL's node being
            # only one of them (it may have failed over)
            nodes = {}
            if self.masters is not None:
                nodes["startup_nodes"] = [ClusterNode(*node) for node in self.masters()]  # type: ignore[no-untyped-call]
            try:
                self._blocking = Client.from_settings(
                    settings,
                    cluster=self.masters is not None,
                    enable_postprocess=False,
                    reply_timeout=self.reply_timeout,
                    **self.identity.credentials(),
                    **nodes,
                )
            except RedisClusterException as exc:
                raise _cause(exc) from exc
        return self._blocking

    async def close(self) -> None:
        if self._blocking is not None:
            await asyncio.to_thread(self._blocking.close)


def _cause(exc: RedisClusterException) -> BaseException:
    """The Redis error that kept a cluster client from starting, from ``exc``'s chain: redis-py
    words a node that refused CLUSTER SLOTS (NOPERM) as one not in cluster mode, and an
    unreachable one as a cluster that cannot be connected."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.RedisError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _log_unverified(message: str) -> None:
    """A store accepted unchecked (no live worker serves its device, or the model is too large
    to stage for one): its client gets OK, as RedisAI's would have for a model that loads."""
    log.warning("%s", message)


def _drive_blocking(client: Any, plan: Generator[Any, Any, Any]) -> Any:
    """A plan on a blocking client (in a worker thread), models and scripts never checked here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (scans' Experimental warning: no one to show it to)
        return drive_steps(
            plan, lambda step: False if isinstance(step, VerifyHere) else client._step(step)
        )


class AIClients:
    """Per-identity state and blocking clients (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        reply_timeout: float,
        threads: int,
        masters: Callable[[], list[tuple[str, int]]] | None = None,
    ):
        self.settings = settings
        self.reply_timeout = reply_timeout
        self.masters = masters  # the gateway serves a Redis Cluster: the masters it knows
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="gateway-ai")
        self._clients: OrderedDict[Identity, _Clients] = OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()

    def _for(self, identity: Identity) -> _Clients:
        clients = self._clients.get(identity)
        if clients is None:
            clients = self._clients[identity] = _Clients(
                self.settings, identity, self.reply_timeout, self.masters
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

    def state(self, identity: Identity) -> tuple[State, Enqueuer]:
        """What ``identity``'s AI.* commands keep between them: the device queues of models and
        scripts, the length limits of job queues."""
        clients = self._for(identity)
        return clients.state, clients.enqueuer

    async def run(self, identity: Identity, cmd: Command | KeyFirst) -> Any:
        """RedisAI's reply to ``cmd`` (an ``ErrorReply`` when it failed), in a thread."""
        return await self._in_thread(identity, self._run_blocking, cmd)

    async def parse_and_run(self, identity: Identity, args: list[bytes], keyspace: Keys) -> Any:
        """``run`` for a command still to be parsed: a large one, whose parsing (text, a
        million VALUES) would hold the event loop and every other client with it."""
        return await self._in_thread(identity, self._parse_and_run_blocking, args, keyspace)

    @staticmethod
    def _parse_and_run_blocking(clients: _Clients, args: list[bytes], keyspace: Keys) -> Any:
        try:
            cmd = parse_command(args, keyspace)
        except Exception as exc:
            return error_reply(exc)
        return AIClients._run_blocking(clients, cmd)

    async def compute(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in a thread of the pool: computation that would hold the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    async def _in_thread(self, identity: Identity, call: Any, *args: Any) -> Any:
        clients = self._for(identity)
        clients.in_use += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, call, clients, *args)
        finally:
            clients.in_use -= 1

    @staticmethod
    def _run_blocking(clients: _Clients, cmd: Command | KeyFirst) -> Any:
        try:
            return _drive_blocking(clients.blocking_client(), reply_plan(clients.state, cmd))
        except Exception as exc:
            return error_reply(exc)

    async def close(self) -> None:
        for clients in list(self._clients.values()):
            try:
                await clients.close()
            except Exception as exc:  # closing on the way out: nothing left to tell
                log.debug("closing AI clients: %s", exc)
        self._clients.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
