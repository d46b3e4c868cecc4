"""Jobs from the asyncio client on Redis Cluster: the wait plan (``client.wait_plan``) driven on
``AsyncClusterWire``, by the blocking cluster client's rules (``client.placement``).

A job writes its results and its reply in one hash slot, so each job has a private reply list
there (a client's one shared list, as ``asyncio.jobs`` uses on a single Redis, cannot be in every
job's slot). A job costs what it costs the blocking ``ClusterClient``: one round trip for the
XADD and a first look at the reply list (to one master when a queue partition lives on the reply's
master, else to two at once; ``client.reply_lists``), then a look a second while the reply is
late, and the list's removal off the job's path. Each waiting job holds one
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
from aiworker.client import first_round, placement, reply_lists, waiting
from aiworker.client.wait_plan import (
    Enqueue,
    Enqueued,
    Receive,
    bounded,
    job_plan,
    longest_wait,
)
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import Request
from aiworker.protocol.slots import check_slot
from aiworker.storage.cluster import LOST
from aiworker.storage.plans import Commands, drive_steps_async

# The most private lists removed in one round trip.
MAX_REMOVALS = 512


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
        self.longest_wait = longest_wait(socket_timeout)
        self._removals: list[tuple[Any, ...]] = []  # lists whose waits are over (``_remove``)
        self._removing: asyncio.Handle | None = None
        self._posting: set[asyncio.Future[None]] = set()

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
        reply_list = reply_lists.PrivateList(reply_key)
        try:
            return await drive_steps_async(plan, lambda step: self._step(step, reply_list, opened))
        finally:
            if self.wire.closes == opened:  # no connection is opened again after ``close``
                self._remove(reply_list)

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

    async def _step(self, step: Any, reply_list: reply_lists.PrivateList, opened: int) -> Any:
        self._check_open(opened)
        if isinstance(step, Receive):
            wait = bounded(step.seconds, self.longest_wait)
            return reply_list.looked(await self.wire.pipeline(reply_list.look(wait)))
        if isinstance(step, Enqueue):
            return await self._enqueue(step, reply_list, opened)
        return await self._wait_step(step)

    def _remove(self, reply_list: reply_lists.PrivateList) -> None:
        """Remove a private list once its wait is over, off the job's path: with the next job's
        first round trip if one starts before the loop turns (a program's next call), else in a
        round trip of its own, with the others of the same turn (a lost removal: the list
        expires after ``reply_ttl``)."""
        self._removals.append(reply_list.done())
        if self._removing is None:
            self._removing = asyncio.get_running_loop().call_soon(self._send_removals)

    def _take_removals(self) -> list[tuple[Any, ...]]:
        removals, self._removals = self._removals[:MAX_REMOVALS], self._removals[MAX_REMOVALS:]
        return removals

    def _send_removals(self) -> None:
        self._removing = None
        if self._removals:
            removals, self._removals = self._removals, []
            task = asyncio.ensure_future(self._post(removals))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)

    async def _post(self, removals: list[tuple[Any, ...]]) -> None:
        for start in range(0, len(removals), MAX_REMOVALS):
            with contextlib.suppress(Exception):
                await self.wire.pipeline(removals[start : start + MAX_REMOVALS])

    async def _enqueue(
        self, step: Enqueue, reply_list: reply_lists.PrivateList, opened: int
    ) -> Enqueued:
        """The XADD and a first look at the reply list in one round trip, sent again while a
        failover is under way (``placement.after_lost``)."""
        while True:
            self._check_open(opened)
            commands, added = first_round.commands(
                self.enqueuer, step, reply_list, self.longest_wait
            )
            commands += self._take_removals()  # earlier jobs' lists, if any: sent once
            try:
                replies = await self.wire.pipeline(commands)
                return first_round.enqueued(self.enqueuer, step, reply_list, replies, added)
            except LOST as exc:
                found = placement.after_lost(exc, step, self.enqueuer)
                if found is not None:
                    return found
                await asyncio.sleep(placement.FAILOVER_PAUSE_S)

    async def close(self) -> None:
        if self._removing is not None:
            self._removing.cancel()
            self._removing = None
        while self._removals:  # the last lists go now (best effort: a second at most)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._post(self._take_removals()), 1.0)
        for task in list(self._posting):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.wire.close()
