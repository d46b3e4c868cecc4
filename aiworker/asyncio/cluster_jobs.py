"""Jobs from the asyncio client on Redis Cluster: the wait plan (``client.wait_plan``) driven on
``AsyncClusterWire``, by the blocking cluster client's rules (``client.placement``).

A job writes its results and its reply in one hash slot, so each job has a private reply list
there (a client's one shared list, as ``asyncio.jobs`` uses on a single Redis, cannot be in every
job's slot). A job costs what it costs the blocking ``ClusterClient``: one round trip for the
XADD and a first BLPOP (to one master when a queue partition lives on the reply's master, else
to two at once), then a BLPOP a second while the reply is late. Each waiting job holds one
connection of the wire meanwhile; a burst of jobs opens as many, reused by the next ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from aiworker.asyncio.cluster_wire import AsyncClusterWire
from aiworker.asyncio.jobs import WaitSteps, closed_error
from aiworker.asyncio.plans import drive, execute_commands
from aiworker.client import placement, waiting
from aiworker.client.jobs import LONGEST_BLPOP_S
from aiworker.client.wait_plan import Enqueue, Enqueued, Receive, job_plan
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import Request
from aiworker.protocol.slots import check_slot
from aiworker.storage.cluster import LOST
from aiworker.storage.plans import Commands, drive_steps_async


class AsyncClusterJobs(WaitSteps):
    """Submits requests for one asyncio cluster client and waits for their replies."""

    def __init__(
        self,
        rc: RedisCluster,
        keyspace: Keys,
        reply_timeout: float | None,
        max_connections: int | None = None,
        send: Callable[[Commands], Awaitable[list[Any]]] | None = None,
    ) -> None:
        """``max_connections``: the most connections the jobs hold to one node (those beyond
        wait their turn); None: one per job waiting. ``send``: how Redis commands off the job
        path (heartbeats, taking an entry back) go to ``rc`` (by default at once)."""
        send = send or (lambda batch: execute_commands(rc, batch))
        super().__init__(keyspace, reply_timeout, send)
        self.rc = rc
        self.wire = AsyncClusterWire(rc, max_connections)
        self.partitions = placement.Partitions(keyspace, self.wire.masters)
        socket_timeout = rc.get_connection_kwargs().get("socket_timeout")
        # the longest single BLPOP, within the connections' read timeout (as the blocking
        # client's ``Jobs._blpop_wait``)
        self.longest_blpop = LONGEST_BLPOP_S if not socket_timeout else min(1.0, socket_timeout / 2)

    async def submit(self, queue: str, request: Request, limit: float | None = None) -> Reply:
        """The worker's reply to ``request`` sent to device ``queue`` (a ``timedout`` reply when
        its TIMEOUT passed before any worker read it); ``limit`` overrides the wait limit."""
        check_slot(request)  # before anything is queued, as RedisAI refused it
        if limit is None:
            limit = waiting.wait_limit(request.timeout_ms, self.reply_timeout)
        reply_key, fields = placement.private_entry(self.keyspace, request)
        opened = self.wire.closes
        stream = await self.stream(queue, reply_key)
        plan = job_plan(
            self.keyspace, queue, stream, fields, request.timeout_ms, limit,
            waiting.GONE_SETTLE_CLUSTER_S,
        )  # fmt: skip
        return await drive_steps_async(plan, lambda step: self._step(step, reply_key, opened))

    async def stream(self, queue: str, reply_key: str | None = None) -> str:
        """The stream a job for device ``queue`` (answered on ``reply_key``) goes to."""
        if self.partitions.due():
            with contextlib.suppress(*LOST):  # keep what was known
                await drive(self.partitions.refresh_plan(), self._send)
        return self.partitions.pick(queue, reply_key)

    def _check_open(self, opened: int) -> None:
        """A job still waiting when the client is closed ends: its connections were closed, and
        none is to be opened again for it (``aclose`` leaves nothing open)."""
        if self.wire.closes != opened:
            raise closed_error()

    async def _step(self, step: Any, reply_key: str, opened: int) -> Any:
        self._check_open(opened)
        if isinstance(step, Receive):
            wait = max(min(step.seconds, self.longest_blpop), 0.01)
            [popped] = await self.wire.pipeline([("BLPOP", reply_key, wait)])
            popped = waiting.popped(popped)
            if isinstance(popped, Exception):
                raise popped
            return popped[1] if popped else None
        if isinstance(step, Enqueue):
            return await self._enqueue(step, reply_key, opened)
        return await self._wait_step(step)

    async def _enqueue(self, step: Enqueue, reply_key: str, opened: int) -> Enqueued:
        """The XADD and a first BLPOP in one round trip, sent again while a failover is under
        way (``placement.after_lost``)."""
        while True:
            self._check_open(opened)
            commands = placement.first_round(self.enqueuer, step, reply_key, self.longest_blpop)
            try:
                return placement.enqueued(self.enqueuer, step, await self.wire.pipeline(commands))
            except LOST as exc:
                found = placement.after_lost(exc, step, self.enqueuer)
                if found is not None:
                    return found
                await asyncio.sleep(placement.FAILOVER_PAUSE_S)

    async def close(self) -> None:
        await self.wire.close()
