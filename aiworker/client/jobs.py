"""Jobs from the blocking client: XADD onto a device queue, wait for the reply, end the wait as
``waiting`` says (TIMEOUT plus a margin, ``reply_timeout``, or no live worker).

Two ways to wait, chosen per client:

* a private reply list per request (default): XADD and the first BLPOP go in one round trip;
  each waiting thread holds a connection in BLPOP;
* one reply list per client (``shared_replies=True``): a reader thread BLPOPs it and hands
  replies to the waiting threads by entry id, so any number of threads share two connections.

``bench/replies.py`` measures both. On Redis Cluster (``client.cluster.ClusterJobs``) a private
reply list shares its outputs' hash slot, and a job goes to one of its queue's partitions.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import redis

from aiworker.client import waiting
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import MSGPACK, decode_reply
from aiworker.protocol.requests import Request
from aiworker.protocol.slots import anchor
from aiworker.protocol.text import text
from aiworker.storage import health, plans, queues
from aiworker.storage.redis_options import connection_kwargs
from aiworker.storage.wire import JobConnections, Wires

# The longest single BLPOP: short enough for redis-py's socket read timeout (5 s by default in
# redis-py 8; half of it leaves room for Redis serving blocking timeouts up to 100 ms late).
LONGEST_BLPOP_S = 1.0


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None

    def set(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.event.set()


class Jobs:
    """Submits requests for one client and waits for their replies."""

    # Redis Cluster: a private reply list takes the hash tag of the request's outputs
    cluster = False

    def __init__(
        self,
        r: redis.Redis,
        keyspace: Keys,
        reply_timeout: float | None,
        shared_replies: bool = False,
        wires: JobConnections | None = None,
    ) -> None:
        self.r = r
        # no retries: an XADD whose reply was lost may have been queued (a retry would queue it
        # twice); the wait that follows finds out
        self.wires = wires if wires is not None else Wires(r.connection_pool)
        self.keyspace = keyspace
        self.reply_timeout = reply_timeout
        self.shared = shared_replies
        self.reply_list = keyspace.reply(uuid.uuid4().hex)
        self.router = waiting.ReplyRouter()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _blpop_wait(self, wanted: float) -> float:
        socket_timeout = connection_kwargs(self.r).get("socket_timeout")
        longest = LONGEST_BLPOP_S if not socket_timeout else min(1.0, socket_timeout / 2)
        return max(min(wanted, longest), 0.01)  # below 1 ms Redis reads 0: block forever

    # submitting ------------------------------------------------------------------------------

    def submit(self, queue: str, request: Request, limit: float | None = None) -> dict[str, Any]:
        """The worker's reply to ``request`` sent to device ``queue`` (a ``timedout`` reply when
        its TIMEOUT passed before any worker read it); ``limit`` overrides the wait limit."""
        if limit is None:
            limit = waiting.wait_limit(request.timeout_ms, self.reply_timeout)
        clock = waiting.Clock(limit)
        if self.shared:
            return self._submit_shared(queue, request, clock)
        return self._submit_private(queue, request, clock)

    def stream(self, queue: str, reply_key: str | None = None) -> str:
        """The stream a job for device ``queue`` (answered on ``reply_key``) goes to."""
        return self.keyspace.queue(queue)

    def private_entry(self, request: Request) -> tuple[str, dict[str, bytes | str]]:
        """A private reply list for ``request`` and the stream entry that names it."""
        near = anchor(request) if self.cluster else None
        reply_key = self.keyspace.reply(uuid.uuid4().hex, near)
        return reply_key, encode_entry(request, reply_key, MSGPACK)

    def _submit_private(self, queue: str, request: Request, clock: waiting.Clock) -> dict[str, Any]:
        reply_key, fields = self.private_entry(request)
        stream = self.stream(queue, reply_key)
        sent, popped = self._enqueue(stream, fields, reply_key, clock)
        return self.wait_private(queue, text(sent), reply_key, request, clock, popped, stream)

    def _enqueue(
        self, stream: str, fields: dict[str, Any], reply_key: str, clock: waiting.Clock
    ) -> tuple[Any, Any]:
        """XADD the entry and a first BLPOP for its reply: (entry id, popped or None)."""
        wait = self._blpop_wait(clock.slice(LONGEST_BLPOP_S))
        # the one round trip of a job: on this thread's own connection, without redis-py's
        # per-call machinery (about three quarters of a small job's client CPU)
        sent, popped = self.wires.get().pipeline(
            [("XADD", stream, "*", *_flat(fields)), ("BLPOP", reply_key, wait)]
        )
        if isinstance(sent, Exception):
            raise sent
        if isinstance(popped, Exception):
            raise popped
        return sent, popped

    def wait_private(
        self,
        queue: str,
        entry_id: str,
        reply_key: str,
        request: Request,
        clock: waiting.Clock | None = None,
        popped: Any = None,
        stream: str | None = None,
    ) -> dict[str, Any]:
        """Wait for the reply to an entry queued with ``private_entry`` (on ``stream``, by
        default the device's plain queue)."""
        if clock is None:
            clock = waiting.Clock(waiting.wait_limit(request.timeout_ms, self.reply_timeout))
        stream = stream or self.keyspace.queue(queue)
        while popped is None:
            linger = lambda s: self._pop(reply_key, s)  # noqa: E731
            ended = self._check(queue, entry_id, request, clock, linger, stream)
            if ended is not None:
                return ended
            popped = self._blpop(reply_key, clock.slice(LONGEST_BLPOP_S))
        return decode_reply(popped[1])

    def _blpop(self, reply_key: str, seconds: float) -> Any:
        return self.r.blpop([reply_key], timeout=self._blpop_wait(seconds))

    def _pop(self, reply_key: str, seconds: float) -> dict[str, Any] | None:
        popped = self._blpop(reply_key, seconds)
        return decode_reply(popped[1]) if popped else None

    def _submit_shared(self, queue: str, request: Request, clock: waiting.Clock) -> dict[str, Any]:
        self._start_reader()
        waiter = _Waiter()
        self.router.expect()
        try:
            fields = encode_entry(request, self.reply_list, MSGPACK)
            raw_id = self.r.xadd(self.keyspace.queue(queue), fields)  # type: ignore[arg-type]
        except BaseException:
            self.router.cancel()
            raise
        entry_id = text(raw_id)
        early = self.router.register(entry_id, waiter)
        if early is not None:
            return early

        def linger(seconds: float) -> dict[str, Any] | None:
            waiter.event.wait(seconds)
            return waiter.reply

        try:
            while not waiter.event.wait(clock.slice(LONGEST_BLPOP_S)):
                ended = self._check(queue, entry_id, request, clock, linger)
                if ended is not None:
                    return ended
        finally:
            self.router.forget(entry_id)
        assert waiter.reply is not None
        return waiter.reply

    # ending a wait ---------------------------------------------------------------------------

    def _check(
        self,
        queue: str,
        entry_id: str,
        request: Request,
        clock: waiting.Clock,
        linger: Any,
        stream: str | None = None,
    ) -> dict[str, Any] | None:
        """None to keep waiting; else the reply to return (or raise) now."""
        stream = stream or self.keyspace.queue(queue)
        if clock.expired():
            withdrawn = self._withdraw(stream, entry_id)
            late = self._last_chance(withdrawn, linger)
            if late is not None:
                return late
            if request.timeout_ms and withdrawn == waiting.REMOVED:
                return {"status": "timedout", "id": entry_id, "withdrawn": True}
            assert clock.deadline is not None
            limit = clock.deadline - clock.started
            raise waiting.timeout_error(queue, limit, request.timeout_ms, withdrawn)
        if clock.check_due():
            statuses = plans.run(
                self.r, health.live_workers_plan(self.keyspace, waiting.HEARTBEAT_MAX_AGE_S)
            )
            if not waiting.serves(statuses, queue):
                withdrawn = self._withdraw(stream, entry_id)
                late = self._last_chance(withdrawn, linger)
                if late is not None:
                    return late
                raise waiting.no_worker_error(queue, withdrawn)
        return None

    def _withdraw(self, stream: str, entry_id: str) -> int:
        return plans.run(self.r, queues.withdraw_plan(stream, entry_id))

    @staticmethod
    def _last_chance(withdrawn: int, linger: Any) -> dict[str, Any] | None:
        """A reply that raced the decision: already there, or (the entry is gone: completed)
        on its way."""
        if withdrawn == waiting.REMOVED:
            return None
        reply: dict[str, Any] | None = linger(1.0 if withdrawn == waiting.GONE else 0.01)
        return reply

    # the shared reply list's reader ----------------------------------------------------------

    def _start_reader(self) -> None:
        with self._lock:
            if self._reader is None or not self._reader.is_alive():
                self._stop.clear()
                self._reader = threading.Thread(
                    target=self._read_replies, name="aiworker-replies", daemon=True
                )
                self._reader.start()

    def _read_replies(self) -> None:
        while not self._stop.is_set():
            try:
                popped = self.r.blpop([self.reply_list], timeout=self._blpop_wait(1.0))
                if popped is None:
                    continue
                raws = [popped[1]]  # type: ignore[index]
                # drain what else queued up, so the list empties (and its TTL starts afresh)
                more = self.r.lpop(self.reply_list, 512)
                raws += more or []  # type: ignore[arg-type]
            except redis.RedisError:
                if self._stop.wait(0.1):
                    return
                continue
            for raw in raws:
                try:
                    reply = decode_reply(raw)
                except Exception:
                    continue
                waiter = self.router.route(reply)
                if waiter is not None:
                    waiter.set(reply)

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
        self.wires.close()


def _flat(fields: dict[str, Any]) -> list[Any]:
    return [item for pair in fields.items() for item in pair]
