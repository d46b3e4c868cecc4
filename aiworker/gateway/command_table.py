"""The AI.* commands in Redis' command table, as RedisAI's module registered them. Pure code.

Cluster clients look a command up in the table Redis sends for COMMAND before they send it, to
find its keys (redis-py's ``RedisCluster`` refuses a command it cannot find there, and asks COMMAND
GETKEYS for those whose keys move). Redis, which the gateway passes COMMAND on to, knows no AI.*
command: ``with_ai_commands`` adds RedisAI's entries to its replies to COMMAND, COMMAND COUNT,
COMMAND LIST and COMMAND INFO, and ``getkeys`` answers COMMAND GETKEYS for an AI.* command.

The entries are those of RedisAI's ``RedisModule_CreateCommand`` calls (flags, first key, last
key, step); its ``getkeys-api`` commands (jobs and DAGs) are ``movablekeys``. GETKEYS names the
keys aiworker's cluster rule ties together (``protocol.slots``): a job's OUTPUTS, a DAG's PERSIST
keys, else the command's first key; anything else a request names may live in any slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import DagExecute, ModelExecute, ScriptExecute

from . import resp
from .commands import parse_command
from .translate import KeyFirst

_WRITE, _READ = (b"write", b"denyoom"), (b"readonly",)
_MOVABLE = (b"movablekeys",)
# name: (flags, first key, last key, step), as RedisAI registered them
AI_COMMANDS: dict[bytes, tuple[tuple[bytes, ...], int, int, int]] = {
    b"ai.tensorset": (_WRITE, 1, 1, 1),
    b"ai.tensorget": (_READ, 1, 1, 1),
    b"ai.modelset": (_WRITE, 1, 1, 1),
    b"ai.modelstore": (_WRITE, 1, 1, 1),
    b"ai.modelget": (_READ, 1, 1, 1),
    b"ai.modeldel": ((b"write",), 1, 1, 1),
    b"ai.modelrun": (_WRITE + _MOVABLE, 3, 3, 1),
    b"ai.modelexecute": (_WRITE + _MOVABLE, 4, 4, 1),
    b"ai._modelscan": (_READ, 1, 1, 1),
    b"ai.scriptset": (_WRITE, 1, 1, 1),
    b"ai.scriptstore": (_WRITE, 1, 1, 1),
    b"ai.scriptget": (_READ, 1, 1, 1),
    b"ai.scriptdel": ((b"write",), 1, 1, 1),
    b"ai.scriptrun": (_WRITE + _MOVABLE, 4, 4, 1),
    b"ai.scriptexecute": (_WRITE + _MOVABLE, 5, 5, 1),
    b"ai._scriptscan": (_READ, 1, 1, 1),
    b"ai.info": (_READ, 1, 1, 1),
    b"ai.config": ((b"write",), 1, 1, 1),
    b"ai.dagrun": (_WRITE + _MOVABLE, 3, 3, 1),
    b"ai.dagrun_ro": (_READ + _MOVABLE, 3, 3, 1),
    b"ai.dagexecute": (_WRITE + _MOVABLE, 3, 3, 1),
    b"ai.dagexecute_ro": (_READ + _MOVABLE, 3, 3, 1),
}


def entry(name: bytes) -> list[Any]:
    """COMMAND's entry for an AI.* command (Redis 7's ten fields; arity -1, as any module
    command's)."""
    flags, first, last, step = AI_COMMANDS[name]
    return [name, -1, [*flags, b"module"], first, last, step, [b"@module"], [], [], []]


def _nil(item: bytes) -> bool:
    return item in (b"*-1\r\n", b"$-1\r\n", b"_\r\n")


def with_ai_commands(args: Sequence[bytes], data: bytes, resp3: bool) -> bytes:
    """Redis' reply to ``args`` (COMMAND, COMMAND COUNT, LIST or INFO) with the AI.* commands
    added; any other reply (an error, DOCS, LIST FILTERBY) as it came."""
    sub = args[1].upper() if len(args) > 1 else b""
    if sub == b"COUNT" and data[:1] == b":":
        return b":%d\r\n" % (int(data[1:-2]) + len(AI_COMMANDS))
    if data[:1] != b"*" or not (sub in (b"", b"INFO") or (sub == b"LIST" and len(args) == 2)):
        return data
    items = resp.array_items(data, 0, len(data))
    if items is None:
        return data
    if sub == b"INFO":  # an entry for each name Redis did not know that RedisAI did
        names = [name.lower() for name in args[2:]]
        for at, name in enumerate(names[: len(items)]):
            if name in AI_COMMANDS and _nil(items[at]):
                items[at] = resp.encode(entry(name), resp3)
    elif sub == b"LIST":
        items += [resp.encode(name, resp3) for name in AI_COMMANDS]
    else:
        items += [resp.encode(entry(name), resp3) for name in AI_COMMANDS]
    return b"*%d\r\n" % len(items) + b"".join(items)


def getkeys(command: Any) -> list[str]:
    """COMMAND GETKEYS for a parsed AI.* command (see the module docstring)."""
    if isinstance(command, (ModelExecute, ScriptExecute, DagExecute)):
        together = list(command.written_together())
        if together:
            return together
        if isinstance(command, DagExecute):
            first = (
                command.routing
                or next(iter(command.load), None)
                or next(iter(command.names()), None)
            )
            return [first] if first else []
    key = getattr(command, "key", None)
    return [key] if isinstance(key, str) else []


def getkeys_reply(args: Sequence[bytes], keyspace: Keys, resp3: bool) -> bytes:
    """The reply to COMMAND GETKEYS (or GETKEYSANDFLAGS) for an AI.* command, with Redis'
    errors for a command that does not parse or names no key."""
    try:
        command = parse_command(list(args[2:]), keyspace)
    except Exception:  # RedisAI's parse error: Redis' answer for a command it cannot parse
        return resp.error("ERR Invalid arguments specified for command")
    if isinstance(command, KeyFirst):
        return resp.error("ERR Invalid arguments specified for command")
    keys = [key.encode("utf-8", "surrogateescape") for key in getkeys(command)]
    if not keys:
        return resp.error("ERR The command has no key arguments")
    if args[1].upper() == b"GETKEYSANDFLAGS":
        access = [b"RO"] if b"readonly" in AI_COMMANDS[args[2].lower()][0] else [b"RW"]
        return resp.encode([[key, access] for key in keys], resp3)
    return resp.encode(keys, resp3)
