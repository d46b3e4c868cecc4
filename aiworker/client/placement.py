"""Where a job goes on Redis Cluster: the rules the blocking and the asyncio cluster clients
share (``client.cluster``, ``asyncio.cluster_jobs``), each driving them on its own connections.
Pure code (plus a clock).

* a job's private reply list takes the hash tag of the keys it writes (``protocol.slots``), and a
  request whose written keys span slots is refused before anything is queued (``check_slot``);
* a job goes to one of its device queue's partitions among the streams live workers announce
  (``Partitions``; the plain queue when none does): one on its reply key's master if there is one,
  so that its XADD and its reply's first look go to one node, else one at random;
* a round trip that lost a node (a failover) is sent again until the wait's own limit, unless
  the cluster answered the XADD (``after_lost``).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import redis

from aiworker.client.wait_plan import Enqueue, Enqueued
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import MSGPACK
from aiworker.protocol.requests import Request
from aiworker.protocol.slots import anchor
from aiworker.storage import health
from aiworker.storage.cluster import NodeLost, slot_of
from aiworker.storage.plans import Plan
from aiworker.storage.queues import Enqueuer

# How often a client looks again at which queue partitions live workers serve.
PARTITIONS_REFRESH_S = 2.0
# Pause before trying Redis again while a job's XADD rides out a failover.
FAILOVER_PAUSE_S = 0.2


class Topology(Protocol):
    """Which master serves a slot (``storage.cluster.SlotMap``, or the asyncio client's view of
    redis-py's slot cache)."""

    @property
    def known(self) -> bool: ...

    def address(self, slot: int) -> tuple[str, int]:
        """The master of ``slot``; ``redis.ConnectionError`` when none serves it."""
        ...


def private_entry(keyspace: Keys, request: Request) -> tuple[str, dict[str, bytes | str]]:
    """A private reply list for ``request`` in the slot of the keys it writes (any slot when it
    writes none), and the stream entry that names it."""
    reply_key = keyspace.reply(uuid.uuid4().hex, anchor(request))
    return reply_key, encode_entry(request, reply_key, MSGPACK)


class Partitions:
    """The streams of each device queue that live workers serve (their heartbeats' ``queues``),
    to be read again every ``PARTITIONS_REFRESH_S``: a driver asks ``due()``, runs
    ``health.live_workers_plan`` and hands the heartbeats to ``learn`` (``refresh_plan`` does
    both steps but the I/O)."""

    def __init__(self, keyspace: Keys, slots: Topology | None = None) -> None:
        self.keyspace = keyspace
        self.slots = slots
        self._streams: dict[str, list[str]] = {}
        self._next = 0.0

    def due(self) -> bool:
        """Whether the heartbeats are to be read again; True once per period (the caller reads
        them: others asking meanwhile go on with what is known)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + PARTITIONS_REFRESH_S
        return True

    def refresh_plan(self) -> Plan[None]:
        """Read the live workers' heartbeats and learn their streams; an error reply keeps what
        was known (a lost connection raises, for the driver to ignore as well)."""
        try:
            statuses = yield from health.live_workers_plan(self.keyspace, health.LIVE_FOR_S)
        except redis.ResponseError:
            return
        self.learn(statuses)

    def learn(self, statuses: Iterable[Mapping[str, Any]]) -> None:
        found: dict[str, set[str]] = {}
        for status in statuses:
            for device, streams in (status.get("queues") or {}).items():
                found.setdefault(str(device).upper(), set()).update(map(str, streams))
        self._streams = {device: sorted(streams) for device, streams in found.items()}

    def pick(self, device: str, near: str | None = None) -> str:
        """A stream of ``device``'s queue (the plain queue when no worker says which): one on
        the master of ``near`` (the job's reply key) if there is one - the XADD and the first
        look at the reply then go to one node, and so do the worker's last completion step and
        its XACK - else one at random."""
        streams = self._streams.get(device.upper())
        if not streams:
            return self.keyspace.queue(device)
        if near is not None and self.slots is not None and self.slots.known:
            try:
                node = self.slots.address(slot_of(near))
                local = [s for s in streams if self.slots.address(slot_of(s)) == node]
            except redis.ConnectionError:  # a slot without a master: a failover under way
                local = []
            if local:
                return random.choice(local)
        return random.choice(streams)


def after_lost(exc: BaseException, step: Enqueue, enqueuer: Enqueuer) -> Enqueued | None:
    """A first round trip that lost a node: ``Enqueued`` when the cluster answered its XADD (only
    the reply list's master was lost: the wait goes on), None to send it again (to the same
    stream, after ``FAILOVER_PAUSE_S``). Past the wait's deadline ``exc`` is raised: the plan
    says the job may or may not have been queued. An XADD that reached the old master without
    an answer may be queued twice, and runs twice (README "Failover")."""
    taken = exc.replies[:1] if isinstance(exc, NodeLost) else [None]
    if taken[0] is not None and not isinstance(taken[0], Exception):
        return Enqueued(enqueuer.entry_id(step.stream, taken), None)
    if step.deadline is not None and time.monotonic() >= step.deadline:
        raise exc
    return None
