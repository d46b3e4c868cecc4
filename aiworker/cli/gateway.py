"""``aiworker gateway``: serve RedisAI's AI.* commands (and pass every other command to Redis)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import click

from aiworker import malloc
from aiworker.cli.common import env_names, make_settings, shared_options
from aiworker.gateway import Gateway, GatewayConfig, serve
from aiworker.protocol.errors import ConfigError
from aiworker.settings import ENV_PREFIX, Settings

log = logging.getLogger("aiworker.gateway")

DEFAULTS = GatewayConfig()
# Each option reads AIWORKER_GATEWAY_<OPTION> (dashes as underscores); --config, --redis-url and
# --prefix fall back to the worker's AIWORKER_<OPTION>. The Redis TLS files (--tls-ca-cert,
# --tls-cert, --tls-key) read only the worker's AIWORKER_TLS_*: AIWORKER_GATEWAY_TLS_CERT, _KEY and
# _CA_CERT once named the files the gateway listens with, and are refused rather than read as
# another thing (a gateway meant to listen with TLS would have listened without).
GATEWAY_ENV_PREFIX = ENV_PREFIX + "GATEWAY_"
RETIRED_ENV = {
    GATEWAY_ENV_PREFIX + name: GATEWAY_ENV_PREFIX + name.replace("TLS_", "TLS_LISTEN_")
    for name in ("TLS_CERT", "TLS_KEY", "TLS_CA_CERT")
}


def _env(name: str) -> list[str]:
    return env_names(name, [GATEWAY_ENV_PREFIX])


@click.command()
@shared_options(GATEWAY_ENV_PREFIX, ENV_PREFIX, tls_prefixes=[ENV_PREFIX])
@click.option(
    "--listen",
    envvar=_env("listen"),
    default=DEFAULTS.listen,
    show_default=True,
    help="host:port to listen on ('' with --unix-socket: no TCP).",
)
@click.option("--unix-socket", envvar=_env("unix_socket"), default="", help="Also listen here.")
@click.option(
    "--require-auth",
    is_flag=True,
    envvar=_env("require_auth"),
    help="Refuse everything but AUTH/HELLO until the client authenticated to Redis.",
)
@click.option(
    "--emulate-cluster",
    is_flag=True,
    envvar=_env("emulate_cluster"),
    help="Answer CLUSTER SLOTS/SHARDS/NODES/INFO as one shard at this address.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    envvar=_env("reuse_port"),
    help="Share the port with other gateway processes (SO_REUSEPORT).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    envvar=_env("max_connections"),
    default=DEFAULTS.max_connections,
    show_default=True,
    help="Most clients at once; the next gets Redis' 'max number of clients reached'.",
)
@click.option(
    "--max-bulk-len",
    type=click.IntRange(1),
    envvar=_env("max_bulk_len"),
    default=DEFAULTS.max_bulk,
    show_default=True,
    help="Longest argument in bytes (Redis' proto-max-bulk-len).",
)
@click.option(
    "--max-args",
    type=click.IntRange(1),
    envvar=_env("max_args"),
    default=DEFAULTS.max_args,
    show_default=True,
    help="Most arguments in a command.",
)
@click.option(
    "--max-request",
    type=click.IntRange(1),
    envvar=_env("max_request"),
    default=DEFAULTS.max_request,
    show_default=True,
    help="Largest command in bytes (all its arguments).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(0),
    envvar=_env("request_timeout"),
    default=DEFAULTS.request_timeout,
    show_default=True,
    help="Seconds a command may take to arrive once started (0: no limit).",
)
@click.option(
    "--reply-timeout",
    type=click.FloatRange(0.1),
    envvar=_env("reply_timeout"),
    default=DEFAULTS.reply_timeout,
    show_default=True,
    help="Seconds an AI.* job without TIMEOUT may wait for a worker.",
)
@click.option(
    "--tls-listen-cert",
    envvar=_env("tls_listen_cert"),
    default="",
    help="Certificate (PEM) to listen with TLS.",
)
@click.option(
    "--tls-listen-key", envvar=_env("tls_listen_key"), default="", help="Its private key."
)
@click.option(
    "--tls-listen-ca-cert",
    envvar=_env("tls_listen_ca_cert"),
    default="",
    help="Require client certificates signed by this CA.",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    envvar=_env("threads"),
    default=DEFAULTS.threads,
    show_default=True,
    help="Threads for model/script stores, the AI.* commands of a connection that WATCHes, "
    "and every AI.* command on a cluster.",
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    envvar=_env("loop"),
    default="auto",
    show_default=True,
    help="Event loop: uvloop (less latency per command: bench/README.md), asyncio, or auto "
    "(uvloop when it is installed).",
)
def gateway(
    config_file: str | None, redis_url: str | None, prefix: str | None, listen: str,
    unix_socket: str, require_auth: bool, emulate_cluster: bool, reuse_port: bool,
    max_connections: int, max_bulk_len: int, max_args: int, max_request: int,
    request_timeout: float, reply_timeout: float, tls_listen_cert: str, tls_listen_key: str,
    tls_listen_ca_cert: str, threads: int, loop: str,
) -> None:  # fmt: skip
    """Serve RedisAI's commands to any Redis client: connect it here instead of to Redis."""
    retired = [f"{old} (now {new})" for old, new in RETIRED_ENV.items() if old in os.environ]
    if retired:
        raise ConfigError(
            "retired variables for the files the gateway listens with: " + ", ".join(retired)
            + "; TLS to Redis reads AIWORKER_TLS_CA_CERT, AIWORKER_TLS_CERT, AIWORKER_TLS_KEY"
        )  # fmt: skip
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    settings = make_settings(config_file, redis_url=redis_url, prefix=prefix)
    config = GatewayConfig(
        listen=listen, unix_socket=unix_socket, max_connections=max_connections,
        max_bulk=max_bulk_len, max_args=max_args, max_request=max_request,
        request_timeout=request_timeout, require_auth=require_auth, tls_cert=tls_listen_cert,
        tls_key=tls_listen_key, tls_ca_cert=tls_listen_ca_cert, emulate_cluster=emulate_cluster,
        reuse_port=reuse_port, reply_timeout=reply_timeout, threads=threads,
    )  # fmt: skip
    if not listen and not unix_socket:
        raise click.UsageError("give --listen or --unix-socket")
    malloc.keep_freed_memory()  # tensors' buffers come and go, as in a worker
    _runner(loop)(_run(settings, config))


def _runner(loop: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """``asyncio.run`` on the event loop asked for."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise click.UsageError("--loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


async def _run(settings: object, config: GatewayConfig) -> None:
    """Serve until SIGTERM or SIGINT."""
    task = asyncio.ensure_future(serve(settings, config))  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class GatewayThread:
    """A gateway on an event loop in a thread of its own (``aiworker up``). ``start`` returns
    once it listens, or raises why it cannot (a port taken, a TLS file), so that nothing
    advertises a port nobody serves; ``stop`` closes it."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.gateway = Gateway(settings, config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway", daemon=True)
        self._serving: concurrent.futures.Future[None] | None = None
        self._stopping = False

    def start(self) -> tuple[str, int]:
        """The address listened on."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.gateway.start(), self._loop).result()
        except BaseException:
            with contextlib.suppress(Exception):  # the error to report is the first one
                self.stop()
            raise
        self._serving = asyncio.run_coroutine_threadsafe(self.gateway.serve_forever(), self._loop)
        self._serving.add_done_callback(self._report_end)
        return self.gateway.address()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            try:
                closing.result(timeout)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close(self) -> None:
        if hasattr(self.gateway, "ai"):  # else start failed before it had anything to close
            await self.gateway.close()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _report_end(self, serving: concurrent.futures.Future[None]) -> None:
        # Only ``stop`` ends the gateway: anything else is worth an error in the log.
        if self._stopping:
            return
        if serving.cancelled() or serving.exception() is None:
            log.error("the gateway stopped serving")
        else:
            log.error("the gateway stopped serving: %r", serving.exception())
