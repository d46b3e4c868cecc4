"""Shared pieces of the CLI: the Redis/TLS options, settings and client from them, error exit."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from aiworker.client.cluster import ClusterClient
from aiworker.client.sync import Client
from aiworker.protocol.errors import AIWorkerError
from aiworker.settings import Settings
from aiworker.storage import health

F = TypeVar("F", bound=Callable[..., Any])


TLS_OPTIONS = {
    "tls_ca_cert": "CA certificate (PEM) that signed the Redis server's certificate.",
    "tls_cert": "Client certificate (PEM) for Redis servers that require one.",
    "tls_key": "Private key (PEM) of --tls-cert.",
}


def _remember_tls(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # Kept on the context rather than passed to every command: make_settings picks them up.
    if value is not None and param.name:
        ctx.meta.setdefault("aiworker.tls", {})[param.name] = value


def redis_options(func: F) -> F:
    """--redis-url, --prefix and TLS files, shared by every command that talks to Redis."""
    for name, help_text in TLS_OPTIONS.items():
        func = click.option(
            "--" + name.replace("_", "-"),
            name,
            envvar="AIWORKER_" + name.upper(),
            default=None,
            expose_value=False,
            callback=_remember_tls,
            help=help_text,
        )(func)
    func = click.option(
        "--prefix", envvar="AIWORKER_PREFIX", default=None, help="Prefix of aiworker's own keys."
    )(func)
    func = click.option(
        "--redis-url",
        envvar="AIWORKER_REDIS_URL",
        default=None,
        help="Redis URL (redis://, rediss://, unix://). Default redis://127.0.0.1:6379/0.",
    )(func)
    func = click.option(
        "--config",
        "config_file",
        envvar="AIWORKER_CONFIG",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="aiworker.toml with settings.",
    )(func)
    return func


def make_settings(config_file: str | None, **overrides: Any) -> Settings:
    ctx = click.get_current_context(silent=True)
    tls = ctx.meta.get("aiworker.tls", {}) if ctx is not None else {}
    try:
        return Settings.load(config_file, **{**tls, **overrides})
    except AIWorkerError as exc:
        raise click.UsageError(str(exc)) from exc


def make_client(
    config_file: str | None, redis_url: str | None, prefix: str | None
) -> Client | ClusterClient:
    """A client for the settings; a ``ClusterClient`` when Redis is a cluster."""
    settings = make_settings(config_file, redis_url=redis_url, prefix=prefix)
    return Client.from_settings(settings, reply_timeout=60.0)


def fail(exc: Exception) -> None:
    click.echo(f"(error) {exc}", err=True)
    sys.exit(1)


def worker_statuses(client: Client | ClusterClient, max_age: float = 10.0) -> list[dict[str, Any]]:
    """Status of worker processes that sent a heartbeat within ``max_age`` seconds."""
    return health.live_workers(client, client.keyspace, max_age)


def quiet(scan: Callable[[], Any]) -> Any:
    """A model/script listing without redisai-py's "Experimental" warning (the CLI's own
    listing is not experimental)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return scan()
