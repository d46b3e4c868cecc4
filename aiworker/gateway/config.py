"""The gateway's own settings (Redis, the prefix and TLS files to reach it come from ``Settings``)."""

from __future__ import annotations

from dataclasses import dataclass

from aiworker.protocol.errors import ConfigError


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway listens and what it accepts from a client.

    ``listen`` is ``host:port`` (port 0: any free one); ``unix_socket`` a path to listen on as
    well. ``max_bulk`` is Redis' ``proto-max-bulk-len``, ``max_args`` the longest command (in
    arguments), ``max_request`` the largest command in bytes (a model sent in several chunks
    included); ``request_timeout`` the seconds a command may take to arrive once it started (a
    slow-loris client is disconnected), 0 for none. ``require_auth``: nothing but AUTH/HELLO
    passes before the client authenticated against Redis. ``tls_cert``/``tls_key`` make the
    gateway listen with TLS (``tls_ca_cert``: also require client certificates signed by it).
    ``emulate_cluster`` answers CLUSTER SLOTS/SHARDS/NODES/INFO as one shard owning every slot at
    the gateway's address. ``reuse_port`` lets several gateway processes share the port.
    """

    listen: str = "127.0.0.1:6380"
    unix_socket: str = ""
    max_connections: int = 10_000
    max_bulk: int = 512 * 1024 * 1024
    max_args: int = 1024 * 1024
    max_request: int = 1024 * 1024 * 1024
    request_timeout: float = 30.0
    require_auth: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca_cert: str = ""
    emulate_cluster: bool = False
    reuse_port: bool = False
    reply_timeout: float = 60.0
    threads: int = 32

    def __post_init__(self) -> None:
        # asyncio refused a port beyond 65535 with a traceback and uvloop bound it modulo 65536
        # (--listen 127.0.0.1:99999 served on 34463): refuse what is not a port
        if self.listen:
            port = self.listen.rpartition(":")[2]
            if not (port.isascii() and port.isdigit() and int(port) <= 65535):
                raise ConfigError(
                    f"--listen {self.listen!r}: expected host:port with a port from 0 to 65535"
                )

    @property
    def host(self) -> str:
        host, _, _ = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])
