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
a completion (XACK, then XDEL).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis

from aiworker.protocol.entries import decode_entry, reply_key_of
from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.settings import Settings
from aiworker.storage import stats
from aiworker.worker.complete import Commands, Completer
from aiworker.worker.metrics import WorkerMetrics

log = logging.getLogger("aiworker.worker.recovery")

# Consumers with nothing pending and idle this long belong to workers that are gone.
STALE_CONSUMER_S = 3600.0
PRUNE_EVERY_S = 60.0
RECLAIM_COUNT = 10
# Fields of an entry copied into its dead letter; more would only be a way to bloat the stream.
DEAD_LETTER_FIELDS = 64

RENEW_SCRIPT = """
-- KEYS[1] queue; ARGV: group, consumer, idle ms to set, entry ids.
-- Returns the ids another consumer owns now (ids no longer pending were just completed).
local lost = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  elseif #p == 1 then
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

PRUNE_SCRIPT = """
-- KEYS[1] queue; ARGV: group, min idle ms, consumer names (none: any consumer).
-- Deletes consumers that have nothing pending; the check and the delete are one atomic step.
local wanted, any = {}, #ARGV < 3
for i = 3, #ARGV do wanted[ARGV[i]] = true end
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2])
      and (any or wanted[info['name']]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""

# Takes entries this process claimed back: (device, [(entry id, fields)]).
Accept = Callable[[str, list[tuple[str, Mapping[Any, Any]]]], None]
# The (queue, entry id) pairs the process' queue runtimes hold right now.
StillHeld = Callable[[], set[tuple[str, str]]]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class HeldEntries:
    """Thread-safe registry of the entries this process holds: (queue, entry id) -> consumer.

    Whatever keeps an entry without completing it yet (a consumer thread running it, a batcher
    waiting for more requests) registers it here, so its lease is renewed while it waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}  # -> (consumer, since)

    def add(self, queue: str, entry_id: str, consumer: str) -> None:
        with self._lock:
            self._entries[(queue, entry_id)] = (consumer, time.monotonic())

    def discard(self, queue: str, entry_id: str) -> None:
        with self._lock:
            self._entries.pop((queue, entry_id), None)

    def pairs(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._entries)

    def by_owner(self) -> dict[tuple[str, str], list[str]]:
        """(queue, consumer) -> entry ids."""
        owners: dict[tuple[str, str], list[str]] = {}
        with self._lock:
            for (queue, entry_id), (consumer, _since) in self._entries.items():
                owners.setdefault((queue, consumer), []).append(entry_id)
        return owners

    def prune(self, keep: set[tuple[str, str]], grace_s: float) -> list[tuple[str, str]]:
        """Forget entries not in ``keep`` that were added more than ``grace_s`` ago: whoever held
        them let go without completing them (e.g. Redis failed), so their lease must lapse and
        another delivery run them. Returns the forgotten ones."""
        horizon = time.monotonic() - grace_s
        with self._lock:
            gone = [
                k for k, (_, since) in self._entries.items() if k not in keep and since < horizon
            ]
            for key in gone:
                del self._entries[key]
        return gone

    def count(self, queue: str) -> int:
        with self._lock:
            return sum(1 for q, _ in self._entries if q == queue)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return item in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Recovery:
    """Leases, reclaiming, dead letters and consumer cleanup for one worker process."""

    def __init__(
        self,
        r: redis.Redis,
        settings: Settings,
        held: HeldEntries,
        completer: Completer,
        metrics: WorkerMetrics,
        worker_name: str,
        accept: Accept,
        still_held: StillHeld | None = None,
    ) -> None:
        self.r = r
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.held = held
        self.completer = completer
        self.metrics = metrics
        self.worker_name = worker_name
        self.accept = accept
        self.still_held = still_held
        self.visibility_ms = max(1, int(settings.visibility_timeout * 1000))
        self.interval = max(0.05, settings.visibility_timeout / 4)
        self._renew = r.register_script(RENEW_SCRIPT)
        self._prune = r.register_script(PRUNE_SCRIPT)
        self._lease_stop = threading.Event()

    def reclaim_consumer(self, device: str) -> str:
        return f"{self.worker_name}:{device}:reclaim"

    # leases ---------------------------------------------------------------------------------

    def renew(self, idle_ms: int = 0) -> list[tuple[str, str]]:
        """Re-claim every held entry for its consumer with ``idle_ms``; returns the ones lost."""
        lost: list[tuple[str, str]] = []
        for (queue, consumer), ids in self.held.by_owner().items():
            gone = self._renew(keys=[queue], args=[CONSUMER_GROUP, consumer, idle_ms, *ids])
            lost += [(queue, _text(entry_id)) for entry_id in gone or []]
        return lost

    def lease_loop(self) -> None:
        """Renew leases until ``stop_leases``; runs in its own thread, also while draining."""
        while not self._lease_stop.wait(self.interval):
            try:
                if self.still_held is not None:
                    for queue, entry_id in self.held.prune(self.still_held(), self.interval):
                        log.info(
                            "job %s: let go unfinished; its lease lapses",
                            entry_id,
                            extra={"job_id": entry_id, "queue": queue},
                        )
                for queue, entry_id in self.renew():
                    self.held.discard(queue, entry_id)  # stop renewing; completion decides
                    log.warning(
                        "job %s: lease lost, another worker reclaimed it",
                        entry_id,
                        extra={"job_id": entry_id, "queue": queue},
                    )
            except redis.RedisError as exc:
                self.metrics.redis_errors.labels("renew").inc()
                log.warning("lease renewal failed: %s", exc)

    def stop_leases(self) -> None:
        self._lease_stop.set()

    def hand_back(self) -> int:
        """Make every entry still held reclaimable right away (graceful stop, drain timed out)."""
        handed = self.held.pairs()
        if handed:
            self.renew(idle_ms=self.visibility_ms)
            for queue, entry_id in handed:
                log.warning(
                    "job %s: handed back unfinished",
                    entry_id,
                    extra={"job_id": entry_id, "queue": queue},
                )
        return len(handed)

    # reclaiming -----------------------------------------------------------------------------

    def reclaim_loop(self, device: str, stop: threading.Event) -> None:
        """Scan ``device``'s queue for abandoned entries until ``stop``; first scan at once."""
        queue = self.keys.queue(device)
        next_prune = time.monotonic()
        while not stop.is_set():
            try:
                self.reclaim_once(device, stop)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    stale_s = max(STALE_CONSUMER_S, 10 * self.settings.visibility_timeout)
                    self.prune(queue, min_idle_s=stale_s)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):  # a lost group is re-created by the consumers
                    log.exception("reclaiming from %s failed", queue)
            except redis.RedisError as exc:
                self.metrics.redis_errors.labels("reclaim").inc()
                log.warning("reclaiming from %s failed: %s", queue, exc)
            stop.wait(self.interval)

    def reclaim_once(self, device: str, stop: threading.Event | None = None) -> int:
        """Claim and run (or dead-letter) entries idle past the visibility timeout."""
        queue = self.keys.queue(device)
        consumer = self.reclaim_consumer(device)
        cursor: Any = "0-0"
        handled = 0
        while stop is None or not stop.is_set():
            reply = self.r.xautoclaim(
                queue, CONSUMER_GROUP, consumer, self.visibility_ms, cursor, count=RECLAIM_COUNT
            )
            cursor, claimed = reply[0], [(_text(i), f) for i, f in reply[1] if i is not None]
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
                if fields is None:  # deleted behind our back (Redis 6.2 reports it so)
                    self.held.discard(queue, entry_id)
                    self.completer.complete(queue, entry_id)
                elif count > self.settings.max_deliveries:
                    self.dead_letter(device, queue, entry_id, fields, count)
                else:
                    log.info(
                        "job %s: reclaimed (delivery %d)",
                        entry_id,
                        count,
                        extra={"job_id": entry_id, "queue": queue},
                    )
                    runnable.append((entry_id, fields))
            if runnable:
                self.accept(device, runnable)
            if _text(cursor) == "0-0":
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
                counts[_text(row["message_id"])] = int(row["times_delivered"])
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
        done = Commands().xadd(target, record, maxlen=self.settings.dead_letter_maxlen)
        model = ""
        with contextlib.suppress(Exception):  # an undecodable entry has no model to count against
            model = str(getattr(decode_entry(entry_id, fields).request, "key", ""))
            stats.record(cast(Any, done), self.keys, model, calls=1, errors=1)
        reply_key = reply_key_of(fields)
        if reply_key:
            payload = {
                "status": "error",
                "id": entry_id,
                "worker": self.worker_name,
                "error": error,
            }
            done.lpush(reply_key, json.dumps(payload)).expire(reply_key, self.settings.reply_ttl)
        try:
            result = self.completer.complete(queue, entry_id, done)
            if result.rejected:  # e.g. a broken reply key: still get it out of the queue
                bare = Commands().xadd(target, record, maxlen=self.settings.dead_letter_maxlen)
                result = self.completer.complete(queue, entry_id, bare)
        finally:
            self.held.discard(queue, entry_id)
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
            removed = self._prune(
                keys=[queue], args=[CONSUMER_GROUP, int(min_idle_s * 1000), *(names or [])]
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return []
            raise
        return [_text(name) for name in removed or []]
