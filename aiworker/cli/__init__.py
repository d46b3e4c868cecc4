"""The ``aiworker`` command line (click). Every option also reads an ``AIWORKER_*`` variable (the
gateway's ``AIWORKER_GATEWAY_*``); expected errors print one ``(error) ...`` line and exit 1.

The commands live in modules by concern: ``serve`` (worker, up), ``objects`` (tensor, model,
script), ``execution`` (run, exec, info, config), ``ops`` (status, check) and ``gateway``;
``common`` holds the shared options and helpers.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from aiworker import logs
from aiworker.cli import execution, gateway, objects, ops, serve
from aiworker.cli.common import EXPECTED_ERRORS, fail, worker_statuses

__all__ = ["main", "worker_statuses"]


class _Commands(click.Group):
    """The command group, turning an expected error of any command into one ``(error) ...``
    line and exit 1, as ``redis-cli`` reports one."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            fail(exc)


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
