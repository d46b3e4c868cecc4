"""A job's keys checked against the client's own ACL before the job is queued.

A worker reads a job's inputs and writes its outputs with its own credentials. RedisAI declared a
command's keys to Redis, which checked them against the caller's ACL; a gateway that only queued
the job let a user whose ACL denies a key read it (``AI.DAGEXECUTE_RO LOAD 1 secret |>
AI.TENSORGET secret``) or overwrite it (``OUTPUTS secret``). So the gateway asks Redis first, on
the connection the client authenticated, in one round trip: for every key the job reads (its
model or script, its inputs, LOAD keys, a script's KEYS) an ``HGET`` of a field no tensor has,
which needs read permission; for every key it writes (outputs, PERSIST keys, a script's KEYS)
an ``HDEL`` of that field, which needs write permission and changes nothing. A refusal (NOPERM,
or READONLY on a replica) is the command's error and nothing is queued. Replies to the probes
themselves (a value, a WRONGTYPE) mean only that access is allowed.
"""

from __future__ import annotations

from typing import Any

import redis

from aiworker.protocol.requests import KIND
from aiworker.storage.plans import Commands, Plan

# A hash field no tensor, model or script has (their fields are short ASCII names).
PROBE_FIELD = b"\x00aiworker access probe\x00"
_REFUSALS = (redis.exceptions.NoPermissionError, redis.exceptions.ReadOnlyError)


def check_plan(request: Any) -> Plan[None]:
    """Raise Redis' refusal when the client may not read or write a key ``request`` names."""
    reads = dict.fromkeys(key for kind, key in request.state_reads() if kind != KIND)
    reads.update(dict.fromkeys(request.reached_keys()))
    writes = dict.fromkeys(request.written_keys())
    probes = [("HGET", key, PROBE_FIELD) for key in reads]
    probes += [("HDEL", key, PROBE_FIELD) for key in writes]
    if not probes:
        return
    replies = yield Commands(probes)
    for reply in replies:
        if isinstance(reply, _REFUSALS):
            raise reply
