"""A private ``redis-server`` on a free port (for ``aiworker up``, the demo and the test fixtures),
and a private Redis Cluster of such servers (``LocalCluster``: tests and ``bench.cluster``).

The server is ``AIWORKER_REDIS_SERVER`` when set, else ``redis-server`` or, where a distribution
ships Valkey instead, ``valkey-server`` from PATH (``server_program``); the command-line client
likewise (``AIWORKER_REDIS_CLI``, ``redis-cli``, ``valkey-cli``: ``cli_program``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from aiworker.protocol.errors import AIWorkerError
from aiworker.protocol.keys import key_slot


def _program(variable: str, names: tuple[str, ...]) -> str | None:
    chosen = os.environ.get(variable)
    if chosen:
        return shutil.which(chosen)
    return next((found for found in map(shutil.which, names) if found), None)


def server_program() -> str:
    """The Redis server executable (see the module docstring)."""
    found = _program("AIWORKER_REDIS_SERVER", ("redis-server", "valkey-server"))
    chosen = os.environ.get("AIWORKER_REDIS_SERVER")
    if found is None and chosen:
        raise AIWorkerError(f"AIWORKER_REDIS_SERVER names {chosen!r}, which is not found")
    if found is None:
        raise AIWorkerError(
            "redis-server not found on PATH (Debian/Ubuntu: apt-get install -y redis-server; "
            "or name one in AIWORKER_REDIS_SERVER)"
        )
    return found


def cli_program() -> str | None:
    """The command-line client executable, None if there is none (see the module docstring)."""
    return _program("AIWORKER_REDIS_CLI", ("redis-cli", "valkey-cli"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """Start a Redis server (``server_program``) with a temporary directory; ``stop`` removes
    both."""

    def __init__(
        self,
        port: int | None = None,
        extra_args: list[str] | None = None,
        executable: str | None = None,
        directory: str | Path | None = None,
        config_file: str | Path | None = None,
        start_new_session: bool = False,
        stop_with_owner: bool = False,
    ) -> None:
        """``start_new_session``: run redis-server in a session (and process group) of its own, so
        that a terminal's Ctrl-C reaches only its owner, which can stop what uses it first.
        ``stop_with_owner``: on Linux, the server gets SIGTERM when the thread that started it
        ends without stopping it (its process killed by SIGKILL), instead of running on.
        ``executable``: the server to run (default: ``server_program()``)."""
        self.executable = (shutil.which(executable) if executable else server_program()) or ""
        if not self.executable:
            raise AIWorkerError(f"{executable} not found")
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="aiworker-redis-"))
        self.config_file = config_file
        self.start_new_session = start_new_session
        self.stop_with_owner = stop_with_owner
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        # A config file must come first; without one, keep nothing on disk (a scratch server).
        args = [self.executable, str(self.config_file)] if self.config_file else [self.executable]
        if not self.config_file:
            args += ["--save", "", "--appendonly", "no"]
        args += [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.start_new_session,
            preexec_fn=stop_with_parent() if self.stop_with_owner else None,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise AIWorkerError(f"redis-server exited at start: {err.strip()}")
                try:
                    # another server may have taken the port since free_port() chose it
                    if int(client.info("server")["process_id"]) != self.process.pid:
                        self.stop()
                        raise AIWorkerError(f"port {self.port} is taken by another redis-server")
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise AIWorkerError("redis-server did not start in time") from None
                    time.sleep(0.05)
        except BaseException:  # Ctrl-C while it starts: no server is left behind
            self.stop()
            raise
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when the thread that forked it
    ends; None elsewhere. Everything is looked up before the fork: the child only calls C."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the owner died before the request: nobody to stop it
            os._exit(1)

    return preexec


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

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        config_file: str | Path | None = None,
        node_args: list[str] | None = None,
    ) -> None:
        """``config_file`` and ``node_args`` (cluster flags; a relative cluster config file lands
        in each node's own directory) are what every node starts with; by default none and
        ``NODE_TIMEOUT_MS`` failovers."""
        self.directory = Path(tempfile.mkdtemp(prefix="aiworker-cluster-"))
        self.servers: list[RedisServer] = []
        self.masters = masters
        self.replicas = replicas
        self.config_file = config_file
        self.node_args = node_args

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
            args = self.node_args or [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # any replica may take over, however long its link was down
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
            server = RedisServer(
                port=cluster_port(),
                directory=node_dir,
                config_file=self.config_file,
                extra_args=list(args),
            )
            self.servers.append(server.start())
        cli = cli_program()
        if cli is None:
            raise AIWorkerError("redis-cli not found on PATH: it creates the cluster")
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
                raise AIWorkerError("the cluster did not become ok in time")
            time.sleep(0.1)

    def _ok(self, port: int) -> bool:
        info = self.node(port).cluster("INFO")
        if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
            return False
        return len(self.master_ports()) == self.masters

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def _slots(self) -> list[Any]:
        """CLUSTER SLOTS as a live node sees it: [start, end, [host, port, id], replicas...]."""
        node: Any = self.node(self.live()[0].port)  # execute_command is untyped in redis-py
        return list(node.execute_command("CLUSTER", "SLOTS"))

    def master_ports(self) -> list[int]:
        """Ports of the masters that serve slots, as a live node sees them."""
        return sorted({int(row[2][1]) for row in self._slots()})

    def master_of(self, key: str) -> int:
        """Port of the master serving ``key``'s slot."""
        slot = key_slot(key)
        for row in self._slots():
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
                raise AIWorkerError("no replica was promoted in time")
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
