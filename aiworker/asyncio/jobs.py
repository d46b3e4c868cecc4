"""Jobs from the asyncio client: any number of concurrent requests on a handful of connections.

* Submitting: requests queue up in memory and one writer task sends all that are waiting in one
  pipeline of XADDs, so a burst of 1,000 requests costs a few round trips on one connection.
* Waiting: every entry names the client's one reply list (``Keys.reply(token)``); one reader task
  BLPOPs it and resolves the waiting future by the reply's entry id (``waiting.ReplyRouter``:
  replies that beat their registration are kept, replies nobody waits for are dropped).
* Ending a wait follows ``client.waiting``; heartbeat reads are shared by all waiters of a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import redis
import redis.asyncio

from aiworker.asyncio.plans import run
from aiworker.client import waiting
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import MSGPACK, decode_reply
from aiworker.protocol.requests import Request
from aiworker.storage import health, queues

READ_BLOCK_S = 1.0
DRAIN = 512


class AsyncJobs:
    """Submits requests for one asyncio client and waits for their replies."""

    def __init__(self, r: redis.asyncio.Redis, keyspace: Keys, reply_timeout: float | None) -> None:
        self.r = r
        self.keyspace = keyspace
        self.reply_timeout = reply_timeout
        self.reply_list = keyspace.reply(uuid.uuid4().hex)
        self.router = waiting.ReplyRouter()
        self._pending: list[tuple[str, dict[str, Any], asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._live: dict[str, tuple[float, bool]] = {}
        self._reading: dict[str, asyncio.Future[bool]] = {}
        self._withdrawing = asyncio.Semaphore(4)

    # submitting ------------------------------------------------------------------------------

    async def submit(
        self, queue: str, request: Request, limit: float | None = None
    ) -> dict[str, Any]:
        """The worker's reply to ``request`` sent to device ``queue`` (a ``timedout`` reply when
        its TIMEOUT passed before any worker read it)."""
        if limit is None:
            limit = waiting.wait_limit(request.timeout_ms, self.reply_timeout)
        clock = waiting.Clock(limit)
        self._start_reader()
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.router.expect()
        try:
            entry_id = await self._xadd(queue, encode_entry(request, self.reply_list, MSGPACK))
        except BaseException:
            self.router.cancel()
            raise
        early = self.router.register(entry_id, reply)
        if early is not None:
            return early
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(reply), clock.slice(READ_BLOCK_S))
                except asyncio.TimeoutError:
                    pass
                ended = await self._check(queue, entry_id, request, clock, reply)
                if ended is not None:
                    return ended
        finally:
            self.router.forget(entry_id)

    async def _xadd(self, queue: str, fields: dict[str, Any]) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((self.keyspace.queue(queue), fields, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        return await future

    async def _write(self) -> None:
        """Send every queued XADD, a pipeline at a time, until none is left."""
        while self._pending:
            batch, self._pending = self._pending, []
            pipe = self.r.pipeline(transaction=False)
            for queue_key, fields, _ in batch:
                pipe.xadd(queue_key, fields)  # type: ignore[arg-type]
            try:
                results = await pipe.execute(raise_on_error=False)
            except BaseException as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result.decode() if isinstance(result, bytes) else str(result))

    # ending a wait ---------------------------------------------------------------------------

    async def _check(
        self,
        queue: str,
        entry_id: str,
        request: Request,
        clock: waiting.Clock,
        reply: asyncio.Future[dict[str, Any]],
    ) -> dict[str, Any] | None:
        if clock.expired():
            withdrawn = await self._withdraw(queue, entry_id)
            late = await self._last_chance(withdrawn, reply)
            if late is not None:
                return late
            if request.timeout_ms and withdrawn == waiting.REMOVED:
                return {"status": "timedout", "id": entry_id, "withdrawn": True}
            assert clock.deadline is not None
            raise waiting.timeout_error(
                queue, clock.deadline - clock.started, request.timeout_ms, withdrawn
            )
        if clock.check_due() and not await self._serves(queue):
            withdrawn = await self._withdraw(queue, entry_id)
            late = await self._last_chance(withdrawn, reply)
            if late is not None:
                return late
            raise waiting.no_worker_error(queue, withdrawn)
        return None

    async def _serves(self, queue: str) -> bool:
        """Whether a live worker serves ``queue``: one heartbeat read per queue at a time and per
        half second, however many requests wait."""
        seen = self._live.get(queue)
        if seen is not None and time.monotonic() - seen[0] < waiting.CHECK_AFTER_S:
            return seen[1]
        reading = self._reading.get(queue)
        if reading is None or reading.done():
            reading = asyncio.ensure_future(self._read_heartbeats(queue))
            self._reading[queue] = reading
        return await asyncio.shield(reading)

    async def _read_heartbeats(self, queue: str) -> bool:
        plan = health.live_workers_plan(self.keyspace, waiting.HEARTBEAT_MAX_AGE_S)
        serving = waiting.serves(await run(self.r, plan), queue)
        self._live[queue] = (time.monotonic(), serving)
        return serving

    async def _withdraw(self, queue: str, entry_id: str) -> int:
        async with self._withdrawing:  # many waits may end at once: a few connections serve them
            return await run(self.r, queues.withdraw_plan(self.keyspace.queue(queue), entry_id))

    @staticmethod
    async def _last_chance(
        withdrawn: int, reply: asyncio.Future[dict[str, Any]]
    ) -> dict[str, Any] | None:
        if withdrawn == waiting.REMOVED:
            return None
        try:
            seconds = 1.0 if withdrawn == waiting.GONE else 0.01
            return await asyncio.wait_for(asyncio.shield(reply), seconds)
        except asyncio.TimeoutError:
            return None

    # the reply list's reader -----------------------------------------------------------------

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            try:
                popped = await self.r.blpop([self.reply_list], timeout=READ_BLOCK_S)
                if popped is None:
                    if not self.router.waiting():
                        return  # restarted by the next submission
                    continue
                raws = [popped[1]]
                raws += await self.r.lpop(self.reply_list, DRAIN) or []  # type: ignore[arg-type]
            except redis.RedisError:
                await asyncio.sleep(0.1)
                continue
            for raw in raws:
                try:
                    reply = decode_reply(raw)
                except Exception:
                    continue
                future = self.router.route(reply)
                if future is not None and not future.done():
                    future.set_result(reply)

    async def close(self) -> None:
        for task in (self._reader, self._writer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
