"""Stored-object commands: the ``tensor``, ``model`` and ``script`` groups."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from aiworker.cli.common import argument_checks, fail, make_client, quiet, redis_options
from aiworker.client import commands
from aiworker.protocol import tensor as codec
from aiworker.protocol.backend_names import io_name_backends, known_backends
from aiworker.protocol.errors import AIWorkerError
from aiworker.storage.model import validate_meta

# tensors -----------------------------------------------------------------------------------


@click.group()
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
    """Store KEY as a DTYPE tensor of SHAPE from VALUES (zeros when none); SHAPE is its
    dimensions separated by commas, like 2,3."""
    client = make_client(config_file, redis_url, prefix)
    try:
        dims = [int(d) for d in shape.split(",") if d] if shape else []
    except ValueError:
        hint = "dimensions separated by commas, like 2,3"
        raise click.BadParameter(f"{shape!r}: {hint}", param_hint="SHAPE") from None
    try:
        dtype = codec.parse_dtype(dtype)  # RedisAI's type names, as AI.TENSORSET took them
        with argument_checks():
            array = list(values) if values else None
            click.echo(client.tensorset(key, array, shape=dims, dtype=dtype))
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


@click.group()
def model() -> None:
    """Store, get, delete and list models."""


@model.command("store")
@redis_options
@click.argument("key")
@click.argument("backend")
@click.argument("device")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--tag", default=None, help="A tag stored with the model (TAG).")
@click.option("--batch", type=int, default=None, help="BATCHSIZE: most rows batched into one run.")
@click.option("--minbatch", type=int, default=None, help="MINBATCHSIZE: rows a batch waits for.")
@click.option(
    "--minbatchtimeout",
    type=int,
    default=None,
    help="MINBATCHTIMEOUT: ms after which a batch runs without MINBATCHSIZE rows.",
)
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
    names = (inputs.split(",") if inputs else None, outputs.split(",") if outputs else None)
    _check_store(backend, device, batch, minbatch, minbatchtimeout, *names)
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
        with argument_checks():
            client.modelstore(
                key,
                backend,
                device,
                blob,
                batch=batch,
                minbatch=minbatch,
                minbatchtimeout=minbatchtimeout,
                tag=tag,
                inputs=names[0],
                outputs=names[1],
            )
    except AIWorkerError as exc:
        fail(exc)
    click.echo(f"OK ({time.perf_counter() - started:.2f}s)")


def _check_store(
    backend: str,
    device: str,
    batch: int | None,
    minbatch: int | None,
    minbatchtimeout: int | None,
    inputs: list[str] | None,
    outputs: list[str] | None,
) -> None:
    """The store's own checks of its arguments, before a model file of gigabytes is read and
    sent: the same errors the store gives (a TF model's names are checked with its blob)."""
    with argument_checks():
        commands.modelstore(
            "key", backend, device, b"", batch, minbatch, minbatchtimeout, None, inputs, outputs,
            chunk_size=1, backends=set(known_backends()), io_backends=set(io_name_backends()),
            io_optional=True,
        )  # fmt: skip
    try:
        validate_meta(
            backend, device, known_backends=known_backends(), io_backends=(),
            batchsize=batch or 0, minbatchsize=minbatch or 0, minbatchtimeout=minbatchtimeout or 0,
        )  # fmt: skip
    except AIWorkerError as exc:
        fail(exc)


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
    if isinstance(blob, list):  # split by MODEL_CHUNK_SIZE, as RedisAI replied
        blob = b"".join(blob)
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
    for key, tag in quiet(client.modelscan):
        click.echo(f"{key}\t{tag}")


# scripts -----------------------------------------------------------------------------------


@click.group()
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
@click.option("--tag", default=None, help="A tag stored with the script (TAG).")
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
        with argument_checks():
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
        info = client.scriptget(key, meta_only=meta)
        # RedisAI's reply names them "Entry Points", as bytes; JSON wants text
        points = [p.decode() if isinstance(p, bytes) else p for p in info.pop("entry points", [])]
        info = {"device": info["device"], "tag": info["tag"], "entry_points": points, **info}
        click.echo(json.dumps(info, indent=2))
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
    for key, tag in quiet(client.scriptscan):
        click.echo(f"{key}\t{tag}")
