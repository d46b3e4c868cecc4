"""Commands that run things or read/set state: ``run``, ``exec``, ``info`` and ``config``."""

from __future__ import annotations

import json
import sys

import click

from aiworker.cli.common import fail, make_client, redis_options, worker_statuses
from aiworker.client.ops import CONFIG_NAMES
from aiworker.protocol.errors import AIWorkerError


@click.command()
@redis_options
@click.argument("key")
@click.option("--inputs", "-i", required=True, help="Comma-separated input tensor keys.")
@click.option("--outputs", "-o", required=True, help="Comma-separated output tensor keys.")
@click.option("--timeout", type=int, default=None, help="RedisAI TIMEOUT in ms (from enqueue).")
@click.option("--show/--no-show", default=True, help="Print the outputs.")
def run(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    key: str,
    inputs: str,
    outputs: str,
    timeout: int | None,
    show: bool,
) -> None:
    """Run model KEY through a worker (AI.MODELEXECUTE)."""
    client = make_client(config_file, redis_url, prefix)
    out_keys = outputs.split(",")
    try:
        click.echo(client.modelexecute(key, inputs.split(","), out_keys, timeout=timeout))
        if show:
            for out in out_keys:
                value = client.tensorget(out, as_numpy=False)
                click.echo(f"{out}: {json.dumps(value)}")
    except AIWorkerError as exc:
        fail(exc)


@click.command("exec")
@redis_options
@click.argument("command", nargs=-1, required=True)
def exec_command(
    config_file: str | None, redis_url: str | None, prefix: str | None, command: tuple[str, ...]
) -> None:
    """Run one AI.* command in RedisAI syntax and print the reply as redis-cli would, e.g.
    aiworker exec "AI.TENSORSET a FLOAT 2 VALUES 2 3" (or its words as separate arguments)."""
    from aiworker.cli.rai_exec import execute
    from aiworker.cli.resp_format import ErrorReply, format_reply

    client = make_client(config_file, redis_url, prefix)
    reply = execute(client, command[0] if len(command) == 1 else list(command))
    click.echo(format_reply(reply))
    if isinstance(reply, ErrorReply):
        sys.exit(1)


@click.command()
@redis_options
@click.argument("key", required=False)
@click.option("--reset", is_flag=True, help="Reset the statistics of KEY (RESETSTAT).")
@click.option("--backends", is_flag=True, help="List the backends workers have loaded.")
def info(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    key: str | None,
    reset: bool,
    backends: bool,
) -> None:
    """Run statistics of a model or script (AI.INFO), or the backends live workers loaded
    (name: framework version)."""
    client = make_client(config_file, redis_url, prefix)
    try:
        if backends or key is None:
            loaded: dict[str, str] = {}
            for status in worker_statuses(client):
                loaded.update(status.get("backends", {}))
            click.echo(json.dumps(loaded, indent=2))
            return
        click.echo(client.inforeset(key) if reset else json.dumps(client.infoget(key), indent=2))
    except AIWorkerError as exc:
        fail(exc)


@click.command()
@redis_options
@click.argument("name")
@click.argument("value", required=False)
def config(
    config_file: str | None, redis_url: str | None, prefix: str | None, name: str, value: str | None
) -> None:
    """Read or set a shared setting (AI.CONFIG): MODEL_CHUNK_SIZE, THREADS_PER_QUEUE, ..."""
    if name.upper() not in CONFIG_NAMES:  # AI.CONFIG GET answers nil to any name: say so
        fail(f"unknown setting {name!r} (known: {', '.join(CONFIG_NAMES)})")
    client = make_client(config_file, redis_url, prefix)
    try:
        click.echo(client.config(name, value))
    except AIWorkerError as exc:
        fail(exc)
