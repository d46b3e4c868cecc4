"""The one read of a job's state: model and script versions, input tensors, output key kinds.

All jobs taken in one stream read are served by one round trip. ``read_jobs.lua`` checks key types
and stored sizes (a tensor's data, its kind, dtype and shape fields) before any tensor data leaves
Redis, and each key is read once however many jobs or arguments name it. Small tensors come back
from the script itself. Large ones (over ``tensor_io.LUA_VALUE_BYTES``, and those beyond
``LUA_CALL_BYTES`` in one read: a batch's) do not pass through Lua, where Redis hashes every byte
(ten times a plain HGET's cost for a large value, bench/README.md): they come
from plain HMGETs in a MULTI sent after the script in the same round trip, and are received straight
into buffers of their own (``storage.bulk_read``: no copies but the kernel's). Those keys are
WATCHed from before the script, so the fields fetched are the version the script checked; and the
fetch runs only if the script cleared it: the read sets a flag key, the script deletes it when every
such tensor may be fetched, and the read then COPYs the flag, if it is still there, onto a key it
also WATCHes - which aborts the MULTI when a tensor was refused (too large, or over the read's
budget) and when the script did not run at all (NOSCRIPT). An aborted read is sent again without
what was refused; one that lost its WATCH to a concurrent write, as it was. Which tensors are large
the worker learns as it reads them (``MetaCache``): a tensor the script finds larger than it fetches
costs one more round trip, the first time.

The usual read (a single Redis, no tensor known to be too large for Lua, one script call's worth
of keys) is that one script call, built directly (``_one_call``); the rest below is the general
read (``_in_groups``).

A read stops fetching when it carries ``max_job_bytes`` (jobs left over are read again on their own
when they run), one script call checks at most ``READ_KEYS_PER_CALL`` keys, so that no call holds
Redis for long, and one round trip fetches at most ``READ_ROUND_BYTES`` of large tensors as last
seen (the jobs after them are read by the next round trip of the same read). A script reads one hash
slot: when a read's keys (and its flag keys) lie in several, as on Redis Cluster, they are grouped
by slot and each group read by its own call, all in one round trip per node, the script fetching
every tensor itself; the byte budgets then hold per group, and ``Snapshot.tensor`` still bounds each
job's decoded total. A single Redis is one slot. A ``Snapshot`` then decodes what one job needs, on
demand, with RedisAI's errors in the order RedisAI reported them, and declared sizes checked before
any array is allocated.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import redis

from aiworker.execution import limits
from aiworker.execution.limits import Limits
from aiworker.protocol.errors import AIError, LimitExceeded
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import KIND, MODEL, SCRIPT, TENSOR, Read, Request
from aiworker.protocol.text import text
from aiworker.storage import bulk_read, lua, tensor_io
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage.plans import by_slot

READ_JOBS = lua.load("read_jobs")
# Keys one read_jobs.lua call checks at most (a few microseconds each); a job is never split.
READ_KEYS_PER_CALL = 512
# Rounds of one read: a refusal or a tensor found large costs one more, a write racing it one more.
READ_ATTEMPTS = 5
# The most large tensor data one round trip of a read fetches: jobs beyond it are read by the
# next round trip of the same read. One reply of many megabytes costs Redis and the worker a
# third more CPU per byte than replies of a few (their buffers no longer stay in the CPU's
# caches): 32 inputs of 600 KB in one reply cost Redis 168-182 us each, in replies of four 133-152
# (``python -m bench.receive``).
READ_ROUND_BYTES = 4 << 20
TENSOR_FIELDS = ("kind", "dtype", "shape", "blob", "values")
# read_jobs.lua's ARGV before the per-key pairs: three byte limits, the tensor field limit, the
# most tensor data the script fetches itself, the metadata field limit, whether KEYS[1] is the
# read's flag
ARGV_HEAD = 7
# A flag left behind by a read that never finished (a lost connection) expires after this.
FLAG_TTL_MS = 60_000
# Verdicts after which the MULTI was aborted: the key, or its jobs, are not read again.
_REFUSED = (b"toobig", b"badfield")
# What read_jobs.lua is told about a tensor: it fetches it itself ("T"), or the caller does ("B").
_BY_SCRIPT, _BY_CALLER = "T", "B"


class ScriptRunner(Protocol):
    """What a read runs on: the worker thread's job connection (``storage.wire.JobConnection``)."""

    def pipeline(
        self, commands: Sequence[Sequence[Any]], routes: Any = None, large: bool = False
    ) -> list[Any]: ...

    def slot(self, key: Any) -> int: ...

    one_slot: bool  # every key shares one slot (a single Redis)


class MetaCache:
    """The model and script metadata this process read last, by key: on a single Redis, a job
    whose model is in it skips that read, and its completion checks, atomically, that the stored
    version is still the one it ran (``complete.lua``'s ``expect``); when it is not, the entry is
    run again. (On Redis Cluster the read fetches metadata every time, in the round trip that
    reads the inputs: a completion split over slots could check a version only in a round trip
    of its own before the reply, ``worker.complete_steps``.) A batching model's metadata is read
    with every job (``_cacheable``). Also how many bytes of data each
    tensor key held when last read: which to fetch plainly (``_Reader._by_caller``)."""

    def __init__(self, size: int = 1024, tensors: int = 16384) -> None:
        self.size = size
        self.tensors = tensors  # tensor sizes kept (an int each: a serving loop's inputs)
        self._replies: dict[tuple[str, str], Any] = {}
        self._bytes: dict[str, int] = {}  # tensor key -> bytes of its data when last read

    def tensor_bytes(self, key: str) -> int | None:
        """Bytes of the key's tensor data when last read (None: not read yet)."""
        return self._bytes.get(key)

    def is_large(self, key: str) -> bool:
        """Whether the key's data was too large to pass through Lua when last read."""
        return self._bytes.get(key, 0) > tensor_io.LUA_VALUE_BYTES

    def large_bytes(self, key: str) -> int:
        """Bytes of the key's tensor data when last read, if it was large; else 0."""
        return self._bytes.get(key, 0) if self.is_large(key) else 0

    def set_bytes(self, key: str, nbytes: int) -> None:
        """What a read found a tensor's data to take."""
        known = self._bytes
        if known.get(key) == nbytes:  # a serving loop's input, as it was
            return
        if len(known) >= self.tensors and key not in known:
            known.clear()
        known[key] = nbytes

    def get(self, what: str, key: str) -> Any:
        return self._replies.get((what, key))

    def put(self, what: str, key: str, reply: Any) -> None:
        if len(self._replies) >= self.size:
            self._replies.clear()  # a worker serves a handful of models: start over
        self._replies[(what, key)] = reply

    def drop(self, key: str) -> None:
        self._replies.pop((MODEL, key), None)
        self._replies.pop((SCRIPT, key), None)


_BATCHSIZE = 1 + model_store.META_FIELDS.index("batchsize")  # in a metadata reply


def _cacheable(what: str, reply: Any) -> bool:
    """Whether metadata may be served from the cache: not a batching model's. A job waits in the
    batcher on its model's batch settings (MINBATCHSIZE without a timeout: until partners come),
    so they must be the stored ones; a completion's version check comes too late for a job that
    never runs."""
    return what == SCRIPT or reply[_BATCHSIZE] in (b"0", b"", None)


def _digest(what: str, reply: Any) -> bytes:
    """The stored digest in a metadata reply (``ok`` + META_FIELDS of a model or a script)."""
    fields = model_store.META_FIELDS if what == MODEL else script_store.META_FIELDS
    return bytes(reply[1 + fields.index("digest")] or b"")


@dataclass
class Snapshot:
    """What a read brought for one job, decoded on first use (each key once)."""

    replies: dict[tuple[str, str], Any]
    limits: Limits
    deferred: bool = False  # its tensors were left for a read of their own
    # (key, digest) of metadata taken from the cache: the completion checks they still hold
    expect: list[tuple[str, bytes]] = field(default_factory=list)
    refused: AIError | None = None  # the job was not read at all (it names too many keys)
    _decoded: dict[str, np.ndarray] = field(default_factory=dict)
    _declared: int = 0  # bytes of the tensors decoded so far, each use counted

    def model(self, key: str) -> model_store.ModelMeta:
        """The model's metadata; RedisAI's errors for a missing key or another kind of key."""
        return model_store.meta_from_reply(self._reply(MODEL, key), key)

    def script(self, key: str) -> script_store.ScriptMeta:
        return script_store.meta_from_reply(self._reply(SCRIPT, key), key)

    def kind(self, key: str) -> tuple[str, str | None]:
        """(Redis type, aiworker kind) of a key a DAG persists to; ("none", None) if missing."""
        reply = self._reply(KIND, key)
        if reply[0] == b"none":
            return "none", None
        return text(reply[1]), text(reply[2]) if reply[2] else None

    def tensor(self, key: str) -> np.ndarray:
        """An input tensor (read-only), sized from its declared shape before it is allocated;
        the same array however many times the job names the key."""
        reply = self._reply(TENSOR, key)
        status = reply[0]
        if status == b"toobig":
            raise _too_big(key, text(reply[1]), int(reply[2]), self.limits)
        array = self._decoded.get(key)
        if array is None:
            array = limits.decode_tensor_reply(key, reply, self.limits.max_tensor_bytes)
            self._decoded[key] = array
        self.hold(limits.nbytes(array))
        return array

    def hold(self, nbytes: int) -> None:
        """Count a tensor the job will hold (an input, a DAG's TENSORSET) against max_job_bytes;
        the job's run counts what it makes (``JobRun.store``)."""
        self._declared += nbytes
        limits.check_job_bytes(self._declared, self.limits.max_job_bytes)

    @property
    def held(self) -> int:
        """Bytes of the tensors counted so far (``hold``)."""
        return self._declared

    def tensors(self, keys: Iterable[str]) -> list[np.ndarray]:
        return [self.tensor(key) for key in keys]

    def _reply(self, what: str, key: str) -> Any:
        if self.refused is not None:
            raise self.refused
        reply = self.replies[(what, key)]
        if what == TENSOR and reply[0] == b"deferred":
            raise RuntimeError("tensor was not read")  # callers check ``deferred`` first
        return reply


def _too_big(key: str, which: str, nbytes: int, bounds: Limits) -> LimitExceeded:
    if which == "job":
        return LimitExceeded(
            f"the job's tensors take {nbytes:,} bytes in Redis, more than this worker's "
            f"max_job_bytes ({bounds.max_job_bytes:,})"
        )
    return LimitExceeded(
        f"tensor '{key}' has {nbytes:,} bytes of data, more than this worker's "
        f"max_tensor_bytes ({bounds.max_tensor_bytes:,})"
    )


def read(
    conn: ScriptRunner,
    requests: Sequence[Request],
    bounds: Limits,
    cache: MetaCache | None,
    keyspace: Keys,
) -> list[Snapshot]:
    """One round trip for the state of every request (in order); one ``Snapshot`` each. Model
    and script metadata found in ``cache`` is not read again on a single Redis (see ``MetaCache``);
    nothing to read: no round trip.
    ``keyspace``: where the read's flag keys go (the worker's prefix)."""
    wanted = [request.state_reads() for request in requests]
    refused = [limits.check_names(request, bounds.max_job_keys) for request in requests]
    cached: dict[Read, Any] = {}
    reads: list[list[Read]] = []  # per job: what is read from Redis (not from the cache)
    for job, pairs in enumerate(wanted):
        mine: list[Read] = []
        for pair in pairs if refused[job] is None else ():
            if cache is not None and pair[0] in (MODEL, SCRIPT) and conn.one_slot:
                hit = cached.get(pair) or cache.get(*pair)
                if hit is not None:
                    cached[pair] = hit
                    continue
            mine.append(pair)
        reads.append(mine)
    sizes = cache or MetaCache()
    deferred: set[int] = set()  # jobs whose state is read again on its own
    found = _one_call(conn, reads, bounds, sizes) if conn.one_slot else None
    if found is None:
        found, deferred = _in_groups(conn, reads, bounds, keyspace, sizes)
    if cache is not None:
        for (what, key), reply in found.items():
            if what in (MODEL, SCRIPT) and reply[0] == b"ok" and _cacheable(what, reply):
                cache.put(what, key, reply)
    snapshots = []
    for job, pairs in enumerate(wanted):
        if refused[job] is not None or job in deferred:
            snapshots.append(Snapshot({}, bounds, job in deferred, refused=refused[job]))
            continue
        got = {p: cached[p] if p in cached else found[p] for p in pairs}
        late = any(reply[0] == b"deferred" for reply in got.values())
        expect = [(p[1], _digest(p[0], cached[p])) for p in dict.fromkeys(pairs) if p in cached]
        snapshots.append(Snapshot(got, bounds, late, expect))
    return snapshots


def _one_call(
    conn: ScriptRunner, reads: Sequence[Sequence[Read]], bounds: Limits, sizes: MetaCache
) -> dict[Read, Any] | None:
    """The usual read, on a single Redis: one script call fetching every tensor itself, because
    none is known to be too large for Lua (``tensor_io.kept_out_of_lua``). None when the read is
    not that (``_in_groups`` does it), or when a tensor turned out large (learnt here: the general
    read then fetches it plainly)."""
    uses = _uses(enumerate(reads))
    if not uses or len(uses) > READ_KEYS_PER_CALL:
        return None if uses else {}
    known = sum(sizes.tensor_bytes(key) or 0 for what, key in uses if what == TENSOR)
    if known > min(tensor_io.LUA_CALL_BYTES, tensor_io.LUA_VALUE_BYTES):
        return None
    keys, args, _plain = _script_arguments(
        uses, bounds, bounds.max_job_bytes, tensor_io.LUA_VALUE_BYTES, set()
    )
    found = dict(zip(uses, lua.run_one(conn, READ_JOBS, keys, args), strict=True))
    return None if _learn_sizes(sizes, found.items()) else found


def _uses(jobs: Iterable[tuple[int, Sequence[Read]]]) -> dict[Read, dict[int, int]]:
    """Each key the jobs read (once, in order), with how many times each job names it."""
    uses: dict[Read, dict[int, int]] = {}
    for job, pairs in jobs:
        for pair in pairs:
            counts = uses.setdefault(pair, {})
            counts[job] = counts.get(job, 0) + 1
    return uses


def _script_arguments(
    uses: dict[Read, dict[int, int]], bounds: Limits, budget: int, inline: int, by_caller: set[str]
) -> tuple[list[str], list[Any], list[int]]:
    """The keys of one read_jobs.lua call, its ARGV (KEYS[1] not the flag), and which of the keys
    the caller fetches (the tensors in ``by_caller``); the script fetches the other tensors, up
    to ``inline`` bytes each."""
    args: list[Any] = [bounds.max_tensor_bytes, bounds.max_job_bytes, budget]
    args += [limits.MAX_META_BYTES, inline, model_store.MAX_METADATA_FIELD_BYTES, 0]
    keys: list[str] = []
    plain: list[int] = []
    for n, ((what, key), counts) in enumerate(uses.items()):
        keys.append(key)
        if what != TENSOR:
            args += [what, ""]
            continue
        fetch = _BY_SCRIPT
        if key in by_caller:
            plain.append(n)
            fetch = _BY_CALLER
        args += [fetch, " ".join([f"{j}:{c}" for j, c in counts.items()])]
    return keys, args, plain


def _learn_sizes(sizes: MetaCache, found: Iterable[tuple[Read, Any]]) -> list[Read]:
    """Note the data size of each tensor a read found; the tensors it found too large to pass
    through the script (to be fetched plainly)."""
    large: list[Read] = []
    for (what, key), reply in found:
        if reply[0] == b"large":
            sizes.set_bytes(key, int(reply[1]))
            large.append((what, key))
        elif what == TENSOR and reply[0] == b"ok":
            sizes.set_bytes(key, _data_bytes(reply))
    return large


def _in_groups(
    conn: ScriptRunner,
    reads: list[list[Read]],
    bounds: Limits,
    keyspace: Keys,
    sizes: MetaCache,
) -> tuple[dict[Read, Any], set[int]]:
    """The general read: groups of at most READ_KEYS_PER_CALL keys, large tensors fetched
    plainly, the read's byte budgets; what it found, and the jobs left for a read of their own."""
    found: dict[Read, Any] = {}
    deferred: set[int] = set()
    budget = bounds.max_job_bytes
    groups = deque(_calls(reads))
    while groups:
        jobs = groups.popleft()
        if budget <= 0:  # an earlier call spent the read's budget
            deferred.update(jobs)
            continue
        reader = _Reader(conn, bounds, budget, keyspace, sizes)
        replies, left, later = reader.read({job: reads[job] for job in jobs})
        found.update(replies)
        deferred |= left
        if later:  # over READ_ROUND_BYTES: the next round trip
            groups.appendleft(later)
        if groups:
            budget -= sum(
                _data_bytes(reply) for (what, _k), reply in replies.items() if what == TENSOR
            )
    return found, deferred


def _calls(reads: Sequence[Sequence[Read]]) -> list[list[int]]:
    """The jobs that read something, grouped (in order) so that each group reads at most
    READ_KEYS_PER_CALL distinct keys; a job reading more than that is a group of its own."""
    if sum(len(pairs) for pairs in reads) <= READ_KEYS_PER_CALL:  # the usual read
        return [[job for job, pairs in enumerate(reads) if pairs]] if any(reads) else []
    groups: list[list[int]] = []
    seen: set[Read] = set()
    for job, pairs in enumerate(reads):
        if not pairs:
            continue
        new = set(pairs) - seen
        if not groups or len(seen) + len(new) > READ_KEYS_PER_CALL:
            groups.append([])
            seen, new = set(), set(pairs)
        groups[-1].append(job)
        seen |= new
    return groups


class _Reader:
    """One group of jobs' reads: each key checked, then fetched, once."""

    def __init__(
        self, conn: ScriptRunner, bounds: Limits, budget: int, keyspace: Keys, sizes: MetaCache
    ) -> None:
        self.conn = conn
        self.bounds = bounds
        self.budget = budget
        self.keyspace = keyspace
        self.sizes = sizes
        self.verdicts: list[Any] = []  # the script's, from the last round trip
        # tensor data one script call fetches itself; once a plain fetch was aborted (a write
        # raced it), every value up to LUA_VALUE_BYTES comes from the script: writes to small
        # inputs cannot make a batch's read fail
        self.call_bytes = tensor_io.LUA_CALL_BYTES

    def read(self, jobs: dict[int, list[Read]]) -> tuple[dict[Read, Any], set[int], list[int]]:
        """Every key the jobs read, with its reply; the jobs whose tensors were left for a read
        of their own (the budget was spent); and the jobs left for the next round trip (their
        large tensors, as last seen, go over READ_ROUND_BYTES), in order."""
        if not self._one_slot(jobs):  # the script fetches every tensor, a call per slot
            return (*self._across_slots(jobs), [])
        found: dict[Read, Any] = {}
        settled: dict[Read, Any] = {}  # refused keys: not read again
        deferred: set[int] = set()
        later: list[int] = []
        active = jobs
        for _ in range(READ_ATTEMPTS):
            active, more = _within(active, self.sizes, READ_ROUND_BYTES)
            later[:0] = more  # they come before those left by an earlier round
            pairs, replies = self._round(active)
            if replies is None:  # the fetch was aborted: read again without what was refused
                self.call_bytes = 1 << 62
                for pair, verdict in zip(pairs, self.verdicts, strict=True):
                    if verdict[0] in _REFUSED:
                        settled[pair] = verdict
                    elif verdict[0] == b"deferred":
                        deferred.update(job for job, mine in active.items() if pair in mine)
                todo = active
            else:
                found.update(zip(pairs, replies, strict=True))
                todo = {}
                for pair in _learn_sizes(self.sizes, zip(pairs, replies, strict=True)):
                    # its whole job again, that tensor fetched plainly
                    todo.update((j, jobs[j]) for j in active if pair in active[j])
                if not todo:
                    return {**found, **settled}, deferred, later
            active = {
                job: [p for p in pairs if p not in settled]
                for job, pairs in todo.items()
                if job not in deferred
            }
        raise AIError("the job's input tensors are being replaced too often to read")

    def _across_slots(self, jobs: dict[int, list[Read]]) -> tuple[dict[Read, Any], set[int]]:
        """A read whose keys span hash slots: ``read_jobs.lua`` once per slot, fetching every
        tensor; the jobs left for a read of their own. One call sees its own slot's tensors
        only, and each had checked them against the whole max_job_bytes: a job with six 40 MB
        inputs in six slots passed a 50 MB limit, 240 MB fetched before it was refused. So the
        limit is shared out: for one job whose tensors' sizes are known (as last read), each
        slot may take its known bytes plus an even share of the rest; a job over its share
        there, a job of unknown sizes, or several jobs in the read, are sized first (a call per
        slot fetching no tensor data) and only jobs within the limits are fetched."""
        slot = self.conn.slot
        tensor_slots = {
            job: {slot(key) for what, key in pairs if what == TENSOR} for job, pairs in jobs.items()
        }
        if all(len(slots) <= 1 for slots in tensor_slots.values()):
            return self._fetched(jobs), set()
        if len(jobs) == 1:
            [pairs] = jobs.values()
            shares = self._shares(pairs)
            if shares is not None:
                found = self._fetched(jobs, shares)
                if not any(found[pair][0] == b"toobig" for pair in pairs if pair[0] == TENSOR):
                    return found, set()
        return self._sized_first(jobs)

    def _shares(self, pairs: list[Read]) -> dict[int, int] | None:
        """Per slot, what one job's tensors there may take: their known bytes plus an even
        share of what the job's limit leaves (the shares sum to max_job_bytes); None when a
        size is not known yet, or the known ones are over the limit already."""
        known = self._bytes_by_slot(pairs, lambda pair: self.sizes.tensor_bytes(pair[1]))
        return None if known is None else _shared_out(known, self.bounds.max_job_bytes)

    def _bytes_by_slot(
        self, pairs: list[Read], size_of: Callable[[Read], int | None]
    ) -> dict[int, int] | None:
        """Bytes of a job's tensors per hash slot, each use counted (``size_of`` a pair's);
        None when a size is not known."""
        by_slot: dict[int, int] = {}
        for pair in pairs:  # a pair per use
            if pair[0] != TENSOR:
                continue
            nbytes = size_of(pair)
            if nbytes is None:
                return None
            slot = self.conn.slot(pair[1])
            by_slot[slot] = by_slot.get(slot, 0) + nbytes
        return by_slot

    def _sized_first(self, jobs: dict[int, list[Read]]) -> tuple[dict[Read, Any], set[int]]:
        """Every slot's tensors sized (nothing fetched), then only the jobs within max_job_bytes
        and the read's budget fetched; the jobs left for a read of their own."""
        uses = _uses(jobs.items())
        keys, args, _plain = _script_arguments(uses, self.bounds, self.budget, 0, set())
        sized = dict(zip(uses, _read_by_slot(self.conn, keys, args), strict=True))
        data = {
            pair: int(reply[1]) if reply[0] == b"large" else _data_bytes(reply)
            for pair, reply in sized.items()
            if pair[0] == TENSOR
        }
        found = {pair: reply for pair, reply in sized.items() if reply[0] != b"large"}
        fetch: dict[int, list[Read]] = {}
        deferred: set[int] = set()
        counted: set[Read] = set()
        spent = 0
        for job, pairs in jobs.items():
            if any(sized[pair][0] == b"deferred" for pair in pairs):
                deferred.add(job)  # the read's budget, in one of its slots
                continue
            if any(found.get(pair, [b""])[0] in _REFUSED for pair in pairs):
                continue  # refused already: nothing of it is fetched
            total = sum(data.get(pair, 0) for pair in pairs)  # a pair per use
            if total > self.bounds.max_job_bytes:
                for pair in pairs:
                    if pair in data and found.get(pair, [b""])[0] not in _REFUSED:
                        found[pair] = [b"toobig", b"job", total]
                continue
            new = {pair for pair in pairs if pair in data} - counted
            cost = sum(data[pair] for pair in new)
            if fetch and spent + cost > self.budget:
                deferred.add(job)
                continue
            fetch[job], spent, counted = pairs, spent + cost, counted | new
        if len(fetch) == 1:  # its limit shared out by what was just found
            [pairs] = fetch.values()
            by_slot = self._bytes_by_slot(pairs, data.get) or {}
            found.update(self._fetched(fetch, _shared_out(by_slot, self.bounds.max_job_bytes)))
        elif fetch:
            found.update(self._fetched(fetch))
        return found, deferred

    def _fetched(
        self, jobs: dict[int, list[Read]], shares: dict[int, int] | None = None
    ) -> dict[Read, Any]:
        """``read_jobs.lua`` once per slot, every tensor fetched (``shares``: per slot, the
        most a job's tensors there may take); the sizes found are remembered."""
        pairs, keys, args, _plain = self._arguments(jobs, fetch_all=True)
        found = dict(zip(pairs, _read_by_slot(self.conn, keys, args, shares), strict=True))
        _learn_sizes(self.sizes, found.items())
        return found

    def _one_slot(self, jobs: dict[int, list[Read]]) -> bool:
        """Whether every key the jobs read, and the read's flag keys, share one hash slot (as on
        a single Redis, always): the guarded read's WATCH and MULTI cannot span slots."""
        if self.conn.one_slot:
            return True
        slot = self.conn.slot
        first, *flags = [slot(key) for key in self.keyspace.read_flags(_token())]
        return all(found == first for found in flags) and all(
            slot(key) == first for pairs in jobs.values() for _what, key in pairs
        )

    def _arguments(
        self, jobs: dict[int, list[Read]], fetch_all: bool = False
    ) -> tuple[list[Read], list[str], list[Any], list[int]]:
        """What to read (each once), its keys, read_jobs.lua's ARGV (KEYS[1] not the flag:
        ``_round`` changes that), and which of them the caller fetches: tensors known to be
        over ``tensor_io.LUA_VALUE_BYTES``, and those beyond ``LUA_CALL_BYTES`` (smallest first);
        the script fetches the rest, one it does not know the size of up to LUA_VALUE_BYTES.
        ``fetch_all``: the script fetches every tensor (a read spread over hash slots)."""
        uses = _uses(jobs.items())
        by_caller = set() if fetch_all else self._by_caller(uses)
        inline = 1 << 62 if fetch_all else tensor_io.LUA_VALUE_BYTES
        keys, args, plain = _script_arguments(uses, self.bounds, self.budget, inline, by_caller)
        return list(uses), keys, args, plain

    def _by_caller(self, reads: Iterable[Read]) -> set[str]:
        """The tensor keys the caller fetches (``tensor_io.kept_out_of_lua`` of those whose size
        is known, within ``call_bytes``): a batch's inputs through Lua would cost Redis more than
        the plain fetch's commands do."""
        sizes = self.sizes
        known = [
            (nbytes, key)
            for what, key in reads
            if what == TENSOR and (nbytes := sizes.tensor_bytes(key)) is not None
        ]
        return set(tensor_io.kept_out_of_lua(known, self.call_bytes))

    def _round(self, jobs: dict[int, list[Read]]) -> tuple[list[Read], list[Any] | None]:
        """One round trip: the script's verdicts, with the small tensors it fetched and the
        large ones fetched by plain HMGETs if it cleared them (see the module docstring). The
        replies in ``pairs``' order; None when the fetch was aborted (``self.verdicts`` says
        why)."""
        pairs, keys, args, plain = self._arguments(jobs)
        if not plain:  # the script alone
            self.verdicts = lua.run_one(self.conn, READ_JOBS, keys, args)
            return pairs, self.verdicts
        args[ARGV_HEAD - 1] = 1  # KEYS[1] is the flag
        flag, guard = self.keyspace.read_flags(_token())
        commands: list[tuple[Any, ...]] = [
            ("SET", flag, 1, "PX", FLAG_TTL_MS),
            ("WATCH", guard, *(keys[n] for n in plain)),
            ("EVALSHA", READ_JOBS.sha, len(keys) + 1, flag, *keys, *args),
            ("COPY", flag, guard, "REPLACE"),  # 0, writing nothing, if the script cleared it
            ("MULTI",),
            *(("HMGET", keys[n], *TENSOR_FIELDS) for n in plain),
            ("EXEC",),
        ]
        routes = [keys[0]] * len(commands)  # one slot (``_one_slot``): its master runs them all
        # received in place only when a value is that large: hiredis parses the rest faster
        large = any(self.sizes.large_bytes(keys[n]) >= bulk_read.LARGE_BULK for n in plain)
        replies = self.conn.pipeline(commands, routes, large=large)
        if isinstance(replies[2], redis.exceptions.NoScriptError):
            # the flag was copied, nothing fetched: load the script, send it all again
            self.conn.pipeline([("SCRIPT", "LOAD", READ_JOBS.source)], routes[:1])
            replies = self.conn.pipeline(commands, routes, large=large)
        for reply in replies[1:3]:  # e.g. the ACL denies a key: WATCH and the script say so
            if isinstance(reply, Exception):
                raise reply
        self.verdicts = list(replies[2])
        fetched = replies[-1]
        if fetched is None:
            return pairs, None
        if isinstance(fetched, Exception):
            raise fetched
        out = list(self.verdicts)
        for n, fields in zip(plain, fetched, strict=True):
            if out[n][0] == b"ok":  # fetched for keys the script cleared only (no error then)
                out[n] = [b"ok", *fields]
        return pairs, out


def _within(
    jobs: dict[int, list[Read]], sizes: MetaCache, most: int
) -> tuple[dict[int, list[Read]], list[int]]:
    """The first jobs (at least one) whose large tensors, as last seen, take at most ``most``
    bytes, each key counted once; and the jobs after them."""
    now: dict[int, list[Read]] = {}
    seen: set[str] = set()
    total = 0
    for job, pairs in jobs.items():
        new = {key for what, key in pairs if what == TENSOR and sizes.is_large(key)} - seen
        total += sum(sizes.large_bytes(key) for key in new)
        if now and total > most:
            return now, [j for j in jobs if j not in now]
        now[job] = pairs
        seen |= new
    return now, []


def _data_bytes(reply: Any) -> int:
    """Bytes of tensor data a tensor's read reply carries (``ok``: kind, dtype, shape, blob,
    values)."""
    if reply[0] != b"ok" or len(reply) != 6:
        return 0
    blob, values = reply[4], reply[5]
    return (0 if blob is None else len(blob)) + (0 if values is None else len(values))


_local = threading.local()


def _token() -> str:
    """This thread's name for its read flags: one read at a time per thread, and no two threads
    of any worker share it."""
    token: str | None = getattr(_local, "token", None)
    if token is None:
        token = _local.token = uuid.uuid4().hex
    return token


def _shared_out(known: dict[int, int], limit: int) -> dict[int, int] | None:
    """Per slot, a job's known bytes there plus an even share of what ``limit`` leaves (the
    shares sum to ``limit``); None when the known bytes are over it already or there are none."""
    total = sum(known.values())
    if not known or total > limit:
        return None
    spare = (limit - total) // len(known)
    return {slot: nbytes + spare for slot, nbytes in known.items()}


def _read_by_slot(
    conn: ScriptRunner, keys: list[str], args: list[Any], shares: dict[int, int] | None = None
) -> list[Any]:
    """``read_jobs.lua`` once per hash slot of ``keys``; the replies in ``keys``' order.
    ``shares``: per slot, the job limit (ARGV[2]) of that slot's call."""
    groups = by_slot(keys, conn.slot)
    head = args[:ARGV_HEAD]

    def head_of(group: list[int]) -> list[Any]:
        share = None if shares is None else shares.get(conn.slot(keys[group[0]]))
        return head if share is None else [head[0], share, *head[2:]]

    calls = [
        lua.Call(
            READ_JOBS,
            [keys[n] for n in group],
            head_of(group)
            + [a for n in group for a in args[ARGV_HEAD + 2 * n : ARGV_HEAD + 2 + 2 * n]],
        )
        for group in groups
    ]
    replies: list[Any] = [None] * len(keys)
    for group, reply in zip(groups, lua.run(conn, calls), strict=True):
        if isinstance(reply, Exception):
            raise reply
        for n, one in zip(group, reply, strict=True):
            replies[n] = one
    return replies
