"""Jobs from the blocking client: the wait plan (``client.wait_plan``) driven on blocking
connections, with one of two ways to receive replies, chosen per client:

* a private reply list per request (default): the XADD and the first look at the list go in one
  round trip on this thread's own connection; each waiting thread holds a connection in a wait;
* one reply list per client (``shared_replies=True``): a reader thread reads it and hands the
  replies to the waiting threads (``client.routing``), so any number of threads share two
  connections.

``bench/replies.py`` measures both. On Redis Cluster (``client.cluster.ClusterJobs``) a private
reply list shares its outputs' hash slot, and a job goes to one of its queue's partitions.
"""

from __future__ import annotations

import queue as queue_module
import threading
import time
import uuid
from typing import Any

import redis

from aiworker.client import first_round, reply_lists, routing, waiting
from aiworker.client.wait_plan import (
    Enqueue,
    Enqueued,
    Liveness,
    Pause,
    Receive,
    Target,
    bounded,
    job_plan,
    longest_wait,
    wait_plan,
)
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import MSGPACK, Reply, decode_reply
from aiworker.protocol.requests import Request
from aiworker.protocol.slots import anchor
from aiworker.storage import health, plans
from aiworker.storage.plans import Commands, Plan, drive_steps
from aiworker.storage.queues import Enqueuer
from aiworker.storage.redis_options import connection_kwargs
from aiworker.storage.wire import JobConnections, PartlyAnswered, Wires


class _Private:
    """Receiving on a private reply list (``reply_lists.PrivateList``)."""

    def __init__(self, jobs: Jobs, reply_key: str) -> None:
        self.jobs = jobs
        self.reply_list = reply_lists.PrivateList(reply_key)

    def enqueue(self, step: Enqueue) -> Enqueued:
        return self.jobs._enqueue(step, self.reply_list)

    def receive(self, seconds: float) -> Any:
        return self.jobs._look(self.reply_list, seconds)

    def close(self) -> None:
        self.jobs._remove(self.reply_list)


class _Shared:
    """Receiving from the client's shared reply list, through its router."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self.inbox: queue_module.SimpleQueue[Reply] = queue_module.SimpleQueue()

    def put(self, reply: Reply) -> None:
        self.inbox.put(reply)

    def enqueue(self, step: Enqueue) -> Enqueued:
        router = self.jobs.router
        self.jobs._start_reader()
        router.expect()
        try:
            entry_id = self.jobs._add(step.stream, step.fields)
        except BaseException:
            router.cancel()
            raise
        router.register((step.stream, entry_id), self)
        return Enqueued(entry_id)

    def receive(self, seconds: float) -> Reply | None:
        try:
            return self.inbox.get(timeout=seconds)
        except queue_module.Empty:
            return None

    def close(self) -> None:
        self.jobs.router.forget(self)


Channel = _Private | _Shared


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
        self.enqueuer = Enqueuer(keyspace)
        self.reply_list = keyspace.reply(uuid.uuid4().hex)
        self.router = routing.ReplyRouter()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _longest(self) -> float:
        """The longest wait for a reply to send on this client's connections."""
        return longest_wait(connection_kwargs(self.r).get("socket_timeout"))

    # submitting ------------------------------------------------------------------------------

    def submit(self, queue: str, request: Request, limit: float | None = None) -> Reply:
        """The worker's reply to ``request`` sent to device ``queue`` (a ``timedout`` reply when
        its TIMEOUT passed before any worker read it); ``limit`` overrides the wait limit."""
        if limit is None:
            limit = waiting.wait_limit(request.timeout_ms, self.reply_timeout)
        channel: Channel
        if self.shared:
            reply_key = self.reply_list
            fields = encode_entry(request, reply_key, MSGPACK)
            channel = _Shared(self)
        else:
            reply_key, fields = self.private_entry(request)
            channel = _Private(self, reply_key)
        stream = self.stream(queue, reply_key)
        settle = waiting.GONE_SETTLE_CLUSTER_S if self.cluster else waiting.GONE_SETTLE_S
        plan = job_plan(self.keyspace, queue, stream, fields, request.timeout_ms, limit, settle)
        return self._drive(plan, channel)

    def stream(self, queue: str, reply_key: str | None = None) -> str:
        """The stream a job for device ``queue`` (answered on ``reply_key``) goes to."""
        return self.keyspace.queue(queue)

    def private_entry(self, request: Request) -> tuple[str, dict[str, bytes | str]]:
        """A private reply list for ``request`` and the stream entry that names it."""
        near = anchor(request) if self.cluster else None
        reply_key = self.keyspace.reply(uuid.uuid4().hex, near)
        return reply_key, encode_entry(request, reply_key, MSGPACK)

    def wait_private(
        self, queue: str, stream: str, entry_id: str, reply_key: str, request: Request
    ) -> Reply:
        """Wait for the reply to an entry already queued on ``stream`` (a pipeline's), naming
        the private list ``reply_key``."""
        clock = waiting.Clock(waiting.wait_limit(request.timeout_ms, self.reply_timeout))
        target = Target(queue, stream, entry_id)
        settle = waiting.GONE_SETTLE_CLUSTER_S if self.cluster else waiting.GONE_SETTLE_S
        plan = wait_plan(self.keyspace, target, request.timeout_ms, clock, None, settle)
        return self._drive(plan, _Private(self, reply_key))

    # driving the plan ------------------------------------------------------------------------

    def _drive(self, plan: Plan[Reply], channel: Channel) -> Reply:
        try:
            return drive_steps(plan, lambda step: self._step(step, channel))
        finally:
            channel.close()

    def _step(self, step: Any, channel: Channel) -> Any:
        if isinstance(step, Receive):
            return channel.receive(step.seconds)
        if isinstance(step, Commands):
            return plans.execute_commands(self.r, step)
        if isinstance(step, Enqueue):
            return channel.enqueue(step)
        if isinstance(step, Liveness):
            return plans.run(self.r, health.liveness_plan(self.keyspace, health.LIVE_FOR_S))
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        raise TypeError(f"unknown wait step {type(step).__name__}")

    def _enqueue(self, step: Enqueue, reply_list: reply_lists.PrivateList) -> Enqueued:
        """The entry and a first look for its reply, in one round trip (``first_round``) on this
        thread's own connection, without redis-py's per-call machinery (about three quarters of
        a small job's client CPU)."""
        commands, added = first_round.commands(self.enqueuer, step, reply_list, self._longest())
        try:
            replies = self.wires.get().pipeline(commands)
        except PartlyAnswered as lost:  # the entry's commands were answered, the look lost:
            if len(lost.replies) < added:  # the wait goes on (on a new connection)
                raise
            replies = lost.replies[:added]
        return first_round.enqueued(self.enqueuer, step, reply_list, replies, added)

    def _add(self, stream: str, fields: Any) -> str:
        """The entry's XADD alone (a shared reply list's), sent once (see ``__init__``)."""
        commands = self.enqueuer.commands(stream, fields)
        return self.enqueuer.entry_id(stream, self.wires.get().pipeline(commands))

    def _look(self, reply_list: reply_lists.PrivateList, seconds: float) -> Any:
        """The next item of a private reply list (None: none came within ``seconds``)."""
        look = reply_list.look(bounded(seconds, self._longest()))
        return reply_list.looked(self.wires.get().pipeline(look))

    def _remove(self, reply_list: reply_lists.PrivateList) -> None:
        """Remove a private list once its wait is over, without waiting for Redis' answer
        (``Wire.post``; a lost one leaves it to expire after ``reply_ttl``)."""
        self.wires.get().post([reply_list.done()])

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
        reader = reply_lists.SharedListReader(self.reply_list)
        while not self._stop.is_set():
            try:
                # on the reader's own connection (no other thread uses it)
                commands = reader.round(self._longest())
                raws = reader.read(self.wires.get().pipeline(commands))
            except redis.RedisError:
                if self._stop.wait(0.1):
                    return
                continue
            for raw in raws:
                reply = decode_reply(raw)
                if reply is not None:
                    self.router.route(reply)

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
        self.wires.close()
