"""The wait for a job's reply, written once as a sans-IO plan (like httpx's auth flow:
``result = yield step``) that the blocking and the asyncio clients drive (``client.jobs``,
``asyncio.jobs``).

``job_plan`` queues an entry and waits for its reply; ``wait_plan`` waits for an entry already
queued (a pipeline's). The steps a driver carries out:

* ``Enqueue``: add the entry to its stream (``storage.queues.Enqueuer``); where the job has a
  private reply list, a first wait for the reply goes in the same round trip. Sends back
  ``Enqueued``;
* ``Receive``: the next reply for this job within some seconds (None: none came), from its
  private list or from the router of the client's shared one (``client.routing``);
* ``Liveness``: the workers' heartbeats (``storage.health.liveness_plan``);
* ``Pause``; and ``storage.plans.Commands`` (taking an entry back).

What the plan decides:

* **which reply answers the job**: only one that names the stream and the id Redis gave this job's
  XADD (``Reply.answers``). A forward notice for them moves the wait to the entry it announces
  (whose reply may have come before the notice on Redis Cluster: the last ``ASIDE`` replies about
  other entries are kept for that); anything else is dropped, never returned;
* **when the wait ends**, by ``client.waiting``'s rules (TIMEOUT plus a margin, ``reply_timeout``,
  or no live worker serving the queue, checked from heartbeats). A Redis without any worker
  registry (fresh, or just flushed with everything in it) gets ``REGISTRY_GRACE_S`` for a worker
  to beat before ``NoLiveWorker`` is said;
* **Redis that stops answering**: a lost command while waiting is not the job's end; the wait goes
  on within its limits, and ends with ``ReplyTimeout`` saying what could not be found out. Only an
  XADD whose answer was lost ends it at once: without the id Redis gave the entry, no reply can be
  told from a forged one (``ReplyTimeout``: it may or may not have been queued; retry it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from aiworker.client import waiting
from aiworker.protocol.errors import QueueFull, ReplyTimeout
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import Reply, Status, decode_reply
from aiworker.storage import queues
from aiworker.storage.cluster import LOST
from aiworker.storage.plans import Commands, Plan

# The longest single wait for a reply: short enough for redis-py's socket read timeout (drivers
# shorten it further below the connection's own timeout).
LONGEST_WAIT_S = 1.0
# The shortest wait sent: below 1 ms Redis reads 0, and blocks for ever.
SHORTEST_WAIT_S = 0.01
# Pause before asking Redis again after it did not answer.
LOST_PAUSE_S = 0.2
# No worker registry at all (a fresh or flushed Redis): how long workers get to beat once (every
# 2 s) before the client says no live worker serves the queue.
REGISTRY_GRACE_S = 2.5
# Replies about other entries a wait keeps: on Redis Cluster a forward's notice and its entry are
# written in two steps (two hash slots), so the forwarded entry's reply can come first.
ASIDE = 32


def longest_wait(socket_timeout: float | None) -> float:
    """The longest single wait for a reply to send on connections with this read timeout: half
    of it leaves room for Redis serving blocking timeouts up to 100 ms late."""
    if not socket_timeout:
        return LONGEST_WAIT_S
    return max(min(LONGEST_WAIT_S, socket_timeout / 2), SHORTEST_WAIT_S)


def bounded(wanted: float, longest: float) -> float:
    """A wait to send: ``wanted`` within ``longest`` and ``SHORTEST_WAIT_S``."""
    return max(min(wanted, longest), SHORTEST_WAIT_S)


@dataclass(frozen=True)
class Enqueue:
    """Driver step: add ``fields`` to ``stream``; where the job has a private reply list, wait up
    to ``wait`` seconds for the reply in the same round trip. A driver that retries a lost XADD
    (Redis Cluster's failover) stops at ``deadline`` (``time.monotonic()``; None: no limit).
    ``guard``: ``Submit.guard``, sent in one MULTI with the XADD (the gateway's driver)."""

    stream: str
    fields: Mapping[str, Any]
    wait: float
    deadline: float | None
    guard: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True)
class Enqueued:
    """What an ``Enqueue`` step sends back: the id Redis gave the entry, and a reply popped in
    the same round trip (raw bytes), if any."""

    entry_id: str
    first: Any = None


@dataclass(frozen=True)
class Receive:
    """Driver step: the next reply for this job (raw bytes, or a ``Reply`` a router decoded)
    within ``seconds``; None when none came."""

    seconds: float


@dataclass(frozen=True)
class Liveness:
    """Driver step: ``storage.health.liveness_plan``'s answer (live heartbeats, registry)."""


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Target:
    """The entry a wait is for: its device queue's name, stream and id."""

    device: str
    stream: str
    entry_id: str


class _Wait:
    """One wait's state: the entry it is for (it moves with forwards), its clock, its checks."""

    def __init__(
        self,
        keys: Keys,
        target: Target,
        timeout_ms: int | None,
        clock: waiting.Clock,
        settle_s: float = waiting.GONE_SETTLE_S,
    ):
        self.keys = keys
        self.settle_s = settle_s  # how long a reply may still come once its entry is gone
        self.target = target
        self.timeout_ms = timeout_ms
        self.clock = clock
        self.unregistered_since: float | None = None
        # replies about other entries, kept in case a forward notice names one (see ASIDE)
        self.aside: deque[Reply] = deque(maxlen=ASIDE)

    def accept(self, item: Any) -> Reply | bool:
        """The answer (a ``Reply``); True when ``item`` is the notice that the entry was
        forwarded (the wait moves on to the new entry); False when it is nothing of this job's."""
        reply = item if isinstance(item, Reply) else decode_reply(item)
        if reply is None:
            return False
        if not reply.answers(self.target.stream, self.target.entry_id):
            self.aside.append(reply)
            return False
        if reply.status is not Status.FORWARDED:
            return reply
        stream, entry_id = reply.to or ("", "")
        if not stream.startswith(self.keys.queue("")) or not entry_id:
            return False  # only a worker's notice for this job gets here: a queue of ours
        self.target = Target(self.keys.device_of(stream), stream, entry_id)
        for kept in list(self.aside):  # the forwarded entry's reply may have come first
            if kept.answers(stream, entry_id):
                self.aside.remove(kept)
                return self.accept(kept)
        return True

    def settle_left(self) -> float:
        """How long a reply may still come once the entry is gone: ``settle_s``, within the
        wait's limit (a cluster's 70 s would otherwise outlast a ``reply_timeout`` of 15)."""
        if self.clock.deadline is None:
            return self.settle_s
        return min(self.settle_s, max(self.clock.deadline - time.monotonic(), 0.0))

    @property
    def limit(self) -> float:
        assert self.clock.deadline is not None
        return self.clock.deadline - self.clock.started


def job_plan(
    keys: Keys,
    device: str,
    stream: str,
    fields: Mapping[str, Any],
    timeout_ms: int | None,
    limit: float | None,
    settle_s: float = waiting.GONE_SETTLE_S,
    guard: tuple[tuple[Any, ...], ...] = (),
) -> Plan[Reply]:
    """Queue ``fields`` on ``stream`` (device queue ``device``) and wait for the reply
    (``settle_s``: ``waiting.GONE_SETTLE_S``, or its Redis Cluster value; ``guard``:
    ``Enqueue.guard``)."""
    clock = waiting.Clock(limit)
    try:
        wait = clock.slice(LONGEST_WAIT_S)
        sent: Enqueued = yield Enqueue(stream, fields, wait, clock.deadline, guard)
    except LOST as exc:
        raise unconfirmed_error(stream, exc) from exc
    except redis.ResponseError as exc:
        if queues.is_full(exc):
            raise queue_full_error(device, exc) from None
        raise
    target = Target(device, stream, sent.entry_id)
    return (yield from wait_plan(keys, target, timeout_ms, clock, sent.first, settle_s))


def wait_plan(
    keys: Keys,
    target: Target,
    timeout_ms: int | None,
    clock: waiting.Clock,
    first: Any = None,
    settle_s: float = waiting.GONE_SETTLE_S,
) -> Plan[Reply]:
    """Wait for the reply to ``target`` (``first``: a reply already received, if any)."""
    wait = _Wait(keys, target, timeout_ms, clock, settle_s)
    item = first
    while True:
        if item is not None:
            found = wait.accept(item)
            if isinstance(found, Reply):
                return found
        ended = yield from _check(wait)
        if ended is not None:
            return ended
        item = yield from _receive(clock.slice(LONGEST_WAIT_S))


def _receive(seconds: float) -> Plan[Any]:
    try:
        return (yield Receive(seconds))
    except LOST:  # Redis stalled or failing over: the clock decides when to give up
        yield Pause(min(seconds, LOST_PAUSE_S))
        return None


def _check(wait: _Wait) -> Plan[Reply | None]:
    """None to keep waiting; else the reply to return (the wait's end raises)."""
    if wait.clock.expired():
        return (yield from _end(wait, expired=True))
    if wait.clock.heartbeats.due():
        if (yield from _no_live_worker(wait)):
            return (yield from _end(wait, expired=False))
        if wait.clock.entry.due() and (yield from _entry_gone(wait)):
            return (yield from _lost(wait))
    return None


def _entry_gone(wait: _Wait) -> Plan[bool]:
    """Whether the entry is no longer in its stream (False: it is, or Redis cannot say)."""
    target = wait.target
    try:
        replies = yield Commands.one("XRANGE", target.stream, target.entry_id, target.entry_id)
    except LOST:
        return False
    found = replies[0]
    return not isinstance(found, Exception) and not found  # an ACL without XRANGE: unknown


def _lost(wait: _Wait) -> Plan[Reply | None]:
    """The entry is gone: its reply, if it was on its way; else Redis lost the job or its reply
    (a worker deletes an entry only once its reply is written)."""
    late = yield from _linger(wait, wait.settle_left())
    if isinstance(late, Reply):
        return late
    if late:
        return None  # forwarded: the wait moved on to the new entry
    raise waiting.lost_error(wait.target.device)


def _no_live_worker(wait: _Wait) -> Plan[bool]:
    try:
        statuses, registered = yield Liveness()
    except LOST:
        return False  # cannot tell now: ask again at the next check
    if waiting.serves(statuses, wait.target.device):
        wait.unregistered_since = None
        return False
    if registered:
        return True
    # no registry at all: a Redis just flushed lost the heartbeats too; give workers time to beat
    now = time.monotonic()
    if wait.unregistered_since is None:
        wait.unregistered_since = now
    return now - wait.unregistered_since >= REGISTRY_GRACE_S


def _end(wait: _Wait, expired: bool) -> Plan[Reply | None]:
    """Take the entry back if no worker read it, catch a reply that raced the decision, and end
    the wait (None: a forward moved it on, or Redis could not say: keep waiting)."""
    while True:
        target = wait.target
        try:
            withdrawn = yield from queues.withdraw_plan(target.stream, target.entry_id)
        except LOST as exc:
            if not expired:
                return None
            raise lost_error(target.device, wait.limit, exc) from exc
        if withdrawn == waiting.REMOVED:
            break
        late = yield from _linger(wait, 1.0 if withdrawn == waiting.GONE else 0.01)
        if isinstance(late, Reply):
            return late
        if not late:
            break
        if not expired:  # forwarded: the next check looks at the queue it went to
            return None
    if expired:
        if wait.timeout_ms and withdrawn == waiting.REMOVED:
            return Reply(Status.TIMEDOUT, target.stream, target.entry_id, extra={"withdrawn": True})
        raise waiting.timeout_error(target.device, wait.limit, wait.timeout_ms, withdrawn)
    raise waiting.no_worker_error(target.device, withdrawn)


def _linger(wait: _Wait, seconds: float) -> Plan[Reply | bool]:
    """A reply (or forward notice) for the entry arriving within ``seconds``; False if none."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        item = yield from _receive(left)
        found = wait.accept(item) if item is not None else False
        if found is not False:
            return found
    return False


def unconfirmed_error(stream: str, exc: BaseException) -> ReplyTimeout:
    return ReplyTimeout(
        f"Redis did not confirm the job's XADD to {stream} ({exc}): it may or may not have been "
        "queued; retry it"
    )


def lost_error(device: str, limit: float, exc: BaseException) -> ReplyTimeout:
    return ReplyTimeout(
        f"no reply from a worker within {limit:g}s, and Redis could not say what became of the "
        f"job in queue {device} ({exc}): it may or may not have run; retry it"
    )


def queue_full_error(device: str, exc: BaseException) -> QueueFull:
    """RedisAI-style error for a job refused at enqueue by the queue's ``max_queue_length``."""
    length, limit = queues.full_counts(exc)
    return QueueFull(
        f"queue {device} is full: {length} jobs waiting, max_queue_length {limit}; "
        "the job was not queued"
    )
