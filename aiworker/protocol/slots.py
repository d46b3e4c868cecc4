"""RedisAI's key rule on Redis Cluster, made explicit. Pure code.

A Lua script touches one hash slot, and a job's completion must write its results and its reply
together, at most once (``complete_once.lua``). So on a cluster the keys a request *writes* and
its reply list share one slot: MODELEXECUTE/SCRIPTEXECUTE ``OUTPUTS``, a DAG's ``PERSIST`` keys,
and the ``reply`` key (the Python client gives its reply list the outputs' hash tag). Nothing else
is constrained: inputs, LOADed keys, models and scripts are read wherever they live, and a
script's KEYS (reached with ``redis.execute`` while it runs, not by the completion) may be
anywhere, each command a script sends obeying Redis' own rule. Statistics, dead letters and
forwards to other queues are written by steps of their own. A request breaking the rule gets
RedisAI's ``CROSSSLOT Keys in request don't hash to the same slot`` before it is queued (client),
or as its reply (an entry written by hand).
"""

from __future__ import annotations

from aiworker.protocol import messages
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import key_slot
from aiworker.protocol.requests import Request


def anchor(request: Request) -> str | None:
    """A key whose slot the request's reply list must share (None: any slot will do)."""
    keys = request.written_together()
    return keys[0] if keys else None


def check_slot(request: Request, reply: str | None = None) -> None:
    """Raise RedisAI's CROSSSLOT error unless the written keys and the reply share a slot."""
    keys = list(request.written_together())
    if reply:
        keys.append(reply)
    if len({key_slot(key) for key in keys}) > 1:
        raise AIError(messages.CROSSSLOT)
