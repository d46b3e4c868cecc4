"""Operations commands: ``check`` (health check exit code) and ``status`` (workers, queues)."""

from __future__ import annotations

import json
import sys

import click
from redis.backoff import NoBackoff
from redis.retry import Retry

from aiworker.cli.common import (
    EXPECTED_ERRORS,
    error_text,
    make_client,
    make_settings,
    redis_options,
)
from aiworker.client.sync import Client
from aiworker.devices import parse_device
from aiworker.protocol.errors import AIError
from aiworker.storage import health, memory

# A worker counts as alive as long as clients count it alive (they send it jobs meanwhile).
max_age_option = click.option(
    "--max-age",
    type=click.FloatRange(0, min_open=True),
    default=health.LIVE_FOR_S,
    show_default=True,
    help="Heartbeat age limit in seconds.",
)


def _device(name: str) -> str:
    """A device name as workers take it (``--device TPU`` is a usage error, not "unhealthy")."""
    try:
        parse_device(name)
    except AIError:
        raise click.BadParameter(
            f"invalid device {name!r} (CPU, GPU, CPU:<n> or GPU:<n>)"
        ) from None
    return name


@click.command()
@redis_options
@click.option(
    "--device",
    default="CPU",
    callback=lambda _ctx, _param, value: _device(value),
    help="The device queue that must be served.",
)
@max_age_option
@click.option("--worker", "worker_name", default=None, help="Check only this worker (host:pid).")
@click.option(
    "--this-host", is_flag=True, help="Check only workers on this host (container health checks)."
)
def check(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    device: str,
    max_age: float,
    worker_name: str | None,
    this_host: bool,
) -> None:
    """Exit 0 when Redis answers and a healthy worker serving DEVICE sent a recent heartbeat;
    exit 1 otherwise (Redis unreachable, no live worker, or its threads died)."""
    # invalid settings or files: one "(error) ..." line, as for every command
    settings = make_settings(config_file, redis_url=redis_url, prefix=prefix)
    try:
        # Fail fast: a health check must answer well within its orchestrator's timeout.
        client = Client.from_settings(
            settings, retry=Retry(NoBackoff(), 1), socket_connect_timeout=2, socket_timeout=2
        )
        ok, message = health.check(
            client, client.keyspace, device, max_age, worker=worker_name, this_host=this_host
        )
        warning = memory.eviction_warning(client)
        if warning:  # said, not failed: restarting a worker would not change the policy
            click.echo(f"warning: {warning}", err=True)
    except EXPECTED_ERRORS as exc:  # refused credentials, NOPERM, ...: said as every command does
        ok, message = False, error_text(exc)
    except Exception as exc:  # bad TLS files, ...: unhealthy, not a traceback
        ok, message = False, f"Redis unreachable: {exc}"
    if not ok:
        click.echo(f"unhealthy: {message}", err=True)
        sys.exit(1)
    click.echo(f"healthy: {message}")


@click.command()
@redis_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@max_age_option
def status(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    as_json: bool,
    max_age: float,
) -> None:
    """Workers, queues, consumer-group lag, pending jobs and dead letters."""
    client = make_client(config_file, redis_url, prefix)
    found = health.gather(client, client.keyspace, max_age)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for line in health.format_status(found):
        click.echo(line)
