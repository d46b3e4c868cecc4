"""What each thread of a device queue is running now, and since when: the entries a process holds
besides those waiting in its batcher, whether a graceful stop may end, and what the hung-job
watchdog looks at."""

from __future__ import annotations

import threading
import time


class RunningJobs:
    """Thread -> (entry ids, monotonic start) of the work it runs; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[int, tuple[list[str], float]] = {}

    def track(self, entry_ids: list[str]) -> _Running:
        """``with running.track(ids):`` registers the calling thread's work for the block."""
        return _Running(self, entry_ids)

    def entry_ids(self) -> list[str]:
        with self._lock:
            return [entry_id for ids, _ in self._by_thread.values() for entry_id in ids]

    def since(self) -> list[tuple[list[str], float]]:
        with self._lock:
            return list(self._by_thread.values())

    def __bool__(self) -> bool:
        return bool(self._by_thread)


class _Running:
    def __init__(self, jobs: RunningJobs, entry_ids: list[str]) -> None:
        self.jobs = jobs
        self.entry_ids = entry_ids
        self.previous: tuple[list[str], float] | None = None

    def __enter__(self) -> None:
        ident = threading.get_ident()
        with self.jobs._lock:
            self.previous = self.jobs._by_thread.get(ident)
            self.jobs._by_thread[ident] = (self.entry_ids, time.monotonic())

    def __exit__(self, *exc: object) -> None:
        ident = threading.get_ident()
        with self.jobs._lock:
            if self.previous is None:
                self.jobs._by_thread.pop(ident, None)
            else:  # a DAG's thread ran a batch while its own job runs
                self.jobs._by_thread[ident] = self.previous
