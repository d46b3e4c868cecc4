"""Per-model and per-script run statistics (RedisAI's AI.INFO), kept in Redis.

Every worker process adds to one hash per object with HINCRBY inside its completion transaction, so
the totals are exact across processes and hosts, and any client can read or reset them.
"""

from __future__ import annotations

from typing import Any

import redis

from aiworker.protocol import messages
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys
from aiworker.protocol.text import text
from aiworker.storage import plans
from aiworker.storage.plans import Commands, Plan

COUNTERS = ("duration", "samples", "calls", "errors")


def record(
    pipe: redis.client.Pipeline,
    keys: Keys,
    key: str,
    *,
    duration_us: int = 0,
    samples: int = 0,
    calls: int = 0,
    errors: int = 0,
) -> None:
    """Queue the counter increments on ``pipe`` (part of the job's completion transaction)."""
    stats_key = keys.stats(key)
    for name, amount in (
        ("duration", duration_us),
        ("samples", samples),
        ("calls", calls),
        ("errors", errors),
    ):
        if amount:
            pipe.hincrby(stats_key, name, amount)


def info_plan(keys: Keys, key: str) -> Plan[dict[str, Any]]:
    """RedisAI's AI.INFO fields for a model or script, summed over every worker."""
    replies = yield Commands(
        [("HMGET", key, "kind", "backend", "device", "tag"), ("HMGET", keys.stats(key), *COUNTERS)],
        transaction=True,
    )
    for reply in replies:
        if isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE"):
            raise AIError(messages.INFO_EMPTY)
        if isinstance(reply, Exception):
            raise reply
    (kind, backend, device, tag), counters = replies
    kind_text = text(kind)
    if kind_text not in ("model", "script"):
        raise AIError(messages.INFO_EMPTY)
    values = {name: int(v or 0) for name, v in zip(COUNTERS, counters, strict=True)}
    is_script = kind_text == "script"
    return {
        "key": key,
        "type": "SCRIPT" if is_script else "MODEL",
        "backend": "TORCH" if is_script else text(backend),
        "device": text(device),
        "tag": text(tag),
        "duration": values["duration"],
        "samples": -1 if is_script else values["samples"],
        "calls": values["calls"],
        "errors": values["errors"],
    }


def info(r: plans.AnyRedis, keys: Keys, key: str) -> dict[str, Any]:
    return plans.run(r, info_plan(keys, key))


def reset_plan(keys: Keys, key: str) -> Plan[None]:
    """RedisAI's AI.INFO key RESETSTAT."""
    replies = yield Commands.one("HGET", key, "kind")
    kind = replies[0]
    if isinstance(kind, Exception) and not str(kind).startswith("WRONGTYPE"):
        raise kind  # a refusal (NOPERM), Redis gone
    if isinstance(kind, Exception) or text(kind) not in ("model", "script"):
        raise AIError(messages.INFO_EMPTY)
    yield from plans.call("DEL", keys.stats(key))  # a refusal (an ACL, a replica) raises


def reset(r: plans.AnyRedis, keys: Keys, key: str) -> None:
    plans.run(r, reset_plan(keys, key))
