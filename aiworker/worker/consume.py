"""Reading a device's stream(s): each lane thread reads as its own consumer (``host:pid:device:n``)
on its own connection, and hands what it read to the lane (``lane``).

Entries are registered in ``HeldEntries`` the moment they are read, so their lease is renewed from
then on, before their inputs are even read.

A device queue split into partitions (``queue_partitions``) is shared out among the threads: thread
``n`` serves the partitions ``n``, ``n + threads``, ... (with more threads than partitions, thread
``n`` serves partition ``n % partitions``): it blocks on them when there is nothing to read. A thread
with one stream blocks on it; a thread with several takes from each in turn without blocking, and
blocks briefly on the next one in turn only when all were empty, so no partition waits behind
another. Before it blocks, a thread sweeps every partition that no other thread of its lane reads
at that moment (``sweep``: one XREADGROUP each, without blocking, in one round trip per node), so
that under load one read serves the jobs of several partitions, as one read of a single stream
would. A sweep never waits for a lost node (no retries; what it could not reach is left to its
own thread for a while), and on Redis Cluster no read is sent to a master that a call's retries
could not reach until it answers again (``reachable``).

A stream or consumer group that vanished (FLUSHALL, FLUSHDB, a Redis restart without persistence)
is recreated at once, and ``on_lost`` is told (the worker re-publishes its heartbeat, which the
flush removed too), so that clients see a live worker again within a round trip. A blocked read
that a CLUSTER FAILOVER ends (UNBLOCKED as its node turns replica) lost nothing: it is read again.
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
from aiworker.storage.wire import JobConnection
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import WorkerMetrics

log = logging.getLogger("aiworker.worker")
# Pause after a Redis error that redis-py's retries with backoff did not cure.
READ_ERROR_PAUSE_S = 1.0
# Longest a thread serving several partitions blocks on one of them.
SHARED_BLOCK_MS = 20
# How long a partition a sweep could not reach is left out of sweeps (its own thread reads it).
UNSWEPT_S = 5.0

Entry = tuple[str, Mapping[Any, Any]]


def ensure_group(r: Any, queue: str) -> None:
    """Create the consumer group (and stream) if missing; from id 0 so earlier jobs are served.
    ``r`` is a redis-py client or a worker thread's connection."""
    command = ("XGROUP", "CREATE", queue, CONSUMER_GROUP, "0", "MKSTREAM")
    try:
        if hasattr(r, "xgroup_create"):
            r.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
        else:
            r.execute(*command)
    except redis.exceptions.OutOfMemoryError:
        # Redis refuses XGROUP CREATE while full even when the group exists (the check comes
        # before the command looks): only a group that is really missing is an error
        if not _group_exists(r, queue):
            raise
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _group_exists(r: Any, queue: str) -> bool:
    """Whether ``queue`` has aiworker's consumer group (XINFO CONSUMERS, which the worker's ACL
    rule grants, answers NOGROUP when it has not)."""
    command = ("XINFO", "CONSUMERS", queue, CONSUMER_GROUP)
    try:
        r.execute_command(*command) if hasattr(r, "execute_command") else r.execute(*command)
    except redis.ResponseError:
        return False
    return True


def share_of(streams: Sequence[str], threads: int, n: int) -> list[str]:
    """The partitions thread ``n`` of ``threads`` serves (see the module docstring)."""
    return list(streams[n::threads]) or [streams[n % len(streams)]]


def _vanished(exc: redis.ResponseError) -> bool:
    """The stream or its group is gone: NOGROUP, or a blocked read UNBLOCKED by its deletion."""
    message = str(exc)
    return "NOGROUP" in message or "UNBLOCKED" in message


def _demoted(exc: redis.ResponseError) -> bool:
    """A blocked read its node ended as it turned replica (CLUSTER FAILOVER): the stream and
    group are intact on the promoted master, which the next read reaches by MOVED."""
    message = str(exc)
    return message.startswith("UNBLOCKED") and "instance state changed" in message


def reachable(conn: JobConnection, streams: Sequence[str]) -> list[str]:
    """``streams`` but those on a Redis Cluster master that a call's retries could not reach
    and that has not answered since (``JobConnection.unreachable``): a read of one would wait
    out the retries again, and a sweep holds every partition it covers from the lane's other
    threads meanwhile."""
    if not conn.degraded:
        return list(streams)
    return [stream for stream in streams if not conn.unreachable(stream)]


class Consumer:
    """One lane thread's reads of its partitions (consumer name ``host:pid:device:n``)."""

    def __init__(
        self,
        name: str,
        streams: Sequence[str],
        held: HeldEntries,
        metrics: WorkerMetrics,
        stop: threading.Event,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.streams = list(streams)
        self.held = held
        self.metrics = metrics
        self.stop = stop
        self.on_lost = on_lost
        self._turn = 0
        self._unswept: dict[str, float] = {}  # partitions a sweep could not reach, until when

    def next(
        self, conn: JobConnection, count: int, block_ms: int, swept: bool = False
    ) -> tuple[str, list[Entry]]:
        """Up to ``count`` new entries of this thread's partitions (see the module docstring);
        ``swept``: all were just found empty (``sweep``), block on the next one in turn."""
        streams = reachable(conn, self.streams)
        if not streams:  # every one on a master out of reach: its prober says when it is back
            self.stop.wait(READ_ERROR_PAUSE_S)
            return self.streams[0], []
        if len(streams) == 1:
            return streams[0], self.read(conn, count, block_ms, streams[0])
        n = len(streams)
        for k in range(0 if swept else n):
            stream = streams[(self._turn + k) % n]
            entries = self.read(conn, count, None, stream)
            if entries:
                self._turn = (self._turn + k + 1) % n
                return stream, entries
            if self.stop.is_set():
                return stream, []
        stream = streams[self._turn % n]
        self._turn = (self._turn + 1) % n
        return stream, self.read(conn, count, min(block_ms, SHARED_BLOCK_MS), stream)

    def sweep(
        self, conn: JobConnection, count: int, streams: Sequence[str]
    ) -> list[tuple[str, list[Entry]]]:
        """New entries of several partitions (``count`` in all at most, shared out evenly),
        without blocking, in one round trip per node: (stream, entries) for each that had some."""
        now = time.monotonic()
        streams = [s for s in reachable(conn, streams) if self._unswept.get(s, 0.0) <= now]
        if not streams:
            return []
        each = max(1, -(-count // len(streams)))
        commands = [self._xreadgroup(each, None, stream) for stream in streams]
        try:
            # without retries: a sweep covers partitions that no other thread reads meanwhile,
            # so one held up by a lost master held every read of the lane (their own threads'
            # reads try it, with the retries)
            replies = conn.pipeline(commands, retry=False)
        except redis.RedisError as exc:
            # a cluster node lost: what the others answered was delivered to this consumer
            replies = getattr(exc, "replies", None) or [None] * len(streams)
            self.metrics.redis_errors.labels("read").inc()
            for stream, reply in zip(streams, replies, strict=True):
                if reply is None:
                    self._unswept[stream] = now + UNSWEPT_S
            log.debug("sweep of %s partitions cut short: %s", len(streams), exc)
        found = []
        for stream, reply in zip(streams, replies, strict=True):
            if isinstance(reply, Exception):
                self._unreadable(conn, stream, reply)
            elif reply:
                found.append((stream, self._taken(stream, reply)))
        return found

    def read(
        self, conn: JobConnection, count: int, block_ms: int | None, stream: str
    ) -> list[Entry]:
        """Up to ``count`` new entries of ``stream``, waiting up to ``block_ms`` (None: not at
        all)."""
        try:
            reply = conn.execute(*self._xreadgroup(count, block_ms, stream))
        except redis.RedisError as exc:
            self._unreadable(conn, stream, exc)
            return []
        return self._taken(stream, reply)

    def _xreadgroup(self, count: int, block_ms: int | None, stream: str) -> tuple[Any, ...]:
        """This consumer's XREADGROUP of ``stream`` (``block_ms`` None: without blocking)."""
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        group = ("GROUP", CONSUMER_GROUP, self.name)
        return ("XREADGROUP", *group, "COUNT", count, *block, "STREAMS", stream, ">")

    def _taken(self, stream: str, reply: Any) -> list[Entry]:
        """The entries of an XREADGROUP reply, leased from now on (until completed or let go)."""
        entries: list[Entry] = []
        for _stream, stream_entries in reply or []:
            for entry_id, flat in stream_entries:
                fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
                entries.append((text(entry_id), fields))
        for entry_id, _fields in entries:
            self.held.add(stream, entry_id, self.name)
        return entries

    def _unreadable(self, conn: JobConnection, stream: str, exc: Exception) -> None:
        """A read failed: a stream or group that vanished is made again, a read a failover ended
        is sent again; anything else pauses this thread's reading a moment."""
        if isinstance(exc, redis.ResponseError):
            if _demoted(exc):
                log.debug("reading %s: %s; reading again", stream, exc)
                return
            if _vanished(exc):
                self._recreate(conn, stream)
                return
            log.error("reading %s failed: %s", stream, exc)
        else:  # the retries with backoff did not cure it
            self.metrics.redis_errors.labels("read").inc()
            log.warning("connection lost while reading %s (%s); retrying", stream, exc)
        self.stop.wait(READ_ERROR_PAUSE_S)

    def _recreate(self, conn: JobConnection, stream: str) -> None:
        """The stream or group vanished (a flush, a restart): make it again, at once."""
        try:
            ensure_group(conn, stream)
        except redis.RedisError as exc:
            log.warning("could not recreate the consumer group of %s: %s", stream, exc)
            self.stop.wait(READ_ERROR_PAUSE_S)
            return
        log.info("%s: its stream or consumer group had vanished; recreated", stream)
        self.on_lost()

    def lag(self, conn: JobConnection, stream: str) -> int | None:
        """Entries of ``stream`` no consumer has read yet (XINFO GROUPS' ``lag``; None when
        Redis cannot tell)."""
        try:
            groups = conn.execute("XINFO", "GROUPS", stream)
        except redis.ResponseError:
            return None
        for group in groups or []:
            info = dict(zip(group[::2], group[1::2], strict=False))
            if text(info.get(b"name", info.get("name"))) == CONSUMER_GROUP:
                lag = info.get(b"lag", info.get("lag"))
                return int(lag) if lag is not None else None
        return None
