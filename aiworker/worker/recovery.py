"""Crash recovery for the device streams: leases, reclaiming, dead letters, hand-back, cleanup.

A stream entry read by a consumer stays in the group's pending list until its completion XACKs it.
If the worker dies, the entry stays pending forever unless someone takes it over. So:

- **Leases.** An entry a worker holds (running it, or waiting in a batch) is registered in
  ``HeldEntries``. A lease thread re-claims every held entry for its own consumer every
  ``visibility_timeout / 4`` (XCLAIM ... JUSTID resets the idle time without counting a delivery),
  so a long job is never stolen from a live worker. The renewal checks ownership in the same script:
  an entry someone else already reclaimed is not stolen back (that would ping-pong it).
- **Reclaiming.** Each worker scans its device queues every ``visibility_timeout / 4`` with
  XAUTOCLAIM (Redis >= 6.2) for entries idle longer than ``visibility_timeout``: their worker died,
  stalled or lost Redis. XAUTOCLAIM is atomic, so two workers never reclaim the same entry.
- **Dead letters.** XAUTOCLAIM counts deliveries. An entry delivered more than ``max_deliveries``
  times (it keeps killing or stalling workers) is not run again: it is appended, with the reason, to
  the device's dead-letter stream (capped with MAXLEN ~ ``dead_letter_maxlen``), its requester gets
  an error reply, and it is acknowledged and deleted - all in one completion script.
- **Hand-back.** On a graceful stop, entries still held when the drain timeout ends are re-claimed
  with an idle time of ``visibility_timeout``, so other workers reclaim them on their next scan
  instead of a full timeout later.
- **Cleanup.** Consumers with nothing pending are deleted when their worker stops, and consumers of
  workers that vanished are deleted after an hour idle. DELCONSUMER drops a consumer's pending
  entries, so it only ever runs in a script that has just seen ``pending == 0``.

Nothing here trims or deletes an entry that is still pending: entries leave the queue only through
a completion (XACK, then XDEL). All of this covers every partition of a device's queue, but a
partition on a Redis Cluster master that a call's retries could not reach: reclaims and leases
leave it alone until that master answers again (waiting out the retries for it, 13 s a try, held
up every other partition on every pass).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from aiworker.execution.outcome import Outcome, StatsRecord
from aiworker.parser.entry import decode_entry
from aiworker.protocol.entries import reply_format_of, reply_key_of
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.text import text
from aiworker.settings import Settings
from aiworker.storage import lua
from aiworker.storage.cluster import REDIS_FAILURES
from aiworker.storage.wire import JobConnections
from aiworker.worker.complete import Completer, Finished, Record
from aiworker.worker.consume import reachable
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import WorkerMetrics

log = logging.getLogger("aiworker.worker.recovery")

# Consumers with nothing pending and idle this long belong to workers that are gone.
STALE_CONSUMER_S = 3600.0
PRUNE_EVERY_S = 60.0
RECLAIM_COUNT = 10
# Fields of an entry copied into its dead letter; more would only be a way to bloat the stream.
DEAD_LETTER_FIELDS = 64
RENEW = lua.load("renew_leases")
PRUNE = lua.load("prune_consumers")

# Takes entries this process claimed back: (device, [(entry id, fields)], the stream they are on).
Accept = Callable[[str, list[tuple[str, Mapping[Any, Any]]], str], None]


class Recovery:
    """Leases, reclaiming, dead letters and consumer cleanup for one worker process."""

    def __init__(
        self,
        r: redis.Redis,
        wires: JobConnections,
        settings: Settings,
        held: HeldEntries,
        completer: Completer,
        metrics: WorkerMetrics,
        worker_name: str,
        accept: Accept,
    ) -> None:
        self.r = r
        self.wires = wires
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.held = held
        self.completer = completer
        self.metrics = metrics
        self.worker_name = worker_name
        self.accept = accept
        self.visibility_ms = max(1, int(settings.visibility_timeout * 1000))
        self.interval = max(0.05, settings.visibility_timeout / 4)
        self._lease_stop = threading.Event()

    def reclaim_consumer(self, device: str) -> str:
        return f"{self.worker_name}:{device}:reclaim"

    def queues(self, device: str) -> list[str]:
        """Every partition of ``device``'s queue."""
        return self.keys.queues(device, self.settings.queue_partitions)

    # leases ---------------------------------------------------------------------------------

    def renew(self, idle_ms: int = 0, hand_back: bool = False) -> list[tuple[str, str]]:
        """Re-claim every held entry for its consumer with ``idle_ms``; returns the ones lost.
        ``hand_back``: entries that never ran (read ahead) get their delivery counted off."""
        lost: list[tuple[str, str]] = []
        failed: BaseException | None = None
        owners = self.held.by_owner()
        live = set(reachable(self.wires.get(), [queue for queue, _ in owners]))
        for (queue, consumer), ids in owners.items():
            if queue not in live:  # its master is lost: the retries would hold up the others
                continue
            groups = [(0, ids)]
            if hand_back:
                unrun = [entry_id for entry_id in ids if not self.held.ran(queue, entry_id)]
                groups = [(0, [i for i in ids if i not in unrun]), (1, unrun)]
            try:
                for uncount, group in groups:
                    if group:
                        args = [CONSUMER_GROUP, consumer, idle_ms, uncount, *group]
                        gone = RENEW(self.r, [queue], args)
                        lost += [(queue, text(entry_id)) for entry_id in gone or []]
            except REDIS_FAILURES as exc:  # a partition's master lost: renew the others
                failed = exc
        if failed is not None:
            raise failed
        return lost

    def lease_loop(self) -> None:
        """Renew leases until ``stop_leases``; runs in its own thread, also while draining."""
        while not self._lease_stop.wait(self.interval):
            try:
                for queue, entry_id in self.renew():
                    self.held.discard(queue, entry_id)  # stop renewing; completion decides
                    log.warning(
                        "job %s: lease lost, another worker reclaimed it",
                        entry_id,
                        extra={"job_id": entry_id, "queue": queue},
                    )
            except REDIS_FAILURES as exc:
                self.metrics.redis_errors.labels("renew").inc()
                log.warning("lease renewal failed: %s", exc)
            except Exception:  # never lose the thread: leases keep long jobs alive
                log.exception("lease renewal failed")

    def stop_leases(self) -> None:
        self._lease_stop.set()

    def hand_back(self) -> int:
        """Make every entry still held reclaimable right away (graceful stop, drain timed out)."""
        handed = self.held.pairs()
        if handed:
            self.renew(idle_ms=self.visibility_ms, hand_back=True)
            for queue, entry_id in handed:
                log.warning(
                    "job %s: handed back unfinished",
                    entry_id,
                    extra={"job_id": entry_id, "queue": queue},
                )
        return len(handed)

    # reclaiming -----------------------------------------------------------------------------

    def reclaim_loop(self, device: str, stop: threading.Event) -> None:
        """Scan ``device``'s queue partitions for abandoned entries until ``stop``; first scan at
        once."""
        next_prune = time.monotonic()
        while not stop.is_set():
            prune = time.monotonic() >= next_prune
            if prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
            # not the partitions of a master lost (Redis Cluster): each pass would wait out the
            # retries for it before reclaiming from the others
            for queue in reachable(self.wires.get(), self.queues(device)):
                try:
                    self.reclaim_once(device, stop, queue)
                    if prune:
                        stale_s = max(STALE_CONSUMER_S, 10 * self.settings.visibility_timeout)
                        self.prune(queue, min_idle_s=stale_s)
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):  # a lost group is re-created by the consumers
                        log.exception("reclaiming from %s failed", queue)
                except REDIS_FAILURES as exc:
                    self.metrics.redis_errors.labels("reclaim").inc()
                    log.warning("reclaiming from %s failed: %s", queue, exc)
                except Exception:  # never lose the thread: abandoned entries would stay pending
                    log.exception("reclaiming from %s failed", queue)
            stop.wait(self.interval)

    def reclaim_once(
        self, device: str, stop: threading.Event | None = None, queue: str | None = None
    ) -> int:
        """Claim and run (or dead-letter) entries of ``queue`` (default: the plain queue of
        ``device``) idle past the visibility timeout."""
        queue = queue or self.keys.queue(device)
        consumer = self.reclaim_consumer(device)
        cursor: Any = "0-0"
        handled = 0
        while stop is None or not stop.is_set():
            reply = self.r.xautoclaim(
                queue, CONSUMER_GROUP, consumer, self.visibility_ms, cursor, count=RECLAIM_COUNT
            )
            cursor, claimed = reply[0], [(text(i), f) for i, f in reply[1] if i is not None]
            for entry_id, _ in claimed:
                self.held.add(queue, entry_id, consumer)
            deliveries = self._deliveries(queue, [entry_id for entry_id, _ in claimed])
            runnable: list[tuple[str, Mapping[Any, Any]]] = []
            for entry_id, fields in claimed:
                if stop is not None and stop.is_set():
                    break  # still held: handed back by the graceful stop
                handled += 1
                self.metrics.reclaimed.labels(device).inc()
                count = deliveries.get(entry_id, 0)
                try:
                    if fields is None:  # deleted behind our back (Redis 6.2 reports it so)
                        gone = Finished(entry_id, Outcome("dropped"))
                        self.completer.complete(self.wires.get(), queue, [gone])
                        continue
                    if count > self.settings.max_deliveries:
                        self.dead_letter(device, queue, entry_id, fields, count)
                        continue
                except Exception:  # this entry's trouble only: log it with its id, go on
                    self.held.discard(queue, entry_id)
                    log.exception("job %s: reclaiming failed", entry_id, extra={"job_id": entry_id})
                    continue
                log.info(
                    "job %s: reclaimed (delivery %d)",
                    entry_id,
                    count,
                    extra={"job_id": entry_id, "queue": queue},
                )
                runnable.append((entry_id, fields))
            if runnable:
                self.accept(device, runnable, queue)
            if text(cursor) == "0-0":
                break
        return handled

    def _deliveries(self, queue: str, entry_ids: list[str]) -> dict[str, int]:
        """Delivery count of each entry (XPENDING's extended form)."""
        if not entry_ids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(queue, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
        counts: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                counts[text(row["message_id"])] = int(row["times_delivered"])
        return counts

    def dead_letter(
        self, device: str, queue: str, entry_id: str, fields: Mapping[Any, Any], deliveries: int
    ) -> bool:
        """Move an entry that keeps failing to the dead-letter stream and tell its requester."""
        target = self.keys.dead_letters(device)
        error = (
            f"job {entry_id} was delivered {deliveries} times without completing "
            f"(max_deliveries={self.settings.max_deliveries}): the workers running it died, "
            f"stalled or lost Redis; moved to {target}"
        )
        record: dict[Any, Any] = dict(list(fields.items())[:DEAD_LETTER_FIELDS])
        record.update(
            {
                "dead_letter_error": error,
                "dead_letter_entry": entry_id,
                "dead_letter_queue": queue,
                "dead_letter_deliveries": deliveries,
                "dead_letter_time": int(time.time()),
            }
        )
        job = None
        stats: list[StatsRecord] = []
        try:  # an undecodable entry has no model to count against
            job = decode_entry(entry_id, fields, self.keys)
            model = str(getattr(job.request, "key", ""))
            stats = [StatsRecord(model, errors=1)] if model else []
        except Exception:
            model = ""
        letter = Finished(
            entry_id,
            Outcome.failed(error, stats),
            job,
            reply_key_of(fields, self.keys),
            reply_format_of(fields),
            fields=fields,
            records=[Record(target, record, self.settings.dead_letter_maxlen)],
        )
        [result] = self.completer.complete(self.wires.get(), queue, [letter])
        if result.applied:
            self.metrics.failure(model, device, "dead_letter")
            log.error("job %s: %s", entry_id, error, extra={"job_id": entry_id, "queue": queue})
        return result.applied

    # consumers ------------------------------------------------------------------------------

    def prune(
        self, queue: str, min_idle_s: float = 0.0, names: list[str] | None = None
    ) -> list[str]:
        """Delete consumers with nothing pending (only ``names`` if given); returns who went."""
        if names is not None and not names:
            return []
        try:
            removed = PRUNE(
                self.r, [queue], [CONSUMER_GROUP, int(min_idle_s * 1000), *(names or [])]
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return []
            raise
        return [text(name) for name in removed or []]
