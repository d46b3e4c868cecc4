"""Consumer threads: each reads its device stream for itself and hands what it read downward.

A thread reads only what it can serve: one entry at a time (XREADGROUP COUNT 1, blocking), so with
several worker processes an idle thread anywhere gets the next job - Redis serves blocked readers
in order. The exception is autobatching: when an entry is for a model with BATCHSIZE > 0, the
thread at once takes (without blocking) up to the rest of a batch's worth of queued entries, which
RedisAI would have batched together. Before reading, a thread runs what waits in the process
(``QueueScheduler.take``). Each thread talks to Redis on its own connection (``Wire``).

Entries are registered in ``HeldEntries`` the moment they are read, so their lease is renewed from
then on, before their inputs are even read.

A device queue split into partitions (``queue_partitions``) is shared out among the threads: thread
``n`` serves the partitions ``n``, ``n + threads``, ... (with more threads than partitions, thread
``n`` serves partition ``n % partitions``). A thread with one stream blocks on it; a thread with
several takes from each in turn without blocking, and blocks briefly on the next one in turn only
when all were empty, so no partition waits behind another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.protocol.text import text
from aiworker.storage.wire import JobConnection, JobConnections
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import WorkerMetrics
from aiworker.worker.schedule import QueueScheduler

log = logging.getLogger("aiworker.worker")
# Pause after a Redis error that redis-py's retries with backoff did not cure.
READ_ERROR_PAUSE_S = 1.0
# How often a thread with nothing to do looks again while the worker drains.
DRAIN_POLL_S = 0.02
# Longest a thread serving several partitions blocks on one of them.
SHARED_BLOCK_MS = 20

Entry = tuple[str, Mapping[Any, Any]]


def ensure_group(r: redis.Redis, queue: str) -> None:
    """Create the consumer group (and stream) if missing; from id 0 so earlier jobs are served."""
    try:
        r.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def share_of(streams: Sequence[str], threads: int, n: int) -> list[str]:
    """The partitions thread ``n`` of ``threads`` serves (see the module docstring)."""
    return list(streams[n::threads]) or [streams[n % len(streams)]]


class Consumer:
    """One consumer thread of a device queue (consumer name ``host:pid:device:n``)."""

    def __init__(
        self,
        name: str,
        scheduler: QueueScheduler,
        wires: JobConnections,
        held: HeldEntries,
        metrics: WorkerMetrics,
        block_ms: int,
        stop: threading.Event,
        r: redis.Redis,
        streams: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.queue = scheduler.queue
        self.streams = list(streams) or [scheduler.queue]
        self._turn = 0
        self.wires = wires
        self.held = held
        self.metrics = metrics
        self.block_ms = block_ms
        self.stop = stop
        self.r = r

    def serve(self) -> None:
        """The thread's body: work until stopped and nothing is left in hand."""
        conn = self.wires.get()
        while True:
            task = self.scheduler.take()
            if task is not None:
                self._guarded(task, conn)
                continue
            if self.stop.is_set():
                self.scheduler.stopping.set()
                if self.scheduler.idle():
                    return
                time.sleep(DRAIN_POLL_S)  # another thread still finishes: wait for its batch
                continue
            stream, entries = self._next(conn)
            while entries:
                room = self._guarded(self.scheduler.run_entries, conn, entries, stream) or 0
                if room <= 0 or self.stop.is_set():
                    break
                entries = self.read(conn, room, None, stream)  # the rest of a batch, if queued

    def _next(self, conn: JobConnection) -> tuple[str, list[Entry]]:
        """The next entry of this thread's partitions (see the module docstring)."""
        block_ms = self.scheduler.read_block_ms(self.block_ms)
        if len(self.streams) == 1:
            return self.streams[0], self.read(conn, 1, block_ms, self.streams[0])
        count = len(self.streams)
        for k in range(count):
            stream = self.streams[(self._turn + k) % count]
            entries = self.read(conn, 1, None, stream)
            if entries:
                self._turn = (self._turn + k + 1) % count
                return stream, entries
            if self.stop.is_set():
                return stream, []
        stream = self.streams[self._turn]
        self._turn = (self._turn + 1) % count
        return stream, self.read(conn, 1, min(block_ms, SHARED_BLOCK_MS), stream)

    def _guarded(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run work; a lost connection or a bug is logged and never ends the thread."""
        try:
            return work(*args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.metrics.redis_errors.labels("job").inc()
            log.warning(
                "%s: lost Redis while working (%s); entries will be reclaimed", self.queue, exc
            )
            self.stop.wait(READ_ERROR_PAUSE_S)
        except Exception:
            log.exception("%s: work failed", self.queue)
            self.stop.wait(0.1)
        return None

    def read(
        self, conn: JobConnection, count: int, block_ms: int | None, stream: str | None = None
    ) -> list[Entry]:
        """Up to ``count`` new entries of ``stream`` (default: the plain queue), waiting up to
        ``block_ms`` (None: not at all)."""
        stream = stream or self.queue
        command: list[Any] = ["XREADGROUP", "GROUP", CONSUMER_GROUP, self.name, "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        try:
            reply = conn.execute(*command, "STREAMS", stream, ">")
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without persistence)
                try:
                    ensure_group(self.r, stream)
                except redis.RedisError:
                    self.stop.wait(READ_ERROR_PAUSE_S)
                return []
            log.exception("reading %s failed", stream)
            self.stop.wait(READ_ERROR_PAUSE_S)
            return []
        except redis.RedisError as exc:  # the retries with backoff did not cure it
            self.metrics.redis_errors.labels("read").inc()
            log.warning("connection lost while reading %s (%s); retrying", stream, exc)
            self.stop.wait(READ_ERROR_PAUSE_S)
            return []
        entries: list[Entry] = []
        for _stream, stream_entries in reply or []:
            for entry_id, flat in stream_entries:
                fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
                entries.append((text(entry_id), fields))
        for entry_id, _fields in entries:  # leased from now on, until completed or let go
            self.held.add(stream, entry_id, self.name)
        return entries
