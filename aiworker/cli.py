"""The ``aiworker`` command line (click). Every option also reads an ``AIWORKER_*`` variable."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from redis.backoff import NoBackoff
from redis.retry import Retry

from aiworker import health, logs
from aiworker.client import Client
from aiworker.embedded import RedisServer
from aiworker.errors import AIWorkerError
from aiworker.settings import Settings
from aiworker.worker import Worker

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


def make_client(config_file: str | None, redis_url: str | None, prefix: str | None) -> Client:
    settings = make_settings(config_file, redis_url=redis_url, prefix=prefix)
    return Client.from_settings(settings, reply_timeout=60.0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fail(exc: Exception) -> None:
    click.echo(f"(error) {exc}", err=True)
    sys.exit(1)


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    envvar="AIWORKER_LOG_FORMAT",
    default="text",
    help="text, or one JSON object per line (with job_id) for log collectors.",
)
@click.version_option(package_name="aiworker")
def main(verbose: int, log_format: str) -> None:
    """aiworker: RedisAI's tensors, models and execution on stock Redis."""
    logs.setup(logging.WARNING - 10 * min(verbose, 2), log_format)


# worker ------------------------------------------------------------------------------------


@main.command()
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
def worker(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    devices: tuple[str, ...],
    threads_per_queue: int | None,
    preload: tuple[str, ...],
    metrics_port: int | None,
    drain_timeout: float | None,
) -> None:
    """Serve device queues until SIGTERM/SIGINT (a second signal cuts the drain short)."""
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
    }
    settings = make_settings(config_file, **flags)
    stored = Client.from_settings(settings).hgetall(f"{settings.prefix}config")
    base = {_text(k).lower(): _text(v) for k, v in stored.items()}
    base = {k: v for k, v in base.items() if k in Settings.__dataclass_fields__}
    settings = make_settings(config_file, base=base, **flags)
    if settings.log_format.lower() == "json":  # also from the config file, not only the flag
        logs.setup(logging.getLogger().level, "json")
    sys.exit(Worker(settings).run_forever())


@main.command()
@click.option("--port", type=int, default=None, help="Port for redis-server (default: a free one).")
@click.option("--threads-per-queue", type=int, default=2)
def up(port: int | None, threads_per_queue: int) -> None:
    """Start a private redis-server and a CPU worker; Ctrl-C stops both."""
    logging.getLogger().setLevel(logging.INFO)
    with RedisServer(port=port) as server:
        settings = Settings(redis_url=server.url, threads_per_queue=threads_per_queue)
        click.echo(f"aiworker up: {server.url}  (export AIWORKER_REDIS_URL={server.url})")
        Worker(settings).run_forever()


# tensors -----------------------------------------------------------------------------------


@main.group()
def tensor() -> None:
    """Set and get tensors."""


@tensor.command("set")
@redis_options
@click.argument("key")
@click.argument("dtype")
@click.argument("shape")
@click.argument("values", nargs=-1)
def tensor_set(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    key: str,
    dtype: str,
    shape: str,
    values: tuple[str, ...],
) -> None:
    """Store KEY as a DTYPE tensor of SHAPE (e.g. 2,3) from VALUES (zeros when none)."""
    client = make_client(config_file, redis_url, prefix)
    dims = [int(d) for d in shape.split(",") if d] if shape else []
    try:
        click.echo(client.tensorset(key, list(values) if values else None, shape=dims, dtype=dtype))
    except AIWorkerError as exc:
        fail(exc)


@tensor.command("get")
@redis_options
@click.argument("key")
@click.option("--meta", is_flag=True, help="Only dtype and shape.")
def tensor_get(
    config_file: str | None, redis_url: str | None, prefix: str | None, key: str, meta: bool
) -> None:
    """Print a tensor as JSON (dtype, shape, values)."""
    client = make_client(config_file, redis_url, prefix)
    try:
        click.echo(json.dumps(client.tensorget(key, as_numpy=False, meta_only=meta)))
    except AIWorkerError as exc:
        fail(exc)


# models ------------------------------------------------------------------------------------


@main.group()
def model() -> None:
    """Store, get, delete and list models."""


@model.command("store")
@redis_options
@click.argument("key")
@click.argument("backend")
@click.argument("device")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--tag", default=None)
@click.option("--batch", type=int, default=None)
@click.option("--minbatch", type=int, default=None)
@click.option("--minbatchtimeout", type=int, default=None)
@click.option("--inputs", default=None, help="Comma-separated input names (TF).")
@click.option("--outputs", default=None, help="Comma-separated output names (TF).")
def model_store(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    key: str,
    backend: str,
    device: str,
    path: str,
    tag: str | None,
    batch: int | None,
    minbatch: int | None,
    minbatchtimeout: int | None,
    inputs: str | None,
    outputs: str | None,
) -> None:
    """Store the model file PATH at KEY."""
    client = make_client(config_file, redis_url, prefix)
    size = Path(path).stat().st_size
    blob = bytearray(size)
    with (
        open(path, "rb") as handle,
        click.progressbar(
            length=size, label=f"reading {path}", show_pos=True, file=sys.stderr
        ) as bar,
    ):
        view = memoryview(blob)
        done = 0
        while done < size:
            n = handle.readinto(view[done : done + (8 << 20)])
            if not n:
                break
            done += n
            bar.update(n)
    click.echo(f"uploading {size:,} bytes...", err=True)
    started = time.perf_counter()
    try:
        client.modelstore(
            key,
            backend,
            device,
            blob,
            batch=batch,
            minbatch=minbatch,
            minbatchtimeout=minbatchtimeout,
            tag=tag,
            inputs=inputs.split(",") if inputs else None,
            outputs=outputs.split(",") if outputs else None,
        )
    except AIWorkerError as exc:
        fail(exc)
    click.echo(f"OK ({time.perf_counter() - started:.2f}s)")


@model.command("get")
@redis_options
@click.argument("key")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the blob here.")
def model_get(
    config_file: str | None, redis_url: str | None, prefix: str | None, key: str, output: str | None
) -> None:
    """Print a model's metadata; with -o also save its blob."""
    client = make_client(config_file, redis_url, prefix)
    try:
        info = client.modelget(key, meta_only=output is None)
    except AIWorkerError as exc:
        fail(exc)
    blob = info.pop("blob", None)
    if output and blob is not None:
        Path(output).write_bytes(blob)
        info["blob"] = f"{len(blob)} bytes written to {output}"
    click.echo(json.dumps(info, indent=2))


@model.command("del")
@redis_options
@click.argument("key")
def model_del(config_file: str | None, redis_url: str | None, prefix: str | None, key: str) -> None:
    """Delete a model."""
    client = make_client(config_file, redis_url, prefix)
    try:
        click.echo(client.modeldel(key))
    except AIWorkerError as exc:
        fail(exc)


@model.command("list")
@redis_options
def model_list(config_file: str | None, redis_url: str | None, prefix: str | None) -> None:
    """List stored models and their tags."""
    client = make_client(config_file, redis_url, prefix)
    for key, tag in client.modelscan():
        click.echo(f"{key}\t{tag}")


# scripts -----------------------------------------------------------------------------------


@main.group()
def script() -> None:
    """Store, get, delete and list TorchScript scripts."""


@script.command("store")
@redis_options
@click.argument("key")
@click.argument("device")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--entry-point",
    "-e",
    "entry_points",
    multiple=True,
    required=True,
    help="Function that SCRIPTEXECUTE may call (repeatable).",
)
@click.option("--tag", default=None)
def script_store(
    config_file: str | None,
    redis_url: str | None,
    prefix: str | None,
    key: str,
    device: str,
    path: str,
    entry_points: tuple[str, ...],
    tag: str | None,
) -> None:
    """Store the TorchScript source file PATH at KEY (AI.SCRIPTSTORE)."""
    client = make_client(config_file, redis_url, prefix)
    try:
        source = Path(path).read_text()
        click.echo(client.scriptstore(key, device, source, list(entry_points), tag=tag))
    except AIWorkerError as exc:
        fail(exc)


@script.command("get")
@redis_options
@click.argument("key")
@click.option("--meta", is_flag=True, help="Without the source.")
def script_get(
    config_file: str | None, redis_url: str | None, prefix: str | None, key: str, meta: bool
) -> None:
    """Print a script's device, tag, entry points and source as JSON."""
    client = make_client(config_file, redis_url, prefix)
    try:
        click.echo(json.dumps(client.scriptget(key, meta_only=meta), indent=2))
    except AIWorkerError as exc:
        fail(exc)


@script.command("del")
@redis_options
@click.argument("key")
def script_del(
    config_file: str | None, redis_url: str | None, prefix: str | None, key: str
) -> None:
    """Delete a script."""
    client = make_client(config_file, redis_url, prefix)
    try:
        click.echo(client.scriptdel(key))
    except AIWorkerError as exc:
        fail(exc)


@script.command("list")
@redis_options
def script_list(config_file: str | None, redis_url: str | None, prefix: str | None) -> None:
    """List stored scripts and their tags."""
    client = make_client(config_file, redis_url, prefix)
    for key, tag in client.scriptscan():
        click.echo(f"{key}\t{tag}")


# running -----------------------------------------------------------------------------------


@main.command()
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


@main.command("exec")
@redis_options
@click.argument("command", nargs=-1, required=True)
def exec_command(
    config_file: str | None, redis_url: str | None, prefix: str | None, command: tuple[str, ...]
) -> None:
    """Run one AI.* command in RedisAI syntax and print the reply as redis-cli would, e.g.
    aiworker exec "AI.TENSORSET a FLOAT 2 VALUES 2 3" (or its words as separate arguments)."""
    from aiworker.rai_exec import execute
    from aiworker.resp_format import ErrorReply, format_reply

    client = make_client(config_file, redis_url, prefix)
    reply = execute(client, command[0] if len(command) == 1 else list(command))
    click.echo(format_reply(reply))
    if isinstance(reply, ErrorReply):
        sys.exit(1)


@main.command()
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


def worker_statuses(client: Client, max_age: float = 10.0) -> list[dict[str, Any]]:
    """Status of worker processes that sent a heartbeat within ``max_age`` seconds."""
    return health.live_workers(client, client.keyspace, max_age)


@main.command()
@redis_options
@click.option("--device", default="CPU", help="The device queue that must be served.")
@click.option("--max-age", type=float, default=10.0, help="Heartbeat age limit in seconds.")
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
    try:
        settings = make_settings(config_file, redis_url=redis_url, prefix=prefix)
        # Fail fast: a health check must answer well within its orchestrator's timeout.
        client = Client.from_settings(
            settings, retry=Retry(NoBackoff(), 1), socket_connect_timeout=2, socket_timeout=2
        )
        ok, message = health.check(
            client, client.keyspace, device, max_age, worker=worker_name, this_host=this_host
        )
    except Exception as exc:  # bad TLS files, refused AUTH, ...: unhealthy, not a traceback
        ok, message = False, f"Redis unreachable: {exc}"
    if not ok:
        click.echo(f"unhealthy: {message}", err=True)
        sys.exit(1)
    click.echo(f"healthy: {message}")


@main.command()
@redis_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(
    config_file: str | None, redis_url: str | None, prefix: str | None, as_json: bool
) -> None:
    """Workers, queues, consumer-group lag, pending jobs and dead letters."""
    client = make_client(config_file, redis_url, prefix)
    found = health.gather(client, client.keyspace)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for line in health.format_status(found):
        click.echo(line)


@main.command()
@redis_options
@click.argument("name")
@click.argument("value", required=False)
def config(
    config_file: str | None, redis_url: str | None, prefix: str | None, name: str, value: str | None
) -> None:
    """Read or set a shared setting (AI.CONFIG): MODEL_CHUNK_SIZE, THREADS_PER_QUEUE, ..."""
    client = make_client(config_file, redis_url, prefix)
    try:
        click.echo(client.config(name, value))
    except AIWorkerError as exc:
        fail(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
