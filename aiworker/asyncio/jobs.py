"""Jobs from the asyncio client: the wait plan (``client.wait_plan``) driven on ``redis.asyncio``,
any number of concurrent requests on a handful of connections.

* Submitting: requests queue up in memory and one writer task sends all that are waiting in one
  pipeline (each entry's XADD, or the enqueue script where the queue has a length limit, and a read
  of that limit: ``storage.queues.Enqueuer``), so a burst of 1,000 requests costs a few round trips
  on one connection.
* Waiting: every entry names the client's one reply list (``Keys.reply(token)``); one reader task
  reads it (``client.reply_lists``: nothing is taken off before it was read) and hands each reply
  to the waiting job it answers (``client.routing``).
* Heartbeats are read once per half second however many jobs wait; taking entries back uses a few
  connections at a time (``WaitSteps``, which the Redis Cluster client's jobs share:
  ``asyncio.cluster_jobs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from aiworker.asyncio.plans import drive, execute_commands, send_once
from aiworker.client import reply_lists, routing, waiting
from aiworker.client.wait_plan import (
    Enqueue,
    Enqueued,
    Liveness,
    Pause,
    Receive,
    job_plan,
    longest_wait,
)
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.errors import ReplyTimeout
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import MSGPACK, Reply, decode_reply
from aiworker.protocol.requests import Request
from aiworker.storage import health
from aiworker.storage.plans import Commands, Plan, drive_steps_async
from aiworker.storage.queues import Enqueuer

DRAIN = 512


class ClientClosed(redis.RedisError):
    """The client was closed (``aclose``) while a job waited: the wait ends at once."""


def closed_error() -> ClientClosed:
    return ClientClosed(
        "the client was closed while the job waited for its reply: it may or may not have been "
        "queued or run"
    )


def reader_failed(exc: Exception) -> ReplyTimeout:
    """The end of a wait whose replies the reader task can no longer hand over."""
    error = ReplyTimeout(
        f"the client's reader of replies failed ({exc!r}): the job may or may not have run; "
        "retry it"
    )
    error.__cause__ = exc
    return error


class _Mailbox:
    """Where the reader task puts a job's replies (an exception: the wait ends with it)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Reply | Exception] = asyncio.Queue()

    def put(self, reply: Reply) -> None:
        self.inbox.put_nowait(reply)


class WaitSteps:
    """The steps of a wait that every asyncio jobs object carries out alike: taking an entry back
    (``Commands``), the workers' heartbeats (``Liveness``: one read at a time, shared by every
    job that waits) and ``Pause``. ``send`` runs a ``Commands`` on the client's Redis."""

    def __init__(
        self,
        keyspace: Keys,
        reply_timeout: float | None,
        send: Callable[[Commands], Awaitable[list[Any]]],
    ) -> None:
        self.keyspace = keyspace
        self.reply_timeout = reply_timeout
        self.enqueuer = Enqueuer(keyspace)
        self._send = send
        self._liveness: tuple[float, asyncio.Future[Any]] | None = None
        self._withdrawing = asyncio.Semaphore(4)

    async def _wait_step(self, step: Any) -> Any:
        if isinstance(step, Commands):
            async with self._withdrawing:  # many waits may end at once: a few connections
                return await self._send(step)
        if isinstance(step, Liveness):
            return await self._read_liveness()
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        raise TypeError(f"unknown wait step {type(step).__name__}")

    async def _read_liveness(self) -> Any:
        """The workers' heartbeats, read at most once per ``CHECK_AFTER_S`` however many jobs
        wait (all of them share one read)."""
        now = time.monotonic()
        if self._liveness is None or now - self._liveness[0] >= waiting.CHECK_AFTER_S:
            plan = health.liveness_plan(self.keyspace, health.LIVE_FOR_S)
            self._liveness = (now, asyncio.ensure_future(drive(plan, self._send)))
        return await asyncio.shield(self._liveness[1])


class AsyncJobs(WaitSteps):
    """Submits requests for one asyncio client and waits for their replies."""

    def __init__(
        self,
        r: redis.asyncio.Redis,
        keyspace: Keys,
        reply_timeout: float | None,
        send: Callable[[Commands], Awaitable[list[Any]]] | None = None,
    ) -> None:
        """``send``: how Redis commands off the job path (heartbeats, taking an entry back) go
        to ``r`` (by default at once); the reader and the writer take a connection each."""
        super().__init__(keyspace, reply_timeout, send or (lambda b: execute_commands(r, b)))
        self.r = r
        self.reply_list = keyspace.reply(uuid.uuid4().hex)
        self.router = routing.ReplyRouter()
        self._pending: list[tuple[str, Any, asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: set[_Mailbox] = set()  # the jobs waiting now (``close`` ends them)
        self._list_reader = reply_lists.SharedListReader(self.reply_list, DRAIN)

    # submitting ------------------------------------------------------------------------------

    async def submit(self, queue: str, request: Request, limit: float | None = None) -> Reply:
        """The worker's reply to ``request`` sent to device ``queue`` (a ``timedout`` reply when
        its TIMEOUT passed before any worker read it)."""
        if limit is None:
            limit = waiting.wait_limit(request.timeout_ms, self.reply_timeout)
        fields = encode_entry(request, self.reply_list, MSGPACK)
        plan = job_plan(
            self.keyspace, queue, self.keyspace.queue(queue), fields, request.timeout_ms, limit
        )
        mailbox = _Mailbox()
        self._waiting.add(mailbox)
        try:
            return await self._drive(plan, mailbox)
        finally:
            self._waiting.discard(mailbox)
            self.router.forget(mailbox)

    async def _drive(self, plan: Plan[Reply], mailbox: _Mailbox) -> Reply:
        return await drive_steps_async(plan, lambda step: self._step(step, mailbox))

    async def _step(self, step: Any, mailbox: _Mailbox) -> Any:
        if mailbox not in self._waiting:  # the client was closed
            raise closed_error()
        if isinstance(step, Receive):
            try:
                reply = await asyncio.wait_for(mailbox.inbox.get(), step.seconds)
            except asyncio.TimeoutError:
                return None
            if isinstance(reply, Exception):
                raise reply
            return reply
        if isinstance(step, Enqueue):
            return await self._enqueue(step, mailbox)
        return await self._wait_step(step)

    async def _enqueue(self, step: Enqueue, mailbox: _Mailbox) -> Enqueued:
        self._start_reader()
        self.router.expect()
        try:
            entry_id = await self._add(step.stream, step.fields)
        except BaseException:
            self.router.cancel()
            raise
        self.router.register((step.stream, entry_id), mailbox)
        return Enqueued(entry_id)

    async def _add(self, stream: str, fields: Any) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((stream, fields, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        return await future

    async def _write(self) -> None:
        """Send every queued entry, a pipeline at a time, until none is left."""
        while self._pending:
            batch, self._pending = self._pending, []
            commands, sizes = [], []
            for stream, fields, _ in batch:
                adds = self.enqueuer.commands(stream, fields)
                sizes.append(len(adds))
                commands += adds
            try:
                results = await send_once(self.r, commands)
            except BaseException as exc:
                # a lost link, or cancelled (the client is closing): its XADDs may or may not
                # have run, and none is sent again
                error = exc if isinstance(exc, Exception) else closed_error()
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            start = 0
            for (stream, _, future), size in zip(batch, sizes, strict=True):
                replies, start = results[start : start + size], start + size
                if future.done():
                    continue
                try:
                    future.set_result(self.enqueuer.entry_id(stream, replies))
                except Exception as exc:
                    future.set_exception(exc)

    # the reply list's reader -----------------------------------------------------------------

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        """Hand the replies to their jobs while any waits. An unexpected error (not a lost
        Redis: a bug) ends the jobs waiting at once, which no reply could reach now; the next
        submission starts a reader again."""
        try:
            await self._read_replies()
        except Exception as exc:
            for mailbox in self._waiting:
                mailbox.inbox.put_nowait(reader_failed(exc))

    async def _read_replies(self) -> None:
        reader = self._list_reader  # kept between reader tasks: what it read is trimmed next
        socket_timeout = self.r.connection_pool.connection_kwargs.get("socket_timeout")
        wait = longest_wait(socket_timeout)
        while True:
            try:
                raws = reader.read(await send_once(self.r, reader.round(wait)))
            except redis.RedisError:
                await asyncio.sleep(0.1)
                continue
            if not raws and not self.router.waiting():
                return  # restarted by the next submission
            for raw in raws:
                reply = decode_reply(raw)
                if reply is not None:
                    self.router.route(reply)

    async def close(self) -> None:
        """Stop the reader and the writer; the jobs waiting end with ``ClientClosed``."""
        waiting_now, self._waiting = self._waiting, set()
        for mailbox in waiting_now:
            mailbox.inbox.put_nowait(closed_error())
        unsent, self._pending = self._pending, []
        for _, _, future in unsent:
            if not future.done():
                future.set_exception(closed_error())
        for task in (self._reader, self._writer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
