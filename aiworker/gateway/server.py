"""``Gateway``: listens for Redis clients (TCP, TLS, unix socket) and gives each a ``Session``.

The gateway keeps nothing a restart would lose: every session's state is Redis' (its connection's
DB, user and transaction) or the client's, so any number of gateways can serve the same Redis,
share a port (``reuse_port``: each process accepts its share) or stand behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio
from redis.connection import parse_url

from aiworker.protocol.errors import ConfigError
from aiworker.protocol.keys import Keys
from aiworker.settings import Settings, hide_password
from aiworker.storage.redis_options import tls_kwargs

from . import resp
from .aiclients import AIClients, Identity
from .cluster import Node, SlotMap, emulated_reply
from .command_table import getkeys_reply
from .commands import is_ai_command
from .config import GatewayConfig
from .probe import Unanswered, unsubscribe_error, wants_auth
from .routers import ClusterRouter, SingleRouter
from .session import Session
from .upstream import Target

log = logging.getLogger("aiworker.gateway")

# A ``rediss://`` URL's ``ssl_cert_reqs``, as redis-py reads it.
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def _client_tls(settings: Settings) -> ssl.SSLContext:
    """The TLS of the gateway's own connections to Redis, as redis-py makes a worker's from the
    same settings (``SSLConnection``): the URL's ``ssl_cert_reqs``, ``ssl_check_hostname``,
    ``ssl_*`` files (which win over the settings' files, as in redis-py), ``ssl_ca_path``,
    ``ssl_ca_data``, ``ssl_password``, ``ssl_min_version`` and ``ssl_ciphers`` honoured; the
    system's CAs trusted too, as there."""
    url = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    ca = url.get("ssl_ca_certs", settings.tls_ca_cert) or None
    cert = url.get("ssl_certfile", settings.tls_cert) or None
    key = url.get("ssl_keyfile", settings.tls_key) or None
    ca_path, ca_data = url.get("ssl_ca_path") or None, url.get("ssl_ca_data") or None
    verify = _VERIFY_MODES.get(str(url.get("ssl_cert_reqs", "required")).lower())
    if verify is None:
        raise ConfigError(
            f"ssl_cert_reqs={url['ssl_cert_reqs']!r} in the Redis URL: none, optional or required"
        )
    with _naming("Redis TLS", (ca or "", ca_path or "", cert or "", key or "")):
        context = ssl.create_default_context()
        context.check_hostname = bool(url.get("ssl_check_hostname", True)) and bool(verify)
        context.verify_mode = verify
        for flag in url.get("ssl_include_verify_flags") or ():
            context.verify_flags |= flag
        for flag in url.get("ssl_exclude_verify_flags") or ():
            context.verify_flags &= ~flag
        if cert:
            context.load_cert_chain(cert, key, password=url.get("ssl_password") or None)
        if ca or ca_path or ca_data:
            context.load_verify_locations(cafile=ca, capath=ca_path, cadata=ca_data)
        if url.get("ssl_min_version") is not None:
            context.minimum_version = url["ssl_min_version"]
        if url.get("ssl_ciphers"):
            context.set_ciphers(url["ssl_ciphers"])
    return context


def _server_tls(config: GatewayConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        if config.tls_key or config.tls_ca_cert:  # not plain text: the user asked for TLS
            raise ConfigError(
                "the gateway's listening TLS needs its certificate (--tls-listen-cert)"
            )
        return None
    with _naming("listening TLS", (config.tls_cert, config.tls_key, config.tls_ca_cert)):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key or None)
        if config.tls_ca_cert:
            context.load_verify_locations(config.tls_ca_cert)
            context.verify_mode = ssl.CERT_REQUIRED
    return context


# Descriptors kept for what is not a client's (Redis' CONFIG_MIN_RESERVED_FDS), besides the
# AI.* commands' threads, each with a connection of its own.
RESERVED_FILES = 32


def fit_open_files(config: GatewayConfig) -> tuple[GatewayConfig, str]:
    """``config`` with no more connections than the process may open files for, each client
    taking two (its own, and its connection to Redis): the soft limit raised to the hard one
    first, and where even that is too low, fewer connections, and a warning to log once the
    gateway listens (as Redis lowers ``maxclients``). A client past the limit then gets Redis'
    "max number of clients reached" instead of a connection closed without a word, or accepted
    but never served."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = RESERVED_FILES + config.threads + 2 * config.max_connections
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return config, ""
    fits = max(1, (soft - RESERVED_FILES - config.threads) // 2)
    warning = (
        f"open files limit {soft}: the gateway serves {fits} connections, not "
        f"{config.max_connections} (raise the limit: ulimit -n)"
    )
    return dataclasses.replace(config, max_connections=fits), warning


@contextlib.contextmanager
def _naming(what: str, files: tuple[str, ...]) -> Iterator[None]:
    """ssl's errors name no file ("[Errno 2] No such file or directory", "PEM lib"): a
    ``ConfigError`` that names them."""
    try:
        yield
    except OSError as exc:  # ssl.SSLError included
        named = ", ".join(f for f in files if f)
        raise ConfigError(f"cannot load the gateway's {what} files ({named}): {exc}") from exc


class Gateway:
    """The RedisAI wire on stock Redis (see ``aiworker.gateway``)."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.settings = settings
        self.config, self._files_warning = fit_open_files(config)
        self.keyspace = Keys(settings.prefix)
        self.identity = Identity()
        self.sessions: set[Session] = set()  # until their work is done (``forget``)
        self.connected: set[Session] = set()  # what max_connections counts
        self.servers: list[asyncio.AbstractServer] = []
        self._socket_file: int | None = None  # the unix socket file's inode (``close``)
        self.cluster = False
        self.slots: SlotMap | None = None
        self.nosub: bytes | None = None  # ``probe.unsubscribe_error``
        self._probing: asyncio.Task[None] | None = None  # it, while not answered yet
        self.probed = False  # the probe was answered
        # clients must AUTH before anything else: --require-auth, or Redis wants it (``probe``)
        self.auth_required = config.require_auth
        # Redis refuses the URL's login (no password, or a wrong one): the URL's SELECT too
        self.url_refused = False
        url = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        tls_kwargs(settings)  # TLS files with a plain redis:// URL: refused, as a worker does
        self._tls = _client_tls(settings) if settings.redis_url.startswith("rediss") else None
        self._target = Target(
            url.get("host", "127.0.0.1"), int(url.get("port", 6379)), url.get("path"), self._tls
        )
        self._hello: list[list[bytes]] = []
        if url.get("password"):
            self._hello.append(
                [b"AUTH", *([url["username"].encode()] if url.get("username") else []),
                 url["password"].encode()]
            )  # fmt: skip
        if int(url.get("db", 0) or 0):
            self._hello.append([b"SELECT", str(url["db"]).encode()])
        self.ai: AIClients

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Find out what Redis is (a cluster?), then listen."""
        kwargs: dict[str, Any] = {}
        if self._tls is not None:
            kwargs = {"ssl_ca_certs": self.settings.tls_ca_cert or None}
            if self.settings.tls_cert:
                kwargs |= {"ssl_certfile": self.settings.tls_cert}
                kwargs |= {"ssl_keyfile": self.settings.tls_key or None}
        seed = redis.asyncio.Redis.from_url(self.settings.redis_url, **kwargs)
        try:
            info = await seed.info("cluster")
            self.cluster = bool(info.get("cluster_enabled"))
        except redis.ResponseError:  # NOPERM: taken for a single Redis
            self.cluster = False
        except redis.AuthenticationError as exc:  # reachable: its clients sign in (``probe``)
            log.warning("%s: clients must AUTH; taking it for a single Redis", self._refusal(exc))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("Redis not reachable yet (%s): taking it for a single Redis", exc)
        await self._probe()
        if self.cluster:
            self.slots = SlotMap(seed)
            await self.slots.load()
        else:
            await seed.aclose()
        slots = self.slots
        masters = (lambda: list(slots.nodes)) if slots is not None else None
        self.ai = AIClients(self.settings, self.config.reply_timeout, self.config.threads, masters)
        loop = asyncio.get_running_loop()
        tls = _server_tls(self.config)
        if self.config.emulate_cluster and not self.config.listen:
            raise ConfigError("--emulate-cluster describes a TCP address: give one (--listen)")
        if self.config.listen:
            self.servers.append(
                await loop.create_server(
                    lambda: Session(self),
                    self.config.host,
                    self.config.port,
                    ssl=tls,
                    reuse_port=self.config.reuse_port or None,
                    backlog=1024,
                )
            )
        if self.config.unix_socket:
            self.servers.append(
                await loop.create_unix_server(lambda: Session(self), self.config.unix_socket)
            )
            self._socket_file = os.stat(self.config.unix_socket).st_ino
        if self._files_warning:
            log.warning("%s", self._files_warning)
        places = [self.address_text()] if self.config.listen else []
        log.info(
            "gateway on %s -> %s%s",
            " and ".join(places + [self.config.unix_socket] * bool(self.config.unix_socket)),
            hide_password(self.settings.redis_url),
            " (Redis Cluster)" if self.cluster else "",
        )

    def _refusal(self, exc: Exception) -> str:
        """What Redis' refusal of the URL's login means (without a password in the URL, its
        NOAUTH to redis-py's HELLO, whose text would send an operator looking for a HELLO)."""
        if any(command[0] == b"AUTH" for command in self._hello):
            return f"Redis refused the credentials of the gateway's URL ({exc})"
        return "Redis wants a password the gateway's URL does not give"

    def address(self) -> tuple[str, int]:
        """The TCP address listened on (the port picked when 0 was asked); ("", 0) when the
        gateway listens on a unix socket only."""
        for server in self.servers:
            for sock in getattr(server, "sockets", ()):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    name = sock.getsockname()
                    return str(name[0]), int(name[1])
        if not self.config.listen:
            return "", 0
        return self.config.host, self.config.port

    def address_text(self) -> str:
        host, port = self.address()
        return f"{host}:{port}"

    async def serve_forever(self) -> None:
        await asyncio.gather(*(server.serve_forever() for server in self.servers))

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        for server in self.servers:
            await server.wait_closed()
        self._remove_socket_file()
        await self.ai.close()
        if self.slots is not None:
            await self.slots.seed.aclose()

    def _remove_socket_file(self) -> None:
        """Remove the unix socket's file, as Redis does on shutdown: unless another process
        listens there now (its file replaced this one's)."""
        path = self.config.unix_socket
        with contextlib.suppress(OSError):
            if self._socket_file is not None and os.stat(path).st_ino == self._socket_file:
                os.unlink(path)
        self._socket_file = None

    # sessions --------------------------------------------------------------------------------

    async def _probe(self) -> None:
        """What the server answers where the gateway answers for it (``probe``); Redis not
        reachable: asked again when the next client connects."""
        try:
            self.nosub = await unsubscribe_error(self._target, self._hello)
            self.url_refused = await wants_auth(self._target, self._hello)
            self.auth_required = self.config.require_auth or self.url_refused
            self.probed = True
        except Unanswered:
            pass
        finally:
            self._probing = None

    def admit(self, session: Session) -> bool:
        if not self.probed and self._probing is None:
            self._probing = asyncio.ensure_future(self._probe())
        most = self.config.max_connections
        # clients gone while their work finishes: as many again at most (each holds its
        # connection to Redis until then)
        if len(self.connected) >= most or len(self.sessions) >= 2 * most:
            return False
        self.connected.add(session)
        self.sessions.add(session)
        return True

    def left(self, session: Session) -> None:
        self.connected.discard(session)

    def forget(self, session: Session) -> None:
        self.sessions.discard(session)

    def router_for(self, session: Session) -> SingleRouter | ClusterRouter:
        if self.slots is not None:
            return ClusterRouter(session, self.slots, self._node_target, self._hello)
        return SingleRouter(session, self._target, self._hello)

    def _node_target(self, node: Node) -> Target:
        return Target(node[0], node[1], None, self._tls)

    def local_reply(self, session: Session, name: bytes, args: list[bytes]) -> bytes | None:
        """Replies the gateway gives itself: QUIT, COMMAND GETKEYS of an AI.* command, and the
        cluster's shape (with ``emulate_cluster``, or always before a real cluster)."""
        if name == b"QUIT":
            session.closing = True
            return resp.OK
        if name == b"COMMAND" and len(args) > 2 and is_ai_command(args[2]):
            sub = args[1].upper()
            if sub in (b"GETKEYS", b"GETKEYSANDFLAGS"):  # Redis does not know AI.* commands
                return getkeys_reply(args, self.keyspace, session.resp3)
        if self.config.emulate_cluster or self.cluster:
            host, port = self._seen_address(session)
            return emulated_reply(args, host, port, session.resp3)
        return None

    def _seen_address(self, session: Session) -> tuple[str, int]:
        """The address the client reached the gateway at (what a cluster client must use)."""
        if session.transport is not None:
            name = session.transport.get_extra_info("sockname")
            if isinstance(name, tuple) and len(name) >= 2:
                return str(name[0]), int(name[1])
        return self.address()


async def serve(settings: Settings, config: GatewayConfig) -> None:
    """Run a gateway until cancelled."""
    gateway = Gateway(settings, config)
    await gateway.start()
    try:
        await gateway.serve_forever()
    finally:
        await gateway.close()
