"""Serving commands: ``worker`` (serve device queues) and ``up`` (private redis-server, a worker
and a gateway)."""

from __future__ import annotations

import logging
import os
import signal
import sys

import click
import redis

from aiworker import logs
from aiworker.cli.common import fail, make_settings, redis_options, split_values
from aiworker.cli.gateway import GatewayThread
from aiworker.client.sync import Client
from aiworker.embedded import RedisServer
from aiworker.gateway import GatewayConfig
from aiworker.protocol.errors import ConfigError
from aiworker.protocol.keys import Keys
from aiworker.settings import Settings, settings_from_redis_config
from aiworker.worker.hooks import load_hook
from aiworker.worker.process import Worker

log = logging.getLogger("aiworker.cli")

# A TCP port (0: a free one), refused as a usage error beyond 65535 rather than by the socket layer.
PORT = click.IntRange(0, 65535)


@click.command()
@redis_options
@click.option(
    "--device",
    "devices",
    multiple=True,
    envvar="AIWORKER_DEVICES",
    callback=split_values,
    help="Device queue to serve (repeatable, or comma-separated): CPU, GPU, GPU:1 ...",
)
@click.option(
    "--threads-per-queue",
    type=click.IntRange(1),
    default=None,
    help="Runs in flight per device queue (RedisAI's THREADS_PER_QUEUE, default 1).",
)
@click.option(
    "--preload",
    multiple=True,
    envvar="AIWORKER_PRELOAD",
    callback=split_values,
    help="Backend to import at start (repeatable, or comma-separated).",
)
@click.option(
    "--metrics-port",
    type=PORT,
    default=None,
    help="Serve Prometheus metrics on this port (0: off).",
)
@click.option(
    "--drain-timeout",
    type=float,
    default=None,
    help="Seconds to finish jobs in hand after SIGTERM before handing them back.",
)
@click.option(
    "--queue-partitions",
    type=click.IntRange(1, 1024),
    default=None,
    help="Streams per device queue, spread over a Redis Cluster's masters (default 1).",
)
@click.option(
    "--wait-replicas",
    type=click.IntRange(0),
    default=None,
    help="WAIT for this many replicas after each completion step (default 0: no WAIT).",
)
@click.option(
    "--max-queue-length",
    type=click.IntRange(0),
    default=None,
    help="Most jobs a device queue may hold; clients' requests beyond it fail (0: no limit).",
)
@click.option(
    "--hook",
    "hooks",
    multiple=True,
    envvar="AIWORKER_HOOKS",
    callback=split_values,
    help="A worker hook, module:object (repeatable): called as jobs start, finish or fail. "
    "Modules in the current directory are found, as with python -m.",
)
def worker(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    devices: tuple[str, ...],
    threads_per_queue: int | None,
    preload: tuple[str, ...],
    metrics_port: int | None,
    drain_timeout: float | None,
    queue_partitions: int | None,
    wait_replicas: int | None,
    max_queue_length: int | None,
    hooks: tuple[str, ...],
) -> None:
    """Serve device queues until SIGTERM/SIGINT (a second signal cuts the drain short). A Redis
    Cluster is found on its own (any node's URL will do)."""
    if hooks and not {"", os.getcwd()} & set(sys.path):
        # A console script's sys.path starts with its own directory, not the current one: add
        # it, so a hook module next to the user is found. Last, not first as ``python -m`` does:
        # a file in the worker's directory must not shadow a package it imports later (torch).
        sys.path.append(os.getcwd())
    try:  # before anything else: a hook that cannot be loaded is a usage error
        found = [load_hook(spec) for spec in hooks]
    except ConfigError as exc:  # the option itself named: AIWORKER_HOOKS's errors say so
        ctx = click.get_current_context()
        option = next(each for each in ctx.command.params if each.name == "hooks")
        raise click.BadParameter(str(exc), ctx=ctx, param=option) from exc
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    flags = {
        "redis_url": redis_url,
        "prefix": prefix,
        "devices": devices or None,
        "threads_per_queue": threads_per_queue,
        "preload": preload or None,
        "metrics_port": metrics_port,
        "drain_timeout": drain_timeout,
        "queue_partitions": queue_partitions,
        "wait_replicas": wait_replicas,
        "max_queue_length": max_queue_length,
    }
    settings = make_settings(config_file, **flags)
    settings = make_settings(config_file, base=_shared_settings(settings), **flags)
    if settings.log_format.lower() == "json":  # also from the config file, not only the flag
        logs.setup(logging.getLogger().level, "json")
    sys.exit(Worker(settings, hooks=found).run_forever())


def _shared_settings(settings: Settings) -> dict[str, int]:
    """AI.CONFIG values from the shared config hash, checked; anything else there is ignored
    with a warning (whoever can write that hash is not the operator)."""
    key = Keys(settings.prefix).config
    try:
        stored = Client.from_settings(settings).hgetall(key)
    except redis.ResponseError as exc:  # e.g. WRONGTYPE: not a hash
        log.warning("ignoring the shared config %s: %s", key, exc)
        return {}
    values, warnings = settings_from_redis_config(stored)
    for warning in warnings:
        log.warning("%s", warning)
    return values


# What `up` serves unless the settings say otherwise (a demo: two runs in flight per queue).
UP_DEFAULTS = {"threads_per_queue": 2}


@click.command()
@click.option(
    "--config",
    "config_file",
    envvar="AIWORKER_CONFIG",
    metavar="FILE",
    default=None,
    help="aiworker.toml with settings for the worker.",
)
@click.option(
    "--port", type=PORT, default=None, help="Port for redis-server (default: a free one)."
)
@click.option(
    "--threads-per-queue",
    type=click.IntRange(1),
    default=None,
    help="Runs in flight per device queue (default 2).",
)
@click.option(
    "--gateway-port",
    type=PORT,
    envvar="AIWORKER_GATEWAY_PORT",
    default=6380,
    show_default=True,
    help="Port of the gateway serving RedisAI's AI.* commands (0: no gateway).",
)
def up(
    config_file: str | None, port: int | None, threads_per_queue: int | None, gateway_port: int
) -> None:
    """Start a private redis-server, a worker (CPU unless the settings say otherwise) and a
    gateway; Ctrl-C stops the worker and the gateway, then Redis. The worker's settings layer as
    `worker`'s do (defaults, config file, AIWORKER_* variables, flags)."""
    logging.getLogger().setLevel(logging.INFO)
    # The private redis-server speaks plain TCP on its own port: AIWORKER_REDIS_URL and the TLS
    # settings are another Redis' (not even read: a malformed one is no error of `up`'s). It is
    # new, so it holds no shared settings to read either.
    private = {"redis_url": "redis://127.0.0.1", "tls_ca_cert": "", "tls_cert": "", "tls_key": ""}
    settings = make_settings(
        config_file, base=UP_DEFAULTS, threads_per_queue=threads_per_queue, **private
    )
    # Until the worker takes SIGTERM over (a graceful stop), it unwinds what started, so the
    # private Redis is stopped, as Ctrl-C's KeyboardInterrupt does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if hasattr(signal, "SIGHUP"):  # a closed terminal stops everything as Ctrl-C does
        signal.signal(signal.SIGHUP, lambda signum, frame: signal.raise_signal(signal.SIGTERM))
    # Its own process group: a terminal's Ctrl-C must not stop Redis under the worker's drain;
    # and stopped if `up` is killed outright (SIGKILL), not left running on its port.
    with RedisServer(port=port, start_new_session=True, stop_with_owner=True) as server:
        settings = settings.replace(redis_url=server.url)
        gateway = None
        if gateway_port:
            gateway = GatewayThread(settings, GatewayConfig(listen=f"127.0.0.1:{gateway_port}"))
            try:  # listen before saying where: never advertise a port nobody serves
                gateway_port = gateway.start()[1]
            except OSError as exc:
                hint = "--gateway-port N for another port, 0 for no gateway"
                fail(f"gateway port {gateway_port}: {exc.strerror or exc} ({hint})")
        try:
            click.echo(f"aiworker up: {server.url}  (export AIWORKER_REDIS_URL={server.url})")
            if gateway is not None:
                click.echo(f"RedisAI clients: redis-cli -p {gateway_port} AI.TENSORSET ...")
            code = Worker(settings).run_forever()
        finally:
            if gateway is not None:
                gateway.stop()
    sys.exit(code)
