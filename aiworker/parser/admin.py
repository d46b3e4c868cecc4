"""AI.INFO and AI.CONFIG."""

from __future__ import annotations

from collections.abc import Sequence

from aiworker.parser.commands import ConfigCommand, InfoGet, ModuleInfo
from aiworker.parser.common import is_word, parse_int, wrong_arity
from aiworker.protocol import messages
from aiworker.protocol.backend_names import known_backends
from aiworker.protocol.errors import AIError


def parse_info(args: Sequence[str]) -> InfoGet | ModuleInfo:
    """``AI.INFO key [RESETSTAT]`` (any other third argument is ignored, as in RedisAI), or
    ``AI.INFO`` alone: the module's versions."""
    if not args:
        return ModuleInfo()
    if len(args) > 2:
        raise wrong_arity("AI.INFO")
    return InfoGet(args[0], reset=len(args) == 2 and is_word(args[1], "RESETSTAT"))


def parse_config(args: Sequence[str]) -> ConfigCommand:
    """``AI.CONFIG LOADBACKEND b path | BACKENDSPATH path | MODEL_CHUNK_SIZE n | GET name``.

    aiworker also sets its worker settings (THREADS_PER_QUEUE, ...) with ``AI.CONFIG NAME value``;
    the client refuses names it does not know with RedisAI's ``unsupported subcommand``.
    """
    if not args:
        raise wrong_arity("AI.CONFIG")
    sub = args[0].upper()
    if sub == "LOADBACKEND":
        if len(args) < 3:
            raise wrong_arity("AI.CONFIG")
        backend = args[1].upper()
        if backend not in known_backends():
            raise AIError(messages.MODEL_UNSUPPORTED_BACKEND)
        return ConfigCommand("LOADBACKEND", backend, args[2])
    if sub == "GET":
        if len(args) != 2:
            raise wrong_arity("AI.CONFIG")
        return ConfigCommand("GET", args[1].upper())
    if sub == "BACKENDSPATH":
        if len(args) < 2:
            raise AIError("BACKENDSPATH: missing path argument")
        return ConfigCommand("SET", sub, args[1])
    if sub == "MODEL_CHUNK_SIZE":
        if len(args) < 2:
            raise AIError("MODEL_CHUNK_SIZE: missing chunk size")
        if parse_int(args[1], "MODEL_CHUNK_SIZE: invalid chunk size") <= 0:
            raise AIError("MODEL_CHUNK_SIZE: invalid chunk size")
        return ConfigCommand("SET", sub, args[1])
    if len(args) == 2:
        return ConfigCommand("SET", sub, args[1])
    raise AIError("unsupported subcommand")
