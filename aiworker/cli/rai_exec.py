"""Run one AI.* command written in RedisAI syntax through a ``Client``; reply as RedisAI would.

Used by ``aiworker exec``. The command is parsed by ``aiworker.parser`` and carried out by the
same plan the gateway answers AI.* commands with (``gateway.translate.reply_plan``), driven on the
blocking client: queueable commands (MODELEXECUTE, SCRIPTEXECUTE, DAGs and their deprecated forms)
go to a worker, the others are plain reads and writes. The reply has RedisAI's shape
(``protocol.resp`` values), so it prints exactly as redis-cli printed RedisAI's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from aiworker.client.cluster import ClusterClient
from aiworker.client.ops import Op
from aiworker.client.sync import Client
from aiworker.gateway.translate import KeyFirst, key_first, reply_plan
from aiworker.parser import Command, parse_tokens, split
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.protocol.resp import error_reply_of


def execute(client: Client | ClusterClient, command: str | Sequence[str | bytes]) -> Any:
    """The RESP-shaped reply to ``command``; RedisAI's errors come back as ``ErrorReply``."""
    try:
        state = dataclasses.replace(client._state, raw=True)  # RedisAI's reply shapes
        return client._run(Op(None, reply_plan(state, _parse(command))))
    except AIWorkerError as exc:
        return error_reply_of(exc)


def _parse(command: str | Sequence[str | bytes]) -> Command | KeyFirst:
    """The command, or where RedisAI read its key before the arguments that are wrong, the
    check of that key (``KeyFirst``)."""
    tokens = split(command)
    try:
        return parse_tokens(tokens)
    except AIError as exc:
        first = key_first(tokens, exc)
        if first is None:
            raise
        return first
