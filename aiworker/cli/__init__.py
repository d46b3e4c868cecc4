"""The ``aiworker`` command line (click). Every option also reads an ``AIWORKER_*`` variable (the
gateway's ``AIWORKER_GATEWAY_*``); expected errors print one ``(error) ...`` line and exit 1.

The commands live in modules by concern: ``serve`` (worker, up), ``objects`` (tensor, model,
script), ``execution`` (run, exec, info, config), ``ops`` (status, check) and ``gateway``;
``common`` holds the shared options and helpers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import click
from click.core import ParameterSource

from aiworker import logs
from aiworker.cli import execution, gateway, objects, ops, serve
from aiworker.cli.common import EXPECTED_ERRORS, fail, worker_statuses

__all__ = ["main", "worker_statuses"]


class _Commands(click.Group):
    """The command group, turning an expected error of any command into one ``(error) ...``
    line and exit 1, as ``redis-cli`` reports one."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _settings_from_the_environment():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _settings_from_the_environment():
                return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            fail(exc)


@contextlib.contextmanager
def _settings_from_the_environment() -> Iterator[None]:
    """An option's invalid value read from its variable (``AIWORKER_GATEWAY_THREADS=0``) is an
    invalid setting, as an ``AIWORKER_*`` setting's is: one ``(error)`` line naming the variable
    and exit 1, not click's usage error naming a flag the user never gave."""
    try:
        yield
    except click.BadParameter as exc:
        param, ctx = exc.param, exc.ctx
        if param is None or ctx is None or param.name is None:
            raise
        if ctx.get_parameter_source(param.name) is not ParameterSource.ENVIRONMENT:
            raise
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        name = next((each for each in names if each in os.environ), " or ".join(names))
        fail(f"{name}: {exc.message}")


@click.group(cls=_Commands)
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


for command in (
    serve.worker,
    serve.up,
    objects.tensor,
    objects.model,
    objects.script,
    execution.run,
    execution.exec_command,
    execution.info,
    execution.config,
    ops.check,
    ops.status,
    gateway.gateway,
):
    main.add_command(command)
