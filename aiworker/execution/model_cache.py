"""Per-process cache of loaded models, keyed by model key and content digest, LRU-bounded.

The bound is a count (``model_cache_size``) and optionally bytes (``model_cache_bytes``, from each
model's ``nbytes``); the least recently used models are closed first, the newest is always kept.

A job names a model key; the worker reads the stored digest alongside the job's inputs and asks the
cache for (key, digest). A new digest means the model was replaced: it is loaded once (other threads
wanting it wait on a per-key lock) and the old version is closed. Load failures are cached per digest
too, so a corrupt blob is not fetched and parsed again for every job.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiworker.backends.base import LoadedModel
from aiworker.protocol.errors import AIError


@dataclass
class _Entry:
    digest: str
    model: LoadedModel | None
    error: AIError | None


class ModelCache:
    def __init__(self, max_models: int = 32, max_bytes: int = 0) -> None:
        self.max_models = max(1, max_models)
        self.max_bytes = max(0, max_bytes)  # 0: no byte bound
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def get(
        self, key: str, digest: str, load: Callable[[], tuple[str, LoadedModel]]
    ) -> LoadedModel:
        """The loaded model for this version, loading it with ``load`` on a miss.

        ``load`` returns the digest it actually loaded: when the model was replaced after the job
        read ``digest``, the newer version is cached under its own digest, never the old one.
        """
        entry = self._lookup(key, digest)
        if entry is None:
            with self._key_lock(key):
                entry = self._lookup(key, digest)
                if entry is None:
                    entry = self._load(key, digest, load)
        if entry.error is not None:
            raise entry.error
        assert entry.model is not None
        return entry.model

    def _lookup(self, key: str, digest: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.digest != digest:
                return None
            self._entries.move_to_end(key)
            return entry

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _load(self, key: str, digest: str, load: Callable[[], tuple[str, LoadedModel]]) -> _Entry:
        try:
            loaded_digest, model = load()
            entry = _Entry(loaded_digest, model, None)
        except AIError as exc:
            entry = _Entry(digest, None, exc)
        evicted = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                evicted.append(old)
            self._entries[key] = entry
            while len(self._entries) > self.max_models or (
                len(self._entries) > 1 and self.max_bytes and self._nbytes() > self.max_bytes
            ):
                _, victim = self._entries.popitem(last=False)
                evicted.append(victim)
        for victim in evicted:
            if victim.model is not None:
                victim.model.close()
        return entry

    def _nbytes(self) -> int:
        return sum(e.model.nbytes for e in self._entries.values() if e.model is not None)

    @property
    def nbytes(self) -> int:
        """Approximate bytes held by the cached models."""
        with self._lock:
            return self._nbytes()

    def invalidate(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None and entry.model is not None:
            entry.model.close()

    def keys(self) -> list[str]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.model is not None]

    def clear(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            if entry.model is not None:
                entry.model.close()
