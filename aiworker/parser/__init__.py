"""RedisAI command syntax -> typed requests. Pure code, unit-tested without Redis.

One parser serves the worker (``cmd`` stream entries, including DAGs typed in redis-cli), the CLI's
``aiworker exec`` and the client's deprecated aliases. ``parse`` accepts every AI.* command;
``parse_command`` only the queueable ones (MODELEXECUTE, SCRIPTEXECUTE, DAGs and their deprecated
forms), which become jobs. Errors are ``AIError`` with RedisAI's messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from aiworker.parser.admin import parse_config, parse_info
from aiworker.parser.commands import DirectCommand
from aiworker.parser.common import wrong_arity
from aiworker.parser.dag import DAG_COMMANDS, parse_dag
from aiworker.parser.execute import (
    parse_modelexecute,
    parse_modelrun,
    parse_scriptexecute,
    parse_scriptrun,
)
from aiworker.parser.lexer import normalize, to_bytes, tokenize
from aiworker.parser.model import (
    parse_modeldel,
    parse_modelget,
    parse_modelscan,
    parse_modelset,
    parse_modelstore,
)
from aiworker.parser.script import (
    parse_scriptdel,
    parse_scriptget,
    parse_scriptscan,
    parse_scriptset,
    parse_scriptstore,
)
from aiworker.parser.tensor import parse_tensorget, parse_tensorset
from aiworker.parser.validate import check
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import Request, TensorGet, TensorSet

Command = Request | TensorSet | TensorGet | DirectCommand

QUEUED: dict[str, Callable[[Sequence[str]], Request]] = {
    "AI.MODELEXECUTE": parse_modelexecute,
    "AI.MODELRUN": parse_modelrun,
    "AI.SCRIPTEXECUTE": parse_scriptexecute,
    "AI.SCRIPTRUN": parse_scriptrun,
    **{name: partial(parse_dag, command=name) for name in DAG_COMMANDS},
}
DIRECT: dict[str, Callable[[Sequence[str]], Any]] = {
    "AI.TENSORSET": parse_tensorset,
    "AI.TENSORGET": parse_tensorget,
    "AI.MODELSTORE": parse_modelstore,
    "AI.MODELSET": parse_modelset,
    "AI.MODELGET": parse_modelget,
    "AI.MODELDEL": parse_modeldel,
    "AI._MODELSCAN": parse_modelscan,
    "AI.SCRIPTSTORE": parse_scriptstore,
    "AI.SCRIPTSET": parse_scriptset,
    "AI.SCRIPTGET": parse_scriptget,
    "AI.SCRIPTDEL": parse_scriptdel,
    "AI._SCRIPTSCAN": parse_scriptscan,
    "AI.INFO": parse_info,
    "AI.CONFIG": parse_config,
}
# Deprecated commands and their replacements (RedisAI 1.2 logged a warning for each use).
DEPRECATED = {
    "AI.MODELSET": "AI.MODELSTORE",
    "AI.MODELRUN": "AI.MODELEXECUTE",
    "AI.SCRIPTSET": "AI.SCRIPTSTORE",
    "AI.SCRIPTRUN": "AI.SCRIPTEXECUTE",
    "AI.DAGRUN": "AI.DAGEXECUTE",
    "AI.DAGRUN_RO": "AI.DAGEXECUTE_RO",
}


def split(command: str | Sequence[str | bytes | int | float]) -> list[str]:
    """Tokens of a command given as redis-cli text or as separate arguments."""
    tokens = tokenize(command) if isinstance(command, str) else normalize(command)
    if not tokens:
        raise AIError("empty command")
    return tokens


def parse(command: str | Sequence[str | bytes | int | float]) -> Command:
    """Parse any AI.* command into its typed request."""
    return parse_tokens(split(command))


def parse_tokens(tokens: list[str]) -> Command:
    """``parse`` of a command already split into text tokens (at least its name)."""
    name = tokens[0].upper()
    parser = QUEUED.get(name) or DIRECT.get(name)
    if parser is None:
        raise AIError(f"unknown command '{tokens[0]}'")
    result: Command = parser(tokens[1:])
    return result


def parse_command(command: str | Sequence[str | bytes | int | float]) -> Request:
    """Parse a queueable command (what a ``cmd`` stream entry may hold)."""
    tokens = split(command)
    parser = QUEUED.get(tokens[0].upper())
    if parser is None:
        raise AIError(f"unsupported command in a job: {tokens[0]}")
    return check(parser(tokens[1:]))


__all__ = [
    "DEPRECATED",
    "DIRECT",
    "QUEUED",
    "Command",
    "parse",
    "parse_command",
    "parse_dag",
    "parse_modelexecute",
    "parse_scriptexecute",
    "split",
    "to_bytes",
    "tokenize",
    "wrong_arity",
]
