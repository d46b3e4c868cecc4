"""Hashes written whole under a temporary key and moved onto their key by one script that checks
the key first (``checked_move.lua``): a tensor over 16 KiB, a model, a script.

What is large (a tensor's blob, a model's chunks, a script's source) goes as plain HSETs of the
temporary key, never through Lua (Redis hashes every byte a script is given), and the writes, the
check and the move are one MULTI: one round trip, nothing half written, and a value someone wrote
to the key since the writer last looked at it (a tensor, while a model was being verified) is
refused with WRONGTYPE rather than overwritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import redis

from aiworker.protocol.errors import WrongTypeError
from aiworker.protocol.keys import Keys
from aiworker.storage import lua
from aiworker.storage.plans import Commands, Plan

_MOVE = lua.load("checked_move")
# A staged hash whose move did not run (its script had to be loaded first, and the client died
# meanwhile) is dropped after this long.
TEMP_TTL_MS = 60_000


def write_plan(
    keyspace: Keys,
    key: str,
    kind: str,
    parts: Sequence[Sequence[Any]],
    stats: str | None = None,
    after: Sequence[tuple[Any, ...]] = (),
) -> Plan[None]:
    """Replace ``key`` with a hash of ``kind`` ('tensor', 'model', 'script'), written as one HSET
    per part of ``parts`` (field, value, ...: a model's chunks one by one), unless the key holds
    another kind of value (``WrongTypeError``); ``stats``: a statistics key reset with the move;
    ``after``: commands sent in the same MULTI after the move (they run whatever it did)."""
    temp = keyspace.temp(key, uuid.uuid4().hex)
    keys = [key, temp, *([stats] if stats else [])]
    commands: list[tuple[Any, ...]] = [("HSET", temp, *parts[0]), ("PEXPIRE", temp, TEMP_TTL_MS)]
    commands += [("HSET", temp, *fields) for fields in parts[1:]]
    commands += [("EVALSHA", _MOVE.sha, len(keys), *keys, kind), *after]
    replies = yield Commands(commands, transaction=True)
    at = len(commands) - len(after) - 1
    moved = replies[at]
    if isinstance(moved, redis.exceptions.NoScriptError):  # staged: load it, then move
        moved = yield from _MOVE.plan(keys, [kind], load=True)
    for reply in (*replies[:at], moved, *replies[at + 1 :]):
        if isinstance(reply, Exception):
            if str(reply).startswith("WRONGTYPE"):
                raise WrongTypeError()
            raise reply
