"""A real Redis Cluster for tests: 3 masters + 3 replicas on free ports, and helpers to kill a
master and wait for its replica's promotion."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from aiworker.embedded import RedisServer, free_port

# Short enough that a failover takes a few seconds, long enough that a busy 2-core machine does
# not make a healthy node look dead.
NODE_TIMEOUT_MS = 2000


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, created with ``redis-cli --cluster``."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="aiworker-cluster-"))
        self.servers: list[RedisServer] = []
        self.masters = masters
        self.replicas = replicas

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        """A URL naming one node: the cluster client discovers the others."""
        return f"redis://127.0.0.1:{self.servers[0].port}/0"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for n in range(self.masters * (1 + self.replicas)):
            node_dir = self.directory / f"node{n}"
            node_dir.mkdir()
            server = RedisServer(
                port=cluster_port(),
                directory=node_dir,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # any replica may take over, however long its link was down
                    "--cluster-replica-validity-factor", "0",
                ],
            )  # fmt: skip
            self.servers.append(server.start())
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli is needed to create the cluster"
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        self.wait_ok(timeout)
        return self

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node reports the cluster ok with all slots served and every
        master has its replicas."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._ok(server.port) for server in self.live()):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not become ok in time")
            time.sleep(0.1)

    def _ok(self, port: int) -> bool:
        info = self.node(port).cluster("INFO")
        if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
            return False
        return len(self.master_ports()) == self.masters

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def master_ports(self) -> list[int]:
        """Ports of the masters that serve slots, as a live node sees them."""
        port = self.live()[0].port
        slots = self.node(port).execute_command("CLUSTER", "SLOTS")
        return sorted({int(row[2][1]) for row in slots})

    def master_of(self, key: str) -> int:
        port = self.live()[0].port
        slot = int(self.node(port).execute_command("CLUSTER", "KEYSLOT", key))
        for row in self.node(port).execute_command("CLUSTER", "SLOTS"):
            if int(row[0]) <= slot <= int(row[1]):
                return int(row[2][1])
        raise LookupError(slot)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        server = next(s for s in self.servers if s.port == port)
        assert server.process is not None
        server.process.kill()
        server.process.wait(10)

    def wait_promoted(self, dead_port: int, timeout: float = 30.0) -> int:
        """Wait until the slots of the dead master are served by another node; its port."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                port = self.live()[0].port
                info = self.node(port).cluster("INFO")
                masters = self.master_ports()
                if info["cluster_state"] == "ok" and dead_port not in masters:
                    return next(p for p in masters if p != dead_port)
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("no replica was promoted in time")
            time.sleep(0.1)

    def flushall(self) -> None:
        for port in self.master_ports():
            self.node(port).flushall()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
