"""The entries this worker process holds: taken from a stream, not yet completed.

Whatever keeps an entry without completing it yet (a thread running it, the batcher waiting for more
requests) registers it here, so the lease thread renews its claim while it waits (``recovery``),
and a graceful stop can hand back what is left.
"""

from __future__ import annotations

import threading
import time


class HeldEntries:
    """Thread-safe registry of the entries this process holds: (queue, entry id) -> consumer.

    Whatever keeps an entry without completing it yet (a consumer thread running it, a batcher
    waiting for more requests) registers it here, so its lease is renewed while it waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}  # -> (consumer, since)
        self._ran: set[tuple[str, str]] = set()  # entries whose job started running

    def add(self, queue: str, entry_id: str, consumer: str) -> None:
        with self._lock:
            self._entries[(queue, entry_id)] = (consumer, time.monotonic())

    def discard(self, queue: str, entry_id: str) -> None:
        with self._lock:
            self._entries.pop((queue, entry_id), None)
            self._ran.discard((queue, entry_id))

    def discard_all(self, queue: str, entry_ids: list[str]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                self._entries.pop((queue, entry_id), None)
                self._ran.discard((queue, entry_id))

    def running(self, queue: str, entry_id: str) -> bool:
        """The entry's job started running on a device (a hand-back counts it as a delivery);
        True the first time (its first op)."""
        key = (queue, entry_id)
        with self._lock:
            if key in self._entries and key not in self._ran:
                self._ran.add(key)
                return True
            return False

    def ran(self, queue: str, entry_id: str) -> bool:
        with self._lock:
            return (queue, entry_id) in self._ran

    def since(self, queue: str, entry_id: str) -> float | None:
        """When (``time.monotonic``) the entry was taken, or None when it is not held."""
        with self._lock:
            found = self._entries.get((queue, entry_id))
        return found[1] if found is not None else None

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

    def count(self, queue: str) -> int:
        with self._lock:
            return sum(1 for q, _ in self._entries if q == queue)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return item in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
