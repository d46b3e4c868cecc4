"""How long a client waits for a job's reply and what it says when the wait ends. Pure code, used
by the wait plan (``client.wait_plan``) that the blocking and the asyncio client drive.

A wait always ends:

* with TIMEOUT ``t`` ms: after ``t`` ms plus ``MARGIN_S``. If no worker has read the entry by
  then it is taken back from the queue (``queue_withdraw.lua``) and the answer is RedisAI's
  ``TIMEDOUT`` (RedisAI dropped a request that sat in its queue for ``t`` ms); if a worker read it,
  ``ReplyTimeout`` says it may still complete.
* without TIMEOUT: after the client's ``reply_timeout``, with ``ReplyTimeout`` saying whether
  the entry was taken back (it will never run) or a worker has it.
* early, with ``NoLiveWorker``, when heartbeats show no live worker serving the queue: checked
  once a reply is ``CHECK_AFTER_S`` late and then every ``CHECK_EVERY_S``. An entry no worker read
  is taken back; one a worker read and then died stays pending, and a worker started later takes
  it over after its visibility timeout (its reply then goes nowhere). When Redis holds no worker
  registry at all (fresh, or flushed: heartbeats go with everything else), workers get a
  heartbeat's time to show up first (``wait_plan.REGISTRY_GRACE_S``).
* early, with ``ReplyTimeout``, when the entry is gone from its stream and no reply came: Redis
  lost it or its reply (FLUSHALL, a restart without persistence, a failover). A worker deletes
  an entry only once its reply is written, so this is looked at, once a reply is
  ``ENTRY_CHECK_AFTER_S`` late and then every ``ENTRY_CHECK_EVERY_S`` (a wait without a limit
  would never end otherwise). A reply still on its way then gets ``GONE_SETTLE_S`` (on Redis
  Cluster ``GONE_SETTLE_CLUSTER_S``), never past the wait's own limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from aiworker.protocol.errors import NoLiveWorker, ReplyTimeout

MARGIN_S = 1.0
CHECK_AFTER_S = 0.5
CHECK_EVERY_S = 1.0
DEFAULT_REPLY_TIMEOUT_S = 60.0
ENTRY_CHECK_AFTER_S = 5.0
ENTRY_CHECK_EVERY_S = 5.0
# How long a reply may still come once its entry is gone: a single Redis deletes the entry and
# pushes the reply in one script; on Redis Cluster a completion that a resharding interrupts
# retries its reply for up to a minute after the entry was deleted (``complete_steps``).
GONE_SETTLE_S = 1.0
GONE_SETTLE_CLUSTER_S = 70.0

# queue_withdraw.lua's answers
REMOVED, DELIVERED, GONE = 1, 0, -1


def wait_limit(timeout_ms: int | None, reply_timeout: float | None) -> float | None:
    """Seconds to wait for a reply (None: no limit)."""
    if timeout_ms:
        return timeout_ms / 1000 + MARGIN_S
    return reply_timeout


def popped(reply: Any) -> Any:
    """A blocking read's reply (BLMOVE, BLPOP) as a job's wait reads it. UNBLOCKED ends one
    without a reply while the job runs on: a CLIENT UNBLOCK of the connection (RedisAI's blocked
    clients could not be unblocked), or its master made a replica (a failover on Redis Cluster:
    the reply is written to the promoted one). The wait goes on as after one that timed out."""
    if isinstance(reply, redis.ResponseError) and str(reply).startswith("UNBLOCKED"):
        return None
    return reply


def serves(statuses: Iterable[Mapping[str, Any]], queue: str) -> bool:
    """Whether any live worker heartbeat lists ``queue`` among its devices."""
    wanted = queue.upper()
    return any(wanted in (str(d).upper() for d in s.get("devices", ())) for s in statuses)


def no_worker_error(queue: str, withdrawn: int) -> NoLiveWorker:
    if withdrawn == DELIVERED:
        fate = (
            "; a worker took the job and stopped: it stays pending and runs when another worker "
            "takes it over"
        )
    else:
        fate = "; the job was removed from the queue and will not run"
    return NoLiveWorker(
        f"no live worker serves queue {queue}{fate}",
        removed=withdrawn != DELIVERED,
        unread=withdrawn == REMOVED,
    )


def timeout_error(queue: str, limit: float, timeout_ms: int | None, withdrawn: int) -> ReplyTimeout:
    head = f"no reply from a worker within {limit:g}s"
    if timeout_ms:
        head += f" (TIMEOUT {timeout_ms} ms)"
    if withdrawn == DELIVERED:
        return ReplyTimeout(f"{head}: a worker took the job from queue {queue} and may still "
                            "complete it")  # fmt: skip
    if withdrawn == GONE:
        return ReplyTimeout(
            f"{head}: the job is no longer in queue {queue}: a worker completed it and its reply "
            "was lost (a Redis failover can lose the last writes), or it was lost with a failed "
            "Redis master; retry it",
            removed=True,
        )
    return ReplyTimeout(
        f"{head}: no worker took the job from queue {queue}; it was removed from the queue "
        "and will not run",
        removed=True,
    )


def lost_error(queue: str) -> ReplyTimeout:
    return ReplyTimeout(
        f"the job is no longer in queue {queue} and no reply came: Redis lost the job or its "
        "reply (FLUSHALL or FLUSHDB, a restart without persistence, a failover that lost the "
        "last writes); it may or may not have run; retry it",
        removed=True,
    )


class Checkpoint:
    """A moment that comes ``after`` seconds from now, then every ``every`` seconds."""

    def __init__(self, start: float, after: float, every: float) -> None:
        self.next = start + after
        self.every = every

    def due(self) -> bool:
        """True (and schedules the next) when it has come."""
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.every
        return True


class Clock:
    """A wait's deadline and its checkpoints: heartbeats, and the entry looked for."""

    def __init__(self, limit: float | None) -> None:
        self.started = time.monotonic()
        self.deadline = None if limit is None else self.started + limit
        self.heartbeats = Checkpoint(self.started, CHECK_AFTER_S, CHECK_EVERY_S)
        self.entry = Checkpoint(self.started, ENTRY_CHECK_AFTER_S, ENTRY_CHECK_EVERY_S)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def slice(self, longest: float) -> float:
        """How long the next blocking wait may last: up to the next checkpoint or deadline."""
        now = time.monotonic()
        ends = [self.heartbeats.next, now + longest]
        if self.deadline is not None:
            ends.append(self.deadline)
        return max(min(ends) - now, 0.01)
