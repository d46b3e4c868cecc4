"""A private ``redis-server`` on a free port: for ``aiworker up``, the demo and the test fixtures."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from aiworker.protocol.errors import AIWorkerError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """Start ``redis-server`` from PATH with a temporary directory; ``stop`` removes both."""

    def __init__(
        self,
        port: int | None = None,
        extra_args: list[str] | None = None,
        executable: str = "redis-server",
        directory: str | Path | None = None,
        config_file: str | Path | None = None,
    ) -> None:
        self.executable = shutil.which(executable) or ""
        if not self.executable:
            raise AIWorkerError(
                "redis-server not found on PATH (Debian/Ubuntu: apt-get install -y redis-server)"
            )
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="aiworker-redis-"))
        self.config_file = config_file
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
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
