"""Per-process cache of loaded models and scripts, keyed by key and content digest, LRU-bounded.

The bound is a count (``model_cache_size``) and optionally bytes (``model_cache_bytes``, from each
model's ``nbytes``); the least recently used models leave first, the newest always stays.

A job names a model key; the worker reads the stored digest with the job's inputs and asks the cache
for (key, digest). A new digest means the model was replaced: it is loaded once (other threads
wanting it wait on a per-key lock) and the old version leaves the cache. A version the framework
cannot load (``LoadFailed``) is cached as such under the digest the loader read, so its blob is not
fetched and parsed again for every job; a failure to read it (Redis busy, refusing, a version
replaced as it was read) is the job's error only, and the next job reads again.

A model is in use from ``use`` until its ``with`` block ends. A model that leaves the cache
(eviction, a newer version, ``clear`` at stop) is closed only once no job uses it any more, so a
framework session is never closed under a running job.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiworker.backends.base import LoadedModel
from aiworker.protocol.errors import AIError

Loader = Callable[[], tuple[str, LoadedModel]]


class LoadFailed(Exception):
    """A loader's failure that is the stored version's own (its blob or backend): cached under
    the ``digest`` the loader read, with the job's ``error``."""

    def __init__(self, digest: str, error: AIError) -> None:
        super().__init__(str(error))
        self.digest = digest
        self.error = error


@dataclass
class _Entry:
    digest: str
    model: LoadedModel | None
    error: AIError | None
    users: int = 0
    retired: bool = False  # out of the cache: close when the last user is done


class _InUse:
    """``with cache.use(...) as model``: the model, released when the block ends (a class, not a
    generator: this runs once per job)."""

    __slots__ = ("cache", "digest", "entry", "key", "load")

    def __init__(self, cache: ModelCache, key: str, digest: str, load: Loader) -> None:
        self.cache, self.key, self.digest, self.load = cache, key, digest, load
        self.entry: _Entry | None = None

    def __enter__(self) -> LoadedModel:
        entry = self.entry = self.cache._enter(self.key, self.digest, self.load)
        if entry.error is not None:
            self.cache._release(entry)
            self.entry = None
            raise entry.error
        assert entry.model is not None
        return entry.model

    def __exit__(self, *exc: object) -> None:
        if self.entry is not None:
            self.cache._release(self.entry)


class ModelCache:
    def __init__(self, max_models: int = 32, max_bytes: int = 0) -> None:
        self.max_models = max(1, max_models)
        self.max_bytes = max(0, max_bytes)  # 0: no byte bound
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, waiters)

    def use(self, key: str, digest: str, load: Loader) -> _InUse:
        """The loaded model of this version, kept open until the ``with`` block ends.

        ``load`` returns the digest it actually loaded: when the model was replaced after the job
        read ``digest``, the newer version is cached under its own digest, never the old one.
        """
        return _InUse(self, key, digest, load)

    def _enter(self, key: str, digest: str, load: Loader) -> _Entry:
        entry = self._acquire(key, digest)
        if entry is None:
            with self._load_lock(key):
                entry = self._acquire(key, digest)
                if entry is None:
                    entry = self._load(key, digest, load)
        return entry

    def _acquire(self, key: str, digest: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.digest != digest:
                return None
            self._entries.move_to_end(key)
            entry.users += 1
            return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            close = entry.retired and entry.users == 0
        if close and entry.model is not None:
            entry.model.close()

    @contextmanager
    def _load_lock(self, key: str) -> Iterator[None]:
        """A lock per key being loaded; dropped when nobody waits, so the map stays small."""
        with self._lock:
            lock, waiters = self._loading.get(key, (threading.Lock(), 0))
            self._loading[key] = (lock, waiters + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, waiters = self._loading[key]
                if waiters == 1:
                    del self._loading[key]
                else:
                    self._loading[key] = (lock, waiters - 1)

    def _load(self, key: str, digest: str, load: Loader) -> _Entry:
        try:
            loaded_digest, model = load()
            entry = _Entry(loaded_digest, model, None, users=1)
        except LoadFailed as failed:
            entry = _Entry(failed.digest, None, failed.error, users=1)
        gone: list[_Entry] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                gone.append(old)
            self._entries[key] = entry
            while len(self._entries) > self.max_models or (
                len(self._entries) > 1 and self.max_bytes and self._nbytes() > self.max_bytes
            ):
                gone.append(self._entries.popitem(last=False)[1])
            idle = self._retire(gone)
        for victim in idle:
            victim.close()
        return entry

    @staticmethod
    def _retire(entries: list[_Entry]) -> list[LoadedModel]:
        """Mark entries out of the cache; the models nobody uses now, to close (lock held)."""
        idle = []
        for entry in entries:
            entry.retired = True
            if entry.users == 0 and entry.model is not None:
                idle.append(entry.model)
        return idle

    def _nbytes(self) -> int:
        return sum(e.model.nbytes for e in self._entries.values() if e.model is not None)

    @property
    def nbytes(self) -> int:
        """Approximate bytes held by the cached models."""
        with self._lock:
            return self._nbytes()

    def keys(self) -> list[str]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.model is not None]

    def clear(self) -> None:
        """Empty the cache; models still in use close when their jobs end."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            idle = self._retire(entries)
        for model in idle:
            model.close()
