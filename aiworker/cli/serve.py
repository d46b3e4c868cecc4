"""Serving commands: ``worker`` (serve device queues) and ``up`` (private redis-server, a worker
and a gateway)."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading

import click
import redis

from aiworker import logs
from aiworker.cli.common import make_settings, redis_options
from aiworker.client.sync import Client
from aiworker.embedded import RedisServer
from aiworker.gateway import GatewayConfig, serve
from aiworker.protocol.errors import ConfigError
from aiworker.protocol.keys import Keys
from aiworker.settings import Settings, settings_from_redis_config
from aiworker.worker.hooks import load_hook
from aiworker.worker.process import Worker

log = logging.getLogger("aiworker.cli")


@click.command()
@redis_options
@click.option(
    "--device",
    "devices",
    multiple=True,
    envvar="AIWORKER_DEVICES",
    help="Device queue to serve (repeatable): CPU, GPU, GPU:1 ...",
)
@click.option("--threads-per-queue", type=int, envvar="AIWORKER_THREADS_PER_QUEUE", default=None)
@click.option(
    "--preload", multiple=True, envvar="AIWORKER_PRELOAD", help="Backend to import at start."
)
@click.option(
    "--metrics-port",
    type=int,
    envvar="AIWORKER_METRICS_PORT",
    default=None,
    help="Serve Prometheus metrics on this port (0: off).",
)
@click.option(
    "--drain-timeout",
    type=float,
    envvar="AIWORKER_DRAIN_TIMEOUT",
    default=None,
    help="Seconds to finish jobs in hand after SIGTERM before handing them back.",
)
@click.option(
    "--queue-partitions",
    type=click.IntRange(1, 1024),
    envvar="AIWORKER_QUEUE_PARTITIONS",
    default=None,
    help="Streams per device queue, spread over a Redis Cluster's masters (default 1).",
)
@click.option(
    "--wait-replicas",
    type=click.IntRange(0),
    envvar="AIWORKER_WAIT_REPLICAS",
    default=None,
    help="WAIT for this many replicas after each completion step (default 0: no WAIT).",
)
@click.option(
    "--max-queue-length",
    type=click.IntRange(0),
    envvar="AIWORKER_MAX_QUEUE_LENGTH",
    default=None,
    help="Most jobs a device queue may hold; clients' requests beyond it fail (0: no limit).",
)
@click.option(
    "--hook",
    "hooks",
    multiple=True,
    envvar="AIWORKER_HOOKS",
    help="A worker hook, module:object (repeatable): called as jobs start, finish or fail.",
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
    try:  # before anything else: a hook that cannot be loaded is a usage error
        found = [load_hook(spec) for spec in hooks]
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--hook") from exc
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


@click.command()
@click.option("--port", type=int, default=None, help="Port for redis-server (default: a free one).")
@click.option("--threads-per-queue", type=int, default=2)
@click.option(
    "--gateway-port",
    type=click.IntRange(0),
    envvar="AIWORKER_GATEWAY_PORT",
    default=6380,
    show_default=True,
    help="Port of the gateway serving RedisAI's AI.* commands (0: no gateway).",
)
def up(port: int | None, threads_per_queue: int, gateway_port: int) -> None:
    """Start a private redis-server, a CPU worker and a gateway; Ctrl-C stops them."""
    logging.getLogger().setLevel(logging.INFO)
    with RedisServer(port=port) as server:
        settings = Settings(redis_url=server.url, threads_per_queue=threads_per_queue)
        click.echo(f"aiworker up: {server.url}  (export AIWORKER_REDIS_URL={server.url})")
        if gateway_port:
            config = GatewayConfig(listen=f"127.0.0.1:{gateway_port}")
            threading.Thread(
                target=asyncio.run, args=(serve(settings, config),), name="gateway", daemon=True
            ).start()
            click.echo(f"RedisAI clients: redis-cli -p {gateway_port} AI.TENSORSET ...")
        Worker(settings).run_forever()
