"""A job's keys checked against the client's own ACL as the job is queued.

A worker reads a job's inputs and writes its outputs with its own credentials. RedisAI declared a
command's keys to Redis, which checked them against the caller's ACL; a gateway that only queued
the job let a user whose ACL denies a key read it (``AI.DAGEXECUTE_RO LOAD 1 secret |>
AI.TENSORGET secret``) or overwrite it (``OUTPUTS secret``). So the gateway asks Redis, on the
connection the client authenticated and in the job's own MULTI with its XADD (no round trip of
its own: ``client.ops.Submit.guard``): for every key the job reads (its model or script, its
inputs, LOAD keys, a script's KEYS) an ``HGET`` of a field no tensor has, which needs read
permission; for every key it writes (outputs, PERSIST keys, a script's KEYS) an ``HDEL`` of that
field, which needs write permission and changes nothing. A refusal (NOPERM, or READONLY on a
replica: Redis refuses such commands as they are queued, and EXEC then runs nothing) is the
command's error and nothing is queued. Replies to the probes themselves (a value, a WRONGTYPE)
mean only that access is allowed. A script's KEYS entry ``{tag}`` (RedisAI's way to route it)
would let the script reach every key of the tag, which no probe can ask about: through the
gateway a script reaches its declared keys only (``ScriptExecute.exact_keys``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiworker.protocol.requests import KIND, DagExecute, ScriptExecute

# A hash field no tensor, model or script has (their fields are short ASCII names).
PROBE_FIELD = b"\x00aiworker access probe\x00"


def probes(request: Any) -> tuple[tuple[Any, ...], ...]:
    """The commands that ask Redis whether the client may read and write every key ``request``
    names (``Submit.guard``)."""
    reads = dict.fromkeys(key for kind, key in request.state_reads() if kind != KIND)
    reads.update(dict.fromkeys(request.reached_keys()))
    asked = [("HGET", key, PROBE_FIELD) for key in reads]
    writes = dict.fromkeys(request.written_keys())
    return (*asked, *(("HDEL", key, PROBE_FIELD) for key in writes))


def exact(request: Any) -> Any:
    """``request`` with each script in it reaching its declared keys only."""
    if isinstance(request, ScriptExecute):
        return dataclasses.replace(request, exact_keys=True)
    if isinstance(request, DagExecute):
        return dataclasses.replace(request, ops=tuple(exact(op) for op in request.ops))
    return request
