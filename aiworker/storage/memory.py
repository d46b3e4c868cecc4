"""Redis's ``maxmemory-policy``, as it concerns aiworker's keys.

When Redis is full, an eviction policy frees memory by deleting keys: ``allkeys-*`` any key,
aiworker's own included (queue streams and their consumer groups, so queued jobs; models;
statistics; reply lists; the worker registry), ``volatile-*`` keys with a TTL - of aiworker's,
the reply lists (and DAG outputs left in keys for a reply), worker heartbeats, queue length
limits, a job read's flag key, a client's stage key of a large tensor and, on Redis Cluster, the
completion's done markers. Any of them evicted loses a job, a reply, or a worker's liveness.
``noeviction`` refuses writes instead, which aiworker answers with Redis's OOM error.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from aiworker.protocol.text import text

log = logging.getLogger("aiworker")

_EVICTS = {
    "allkeys": "any key, aiworker's own included: queued jobs and their consumer group, "
    "models, replies, the worker registry",
    "volatile": "keys with a TTL, aiworker's reply lists and worker heartbeats among them: a "
    "reply or a live worker can vanish",
}


def policy_warning(policy: str) -> str | None:
    """What is wrong with Redis evicting by ``policy`` (None: ``noeviction``, nothing)."""
    evicts = _EVICTS.get(policy.split("-", 1)[0])
    if evicts is None:
        return None
    return (
        f"Redis's maxmemory-policy is {policy}: when it is full it evicts {evicts}; "
        "set maxmemory-policy noeviction (Redis then refuses writes, and aiworker answers "
        "with its OOM error)"
    )


def eviction_warning(r: Any) -> str | None:
    """``policy_warning`` for the Redis ``r`` talks to; None also when CONFIG GET is refused
    (managed services rename or disable CONFIG, a least-privilege ACL user lacks it)."""
    try:
        reply = r.config_get("maxmemory-policy")
    except redis.RedisError as exc:
        log.debug("maxmemory-policy not checked: CONFIG GET refused (%s)", exc)
        return None
    policy = next(iter(reply.values()), "") if isinstance(reply, dict) and reply else ""
    return policy_warning(text(policy))
