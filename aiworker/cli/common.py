"""Shared pieces of the CLI: the Redis/TLS options, settings and client from them, errors."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click
import redis
from redis.exceptions import NoPermissionError, RedisClusterException

from aiworker.client.cluster import ClusterClient
from aiworker.client.sync import Client
from aiworker.protocol.errors import AIWorkerError, ConfigError
from aiworker.settings import ENV_PREFIX, Settings, split_list
from aiworker.storage import health
from aiworker.storage.redis_options import tls_kwargs

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


def env_names(name: str, prefixes: Sequence[str]) -> list[str]:
    """The variables an option ``name`` reads, first set wins: ``<prefix><NAME>`` per prefix."""
    return [prefix + name.upper() for prefix in prefixes]


def shared_options(*prefixes: str, tls_prefixes: Sequence[str] = ()) -> Callable[[F], F]:
    """--config, --redis-url, --prefix and the Redis TLS files, shared by every command that talks
    to Redis. Each reads ``<prefix><NAME>`` for the ``prefixes`` in order (the gateway: its own
    ``AIWORKER_GATEWAY_*``, then the worker's ``AIWORKER_*``, so one environment serves both);
    the TLS files those of ``tls_prefixes`` when given."""

    def decorate(func: F) -> F:
        for name, help_text in TLS_OPTIONS.items():
            func = click.option(
                "--" + name.replace("_", "-"),
                name,
                envvar=env_names(name, tls_prefixes or prefixes),
                default=None,
                expose_value=False,
                callback=_remember_tls,
                help=help_text,
            )(func)
        func = click.option(
            "--prefix",
            envvar=env_names("prefix", prefixes),
            default=None,
            help="Prefix of aiworker's own keys.",
        )(func)
        func = click.option(
            "--redis-url",
            envvar=env_names("redis_url", prefixes),
            default=None,
            help="Redis URL (redis://, rediss://, unix://). Default redis://127.0.0.1:6379/0.",
        )(func)
        func = click.option(
            "--config",
            "config_file",
            envvar=env_names("config", prefixes),
            # not click.Path(exists=True): a missing file is a setup error (one line, exit 1)
            # like an invalid one, not a usage error
            metavar="FILE",
            default=None,
            help="aiworker.toml with settings.",
        )(func)
        return func

    return decorate


redis_options = shared_options(ENV_PREFIX)


def split_values(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """A repeatable option's values, each split on commas and whitespace as ``Settings`` splits
    lists: ``--device CPU,GPU:1`` and ``AIWORKER_DEVICES="CPU, GPU:1"`` read alike."""
    return split_list(value)


def make_settings(config_file: str | None, **overrides: Any) -> Settings:
    """Settings for a command (``ConfigError`` when invalid), its Redis TLS files checked now
    rather than at the first connection."""
    ctx = click.get_current_context(silent=True)
    tls = ctx.meta.get("aiworker.tls", {}) if ctx is not None else {}
    settings = Settings.load(config_file, **{**tls, **overrides})
    _check_url(settings.redis_url)
    tls_kwargs(settings)  # TLS files with a plain redis:// URL are an error, not ignored
    for name in TLS_OPTIONS:
        path = getattr(settings, name)
        if path and not os.path.isfile(path):  # else a TLS error that names no file
            raise ConfigError(f"{name}: no such file: {path}")
    return settings


def _check_url(url: str) -> None:
    """What redis-py would refuse at the first connection, as a setting's error (its ValueError
    is no error the CLI expects: it printed a traceback)."""
    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(f"redis_url: {exc}") from None
    parts = urlsplit(url)
    db = parts.path.strip("/") if parts.scheme in ("redis", "rediss") else ""
    if db and not db.isdigit():  # redis-py would take /abc for DB 0 without a word
        raise ConfigError(f"redis_url: the database number {db!r} is no number")


def make_client(
    config_file: str | None, redis_url: str | None, prefix: str | None
) -> Client | ClusterClient:
    """A client for the settings; a ``ClusterClient`` when Redis is a cluster."""
    settings = make_settings(config_file, redis_url=redis_url, prefix=prefix)
    return Client.from_settings(settings, reply_timeout=60.0)


# What a setup can get wrong (settings, files, Redis unreachable or refusing): one "(error) ..."
# line and exit 1. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    AIWorkerError,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ResponseError,
    RedisClusterException,
    OSError,
)


def error_text(exc: BaseException) -> str:
    """The one line an expected error prints after ``(error)``."""
    if isinstance(exc, redis.AuthenticationError):
        return f"Redis refused the credentials: {exc}"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"Redis unreachable: {exc}"
    if isinstance(exc, NoPermissionError):
        return f"NOPERM {exc}: the ACL user of the Redis URL needs that permission"
    code = getattr(exc, "status_code", None) if isinstance(exc, redis.ResponseError) else None
    return f"{code} {exc}" if code and not str(exc).startswith(code) else str(exc)


@contextlib.contextmanager
def argument_checks() -> Iterator[None]:
    """redisai-py's checks of a method's arguments (its ``ValueError``/``TypeError``, raised
    before anything is sent: an unknown backend or device, TF without INPUTS) as click's usage
    error, exit 2: a bad argument is no bug to print a traceback for."""
    try:
        yield
    except AIWorkerError:
        raise
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc


def fail(error: BaseException | str) -> NoReturn:
    text = error if isinstance(error, str) else error_text(error)
    click.echo(f"(error) {text}", err=True)
    sys.exit(1)


def worker_statuses(
    client: Client | ClusterClient, max_age: float = health.LIVE_FOR_S
) -> list[dict[str, Any]]:
    """Status of worker processes that sent a heartbeat within ``max_age`` seconds (by default
    as long as clients count a worker alive)."""
    return health.live_workers(client, client.keyspace, max_age)


def quiet(scan: Callable[[], Any]) -> Any:
    """A model/script listing without redisai-py's "Experimental" warning (the CLI's own
    listing is not experimental)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return scan()
