"""A device lane: one device's work inside a worker process, as a pipeline whose stages overlap.

    read entries + their inputs ──▶ batcher ──▶ run on the device ──▶ complete (outputs, reply)
    (consume, execution.state)      (batching)   (THREADS_PER_QUEUE     (complete)
                                                  runs in flight)

THREADS_PER_QUEUE keeps RedisAI's meaning: how many runs a device has in flight at once (a
*slot* each, like Triton's instance count). The lane has more threads than slots, and every
thread does whatever is most urgent, in this order:

1. a batch ready in the batcher while a slot is free: run it (a single job is a batch of one);
   or, for requests waiting for batch partners, a read of their model's stored version
   (``Batcher.to_check``: a new version or a MODELDEL sends them no partners);
2. local work (entries reclaimed from a dead worker, a job whose inputs did not fit its read);
3. read: new entries and, in one more round trip, everything they need (``state.read``), while
   the lane holds fewer units than ``2 x slots`` (one running and one ready per slot; while its
   models all run short and none batches, ``CHAIN_MAX x slots``: what its threads chain).

A thread that finished a run gives its slot back *before* it completes the job, so another thread
starts the next unit on the device while the first writes the outputs and the reply; and the next
job's inputs are read while the current one runs. A worker with requests waiting is therefore never
idle, and in the simple case (one request at a time) one thread reads, runs and completes a job
with no hand-off at all. Under load, a thread whose run was short (below CHAIN_RUN_S) runs the next
short single units that are ready before completing (up to CHAIN_MAX), and completes all their jobs
in one call: one round trip and one Lua call for several trivial jobs.

Every job is a ``JobRun`` (``execution.job``): its model and script ops are ``Member`` units in the
lane of their device (lanes for devices this process does not read are made on first use, with run
threads only). A unit that finishes hands its job the result, and the job's next ops go to their
lanes; no thread waits for a job, so a DAG op waiting for its batch partners pins nothing and is
not "running" for the hung-job watchdog.

Reading ahead for a batching model is bounded by what this worker can start soon: up to the room
left in the batch that is forming, and, when other live workers serve the same queue, no more than
this worker's share of what is queued at each read (XINFO GROUPS' lag divided by the live
workers), so the others get their turn (one whose peers wait for a core can still take most of a
queue, a share of the rest at a time). What may wait in the batcher is capped
(``max_batch_waiting``, ``max_batch_waiting_bytes``): beyond it, the oldest group runs as it is.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from aiworker.execution import limits, state
from aiworker.execution.batching import Batch, Batcher, Member, MemberResult, run_batch
from aiworker.execution.executor import Executor, Run
from aiworker.execution.outcome import Outcome, error_text
from aiworker.parser.entry import decode_entry
from aiworker.protocol.entries import reply_format_of, reply_key_of
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import Job
from aiworker.protocol.slots import check_slot
from aiworker.storage.wire import JobConnection, JobConnections
from aiworker.worker.complete import Completer, Finished
from aiworker.worker.consume import Consumer, Entry, share_of
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import WorkerMetrics
from aiworker.worker.running import RunningJobs

log = logging.getLogger("aiworker.worker")
Task = Callable[[JobConnection], None]
# Longest a thread sleeps before looking again at a batcher that holds requests.
BATCH_POLL_SECONDS = 0.05
# How long a thread with nothing to do waits before looking again (a stop, a deadline).
IDLE_POLL_SECONDS = 0.5
# A run at least this long (its model's last run) has another thread read the next jobs meanwhile;
# below it, waking a thread costs more than it saves (the interpreter lock changes hands twice).
READ_MEANWHILE_S = 0.002
# Longest a partial batch waits for the requests of a batch just answered (Lane._completed).
MAX_HOLD_S = 0.05
# Runs shorter than this chain (Lane._chained): at most CHAIN_MAX of them, then one completion.
CHAIN_RUN_S = 0.001
CHAIN_MAX = 8


class Left:
    """``Lane._prepare``'s word for a job left pending: its state is on a lost node."""


LEFT = Left()


@dataclass(eq=False)
class Ticket:
    """What completing a job needs besides its outcome: where its entry came from."""

    lane: Lane  # the lane that read it (its in-flight count)
    fields: Mapping[Any, Any]
    started: float  # when this worker took it (Redis's time: ``Executor.clock``)
    queue: str  # the stream it was read from
    expect: list[tuple[str, bytes]] = field(default_factory=list)
    abandoned: bool = False  # let go (Redis lost mid-run): never completed here


@dataclass(frozen=True)
class LaneOptions:
    slots: int  # THREADS_PER_QUEUE: runs in flight
    threads: int  # threads (slots plus those that read and complete meanwhile)
    block_ms: int
    max_waiting: int = 0
    max_waiting_bytes: int = 0


class Lane:
    """The work of one device in one worker process (see the module docstring)."""

    def __init__(
        self,
        device: str,
        keys: Keys,
        executor: Executor,
        completer: Completer,
        wires: JobConnections,
        held: HeldEntries,
        metrics: WorkerMetrics,
        options: LaneOptions,
        stop: threading.Event,
        streams: Sequence[str] = (),
        cluster: bool = False,
        worker_name: str = "",
    ) -> None:
        self.device = device
        self.keys = keys
        self.queue = keys.queue(device)
        self.queues = list(streams)  # read by this process (none: an execution-only lane)
        self.executor = executor
        self.completer = completer
        self.wires = wires
        self.held = held
        self.metrics = metrics
        self.options = options
        self.stop = stop
        self.cluster = cluster
        self.worker_name = worker_name
        self.lanes: Callable[[str], Lane] = lambda device: self
        self.peers: Callable[[], int] = lambda: 1  # live workers serving this queue
        self.on_lost: Callable[[], None] = lambda: None  # its stream vanished (a flush)
        self.running = RunningJobs()
        # the lane's state is guarded by ``_lock``; ``_cond`` (on the same lock) is for waiting.
        # ``with self._lock`` rather than ``with self._cond``: Condition's __enter__/__exit__ are
        # Python calls, eight a job
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._batcher = Batcher(options.max_waiting, options.max_waiting_bytes)
        self._free = options.slots
        self._tasks: deque[Task] = deque()
        self._reading: set[str] = set()  # streams a thread reads now (one reader each)
        self._shut_out = 0  # threads waiting while their own streams are read by another
        self._inflight = 0  # jobs read by this lane and not completed yet
        self._threads: list[threading.Thread] = []
        self._idents: set[int] = set()
        self._run_s: dict[str, float] = {}  # model or script key -> its last run (seconds)
        self._batching: set[str] = set()  # the models of those that batch
        self.consumers: list[str] = []

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        count = self.options.threads if self.queues else self.options.slots
        for n in range(count):
            name = f"{self.worker_name}:{self.device}:{n}"
            consumer = None
            if self.queues:
                self.consumers.append(name)
                streams = share_of(self.queues, count, n)
                consumer = Consumer(name, streams, self.held, self.metrics, self.stop, self._lost)
            thread = threading.Thread(
                target=self._serve,
                args=(consumer,),
                name=f"aiworker-{self.device}-{n}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    def wake(self) -> None:
        with self._lock:
            self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing left in hand (a graceful stop ends when every lane is idle)."""
        with self._lock:
            return self._idle()

    def _idle(self) -> bool:
        return (
            not self._tasks
            and not self._batcher
            and self._free == self.options.slots
            and self._inflight == 0
        )

    def accept(self, entries: Sequence[Entry], queue: str | None = None) -> None:
        """Entries this process took from ``queue`` outside the lane's reads (reclaimed from a
        dead consumer): a lane thread runs them."""
        self._later(entries, queue or self.queue)

    def waiting_entry_ids(self) -> list[str]:
        """Entries whose jobs were read and prepared, waiting for the device (or partners)."""
        with self._lock:
            return self._batcher.held_entry_ids()

    def held_entry_ids(self) -> list[str]:
        with self._lock:
            ids = self._batcher.held_entry_ids() + self.running.entry_ids()
        return list(dict.fromkeys(ids))

    def running_since(self) -> list[tuple[list[str], float]]:
        """(entry ids, monotonic start) of every run on the device now (for the watchdog)."""
        return self.running.since()

    # what a thread does ------------------------------------------------------------------------

    def _serve(self, consumer: Consumer | None) -> None:
        self._idents.add(threading.get_ident())
        conn = self.wires.get()
        while True:
            work = self._next(consumer)
            if work is None:
                return
            try:
                work(conn)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.metrics.redis_errors.labels("job").inc()
                log.warning("%s: lost Redis while working (%s); entries will be reclaimed",
                            self.queue, exc)  # fmt: skip
                self.stop.wait(1.0)
            except Exception:
                log.exception("%s: work failed", self.queue)
                self.stop.wait(0.1)

    def _next(self, consumer: Consumer | None) -> Task | None:
        """The most urgent work (see the module docstring), waiting for some; None: stop."""
        with self._lock:
            while True:
                now = time.monotonic()
                if self._batcher:
                    expired = self._batcher.expired(now)
                    if expired:
                        return lambda conn: self._expired(conn, expired)
                    if self._free > 0:
                        force = self.stop.is_set()
                        batch = self._batcher.take(now, force=force)
                        if batch is not None:
                            self._free -= 1
                            return lambda conn: self._run(conn, batch)
                    unknown = self._batcher.to_check(now)
                    if unknown:
                        return lambda conn: self._check_versions(conn, unknown)
                if self._tasks:
                    return self._tasks.popleft()
                if consumer is not None and self._may_read(consumer):
                    sweep = self._sweep(consumer)
                    self._reading.update(sweep)
                    return lambda conn: self._read(conn, consumer, sweep)
                if self.stop.is_set() and self._idle():
                    self._cond.notify_all()
                    return None
                # a thread whose partition another one sweeps is woken when the sweep is over
                shut_out = (
                    consumer is not None
                    and len(self.queues) > 1
                    and not self._reading.isdisjoint(consumer.streams)
                )
                self._shut_out += shut_out
                self._cond.wait(self._wait_s(now))
                self._shut_out -= shut_out

    def _may_read(self, consumer: Consumer) -> bool:
        """Read only what can start soon: one unit ready per slot beyond those running (a batch
        still forming takes more until it is full); and one reader per stream at a time."""
        if self.stop.is_set() or not self._reading.isdisjoint(consumer.streams):
            return False
        if self._batcher.overfull():
            return False
        return self._free > 0 or self._batcher.full_units() < self.options.slots

    def _wait_s(self, now: float) -> float:
        if not self._batcher:
            return IDLE_POLL_SECONDS
        wakeup = self._batcher.next_wakeup()
        wait = BATCH_POLL_SECONDS if wakeup is None else wakeup - now
        return max(0.001, min(wait, BATCH_POLL_SECONDS))

    def _room(self) -> int:
        """How many units reading may add now (lock held): one running and one ready per slot;
        while every model of the lane runs shorter than CHAIN_RUN_S and none batches, as many as
        a slot chains (``_chained``: one read and one completion then serve several trivial
        jobs)."""
        runs = self._run_s.values()
        short = runs and max(runs) < CHAIN_RUN_S and not self._batching
        ahead = CHAIN_MAX if short else 2
        busy = self.options.slots - self._free
        return max(1, ahead * self.options.slots - busy - len(self._batcher))

    # reading -------------------------------------------------------------------------------

    def _sweep(self, consumer: Consumer) -> list[str]:
        """The streams a read by ``consumer`` covers (lock held): its own, and with queue
        partitions every other one that no thread reads now (``Consumer.sweep``)."""
        if len(self.queues) == 1:
            return consumer.streams
        mine = set(consumer.streams)
        return [s for s in self.queues if s in mine or s not in self._reading]

    def _read(self, conn: JobConnection, consumer: Consumer, sweep: list[str]) -> None:
        reading = sweep
        try:
            with self._lock:
                count, block_ms = self._room(), self._block_ms()
            found = consumer.sweep(conn, count, sweep) if len(sweep) > 1 else []
            if not found and not self.stop.is_set():
                if len(sweep) > len(consumer.streams):  # others' streams: let them go first
                    reading = consumer.streams
                    self._stop_reading([s for s in sweep if s not in reading])
                stream, entries = consumer.next(conn, count, block_ms, swept=len(sweep) > 1)
                found = [(stream, entries)] if entries else []
            while found:
                batching = self.process(conn, found)
                room = self._batch_room(batching)
                if room <= 0 or self.stop.is_set():
                    break
                stream = found[0][0]
                room = self._share(conn, consumer, stream, room)
                entries = consumer.read(conn, room, None, stream) if room > 0 else []
                found = [(stream, entries)] if entries else []
        finally:
            self._stop_reading(reading)

    def _stop_reading(self, streams: Sequence[str]) -> None:
        with self._lock:
            self._reading.difference_update(streams)
            if self._shut_out:
                self._cond.notify_all()  # a thread waits to read one of them
            elif self._free > 1 and len(self._batcher) > 1:
                self._cond.notify()  # more than this thread can start at once

    def _block_ms(self) -> int:
        """How long a read may block (lock held): shorter while the batcher holds requests, whose
        MINBATCHTIMEOUT or TIMEOUT must not wait for the next entry to arrive."""
        if not self._batcher:
            return self.options.block_ms
        return max(1, min(self.options.block_ms, int(self._wait_s(time.monotonic()) * 1000)))

    def _batch_room(self, models: set[str]) -> int:
        """Room left in the forming batches of the batching models just read (0: none), within
        what the batcher may hold."""
        if not models:
            return 0
        with self._lock:
            room = 0
            for key in models:
                batchsize = self._batcher.batchsize(key)
                if batchsize:
                    room = max(room, batchsize - self._batcher.waiting(key))
            return min(room, self._batcher.room())

    def _share(self, conn: JobConnection, consumer: Consumer, stream: str, room: int) -> int:
        """At most this worker's share of what is queued, when other workers serve the queue."""
        peers = self.peers()
        if peers <= 1:
            return room
        lag = consumer.lag(conn, stream)
        if lag is None:
            return min(room, 1)
        return min(room, math.ceil(lag / peers))

    def process(
        self, conn: JobConnection, found: Sequence[tuple[str, Sequence[Entry]]]
    ) -> set[str]:
        """Decode entries taken from their streams (``found``: (stream, entries)), read what
        their jobs need in one round trip, and start them (or answer them: malformed, timed out,
        forwarded). Returns the keys of the batching models they went to."""
        kept: set[tuple[str, str]] = set()
        try:
            return self._process(conn, found, kept)
        except BaseException:
            # not started: the entries are let go (their leases lapse and they are reclaimed)
            for queue, entries in found:
                ids = [eid for eid, _ in entries if (queue, eid) not in kept]
                self.held.discard_all(queue, ids)
            raise

    def _process(
        self,
        conn: JobConnection,
        found: Sequence[tuple[str, Sequence[Entry]]],
        kept: set[tuple[str, str]],
    ) -> set[str]:
        # Redis's time, as the entries' ids: that of each stream's node (Redis Cluster)
        taken = {queue: self.executor.clock(queue) for queue, _ in found}
        answered: list[Finished] = []
        jobs: list[tuple[Job, Ticket]] = []
        for queue, entry_id, fields in _each(found):
            started = taken[queue]
            try:
                limits.check_entry(fields)
                job = decode_entry(entry_id, fields, self.keys)
                if self.cluster:
                    check_slot(job.request, job.reply)
            except Exception as exc:  # any malformed entry: its requester is told, alone
                error = str(exc) if isinstance(exc, AIError) else f"malformed job entry: {exc!r}"
                outcome = Outcome.failed(error)
                reply, fmt = reply_key_of(fields, self.keys), reply_format_of(fields)
                answered.append(Finished(entry_id, outcome, None, reply, fmt, started, queue=queue))
                continue
            ticket = Ticket(self, fields, started, queue)
            if job.deadline_ms is not None and started * 1000 > job.deadline_ms:
                answered.append(self._finished(job, ticket, Outcome("timedout")))
            else:
                jobs.append((job, ticket))
        runs: list[Run] = []
        for (job, ticket), prepared in zip(jobs, self._prepare(conn, jobs), strict=True):
            if isinstance(prepared, Left):
                log.warning("%s: job %s left pending: a node its state is on is unreachable",
                            ticket.queue, job.entry_id)  # fmt: skip
                self.held.discard(ticket.queue, job.entry_id)  # reclaimed after its lease
                continue
            if prepared is None:  # its tensors did not fit this read: read them on their own
                self._later([(job.entry_id, ticket.fields)], ticket.queue)
                kept.add((ticket.queue, job.entry_id))
            elif isinstance(prepared, Outcome):
                answered.append(self._finished(job, ticket, prepared))
            else:
                prepared.ticket = ticket
                runs.append(prepared)
                kept.add((ticket.queue, job.entry_id))
        if answered:
            self._complete(conn, answered)
        with self._lock:
            self._inflight += len(runs)
        batching: set[str] = set()
        for run in runs:
            members = self._start(conn, run)
            batching.update(m.model_key for m in members if m.batching)
        return batching

    def _prepare(
        self, conn: JobConnection, jobs: Sequence[tuple[Job, Ticket]]
    ) -> list[Run | Outcome | Left | None]:
        """Read every job's state in one round trip and prepare it (None: read it again alone;
        ``LEFT``: left pending, its state on a lost node; see ``_around``)."""
        if not jobs:
            return []
        if conn.degraded and any(cut_off := _cut_off(conn, jobs)):
            return self._around(conn, jobs, cut_off)  # no round trip to a master known lost
        requests = [job.request for job, _ in jobs]
        executor = self.executor
        try:
            snapshots = state.read(conn, requests, executor.limits, executor.metas, executor.keys)
        except (redis.ConnectionError, redis.TimeoutError):
            cut_off = _cut_off(conn, jobs)
            if all(cut_off) or not any(cut_off):
                raise  # the entries stay pending and run again
            return self._around(conn, jobs, cut_off)
        except Exception as exc:  # e.g. the worker's ACL denies one key: each job on its own
            if len(jobs) > 1:
                return [self._prepare(conn, [one])[0] for one in jobs]
            return [Outcome.failed(failure_text(exc))]
        prepared: list[Run | Outcome | Left | None] = []
        for (job, ticket), snapshot in zip(jobs, snapshots, strict=True):
            if snapshot.deferred:  # alone, a job always fits its own read
                prepared.append(None)
                continue
            try:
                ticket.expect = snapshot.expect
                prepared.append(executor.prepare(job, snapshot, self.device, ticket.queue))
            except Exception as exc:  # a bug: this job's error, not its neighbours'
                log.exception("%s: preparing %s failed", self.queue, job.entry_id)
                prepared.append(Outcome.failed(failure_text(exc)))
        return prepared

    def _around(
        self, conn: JobConnection, jobs: Sequence[tuple[Job, Ticket]], cut_off: list[bool]
    ) -> list[Run | Outcome | Left | None]:
        """``_prepare``'s answer with the jobs a lost master holds the state of (``cut_off``)
        left pending (``LEFT``): a master lost for good (no replica) must not hold back the
        jobs read with them (their reclaims would bring them back together, and dead-letter
        them together)."""
        others = iter(
            self._prepare(conn, [j for j, cut in zip(jobs, cut_off, strict=True) if not cut])
        )
        return [LEFT if cut else next(others) for cut in cut_off]

    def _later(self, entries: Sequence[Entry], queue: str) -> None:
        def task(conn: JobConnection) -> None:
            self.process(conn, [(queue, entries)])

        with self._lock:
            self._tasks.append(task)
            self._cond.notify()

    # running -----------------------------------------------------------------------------------

    def _start(self, conn: JobConnection, run: Run) -> list[Member]:
        """Start a job's run: its first units go to their lanes (or it ends at once)."""
        try:
            members = run.start()
        except Exception as exc:  # a bug: this job's error
            log.exception("%s: starting %s failed", self.queue, run.entry_id)
            run.failed_early = failure_text(exc)
            members = []
        self._submit(members)
        if run.finished:
            self._complete_runs(conn, [run])
        return members

    def _submit(self, members: Sequence[Member]) -> None:
        """Units to their device's lane."""
        for member in members:
            _run, op = member.context
            device = op.device if op is not None else self.device
            lane = self if device == self.device else self.lanes(device)
            lane.put(member)

    def put(self, member: Member) -> None:
        with self._lock:
            self._batcher.add(member)
            # A lane thread that put it takes it itself once it is done reading (after filling
            # a batch with what else is queued): a unit from elsewhere wakes a thread.
            if threading.get_ident() not in self._idents:
                self._cond.notify()

    def _run(self, conn: JobConnection, batch: Batch) -> None:
        """Run one batch on the device, give the slot back, then complete its members' jobs.
        After a short run, more short runs that are ready go first (``_chained``), and the jobs
        of all of them complete together: one completion round trip instead of one each."""
        ran: list[Batch] = []
        done: list[Run] = []
        try:
            unit: Batch | None = batch
            while unit is not None:
                ran.append(unit)
                done += self._run_one(unit, done)
                unit = self._chained(unit, len(ran))
            if done:
                self._complete_runs(conn, done)
        finally:
            for each in ran:
                self._completed(each)

    def _run_one(self, batch: Batch, earlier: list[Run]) -> list[Run]:
        """Run ``batch`` and hand each member's job its result; the jobs it finished (``earlier``:
        those of the chained runs before it, let go with it when Redis is lost)."""
        ids = [m.entry_id for m in batch.members if m.entry_id]
        for member in batch.members:
            ticket: Ticket | None = member.context[0].ticket
            if ticket is not None and self.held.running(ticket.queue, member.context[0].entry_id):
                self.completer.started(ticket.queue, member.context[0].job, ticket.started)
        self._reader_meanwhile(batch)
        started = time.perf_counter()
        try:
            with self.running.track(ids):
                results = run_batch(self.executor.models, batch)
        except BaseException as exc:
            results = [MemberResult(None, failure_text(exc), counted=False)] * len(batch.members)
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                self._release(batch)
                self._let_go([member.context[0] for member in batch.members] + earlier)
                raise
        self._run_s[batch.members[0].model_key] = time.perf_counter() - started
        if batch.members[0].batching:
            self._batching.add(batch.members[0].model_key)
        self._release(batch)
        follow: list[Member] = []
        done: list[Run] = []
        for member, result in zip(batch.members, results, strict=True):
            run, op = member.context
            follow += run.op_done(op, result, member, batch)
            if run.finished and run not in done:
                done.append(run)
        self._submit(follow)
        return done

    def _chained(self, last: Batch, count: int) -> Batch | None:
        """The next single unit to run before completing what ran (``_run``): only after a run
        shorter than CHAIN_RUN_S, when the next unit's model ran that short too, a slot is free
        and no unit waiting has a TIMEOUT of its own; CHAIN_MAX runs at most (a job's reply
        waits for the runs chained after it)."""

        def short(key: str) -> bool:
            return self._run_s.get(key, 1.0) < CHAIN_RUN_S

        if count >= CHAIN_MAX or not short(last.members[0].model_key):
            return None
        with self._lock:
            if self._free <= 0 or self.stop.is_set():
                return None
            single = self._batcher.take_single(short)
            if single is not None:
                self._free -= 1
            return single

    def _reader_meanwhile(self, batch: Batch) -> None:
        """Wake a thread to read the next jobs while this run takes the device, when nobody
        reads now and the run is long enough for that to pay (its model's last run took
        READ_MEANWHILE_S or more; a trivial job is read, run and completed by one thread)."""
        if not self.queues or self._run_s.get(batch.members[0].model_key, 1.0) < READ_MEANWHILE_S:
            return
        with self._lock:
            if not self._reading:
                self._cond.notify()

    def _release(self, batch: Batch) -> None:
        """The run is over: its slot is free (a full batch may start at once)."""
        with self._lock:
            self._free += 1
            if self._batcher or self._tasks:
                self._cond.notify()

    def _completed(self, batch: Batch) -> None:
        """The batch's jobs are answered: its model may start another *partial* batch, after
        its requesters' next requests or its last run's time at most (``Batcher.finished``).
        A full batch never waits."""
        if not batch.members[0].batching:
            return
        hold_s = min(self._run_s.get(batch.model[0], 0.0), MAX_HOLD_S) if self.queues else 0.0
        with self._lock:
            self._batcher.finished(batch, time.monotonic(), hold_s)
            if self._batcher:
                self._cond.notify()

    def _let_go(self, runs: Sequence[Run]) -> None:
        """Redis was lost mid-run: the entries are let go, to be reclaimed and run again."""
        for run in runs:
            ticket: Ticket | None = run.ticket
            if ticket is not None and not ticket.abandoned:
                ticket.abandoned = True
                self.held.discard(ticket.queue, run.entry_id)
                ticket.lane._done(1)

    def _check_versions(self, conn: JobConnection, keys: list[str]) -> None:
        """Read the stored version of models whose requests wait for partners (``to_check``);
        those of a replaced or deleted version then run."""
        replies = conn.pipeline([("HGET", key, "digest") for key in keys])
        with self._lock:
            for key, digest in zip(keys, replies, strict=True):
                if isinstance(digest, Exception) and not str(digest).startswith("WRONGTYPE"):
                    continue  # BUSY, LOADING...: asked again later
                # nil or WRONGTYPE: no model is stored there any more
                stored = digest.decode() if isinstance(digest, bytes) else ""
                self._batcher.stored(key, stored)
            self._cond.notify()

    def _expired(self, conn: JobConnection, members: list[Member]) -> None:
        done: list[Run] = []
        for member in members:
            run, op = member.context
            run.op_expired(op)
            if run.finished and run not in done:
                done.append(run)
        if done:
            self._complete_runs(conn, done)

    # completing ----------------------------------------------------------------------------

    def _finished(self, job: Job, ticket: Ticket, outcome: Outcome) -> Finished:
        return Finished(
            job.entry_id,
            outcome,
            job,
            job.reply,
            job.fmt,
            ticket.started,
            ticket.fields,
            [],
            ticket.expect,
            ticket.queue,
        )

    def _complete_runs(self, conn: JobConnection, runs: Sequence[Run]) -> None:
        """Complete finished jobs (whichever lane read them), grouped by the lane that did."""
        by_lane: dict[Lane, list[Finished]] = {}
        for run in runs:
            ticket: Ticket = run.ticket
            if ticket.abandoned:
                continue
            early = getattr(run, "failed_early", "")
            outcome = Outcome.failed(early) if early else run.outcome()
            by_lane.setdefault(ticket.lane, []).append(self._finished(run.job, ticket, outcome))
        for lane, finished in by_lane.items():
            try:
                lane._complete(conn, finished)
            finally:
                lane._done(len(finished))

    def _done(self, count: int) -> None:
        with self._lock:
            self._inflight -= count
            if self.stop.is_set():
                self._cond.notify_all()

    def _complete(self, conn: JobConnection, finished: Sequence[Finished]) -> None:
        """Complete entries, each on the stream it came from (all in one round trip per node)."""
        if conn.degraded and any(cut_off := _cut_off_writes(conn, finished)):
            self._complete_around(conn, finished, cut_off)
            return
        try:
            results = self.completer.complete(conn, self.queue, finished)
        except (redis.ConnectionError, redis.TimeoutError):
            cut_off = _cut_off_writes(conn, finished)
            if all(cut_off) or not any(cut_off):
                raise  # not applied: the entries stay pending and run again
            self._complete_around(conn, finished, cut_off)
            return
        except redis.RedisError:
            log.exception("%s: completing %s failed", self.queue, [f.entry_id for f in finished])
            return
        for item, result in zip(finished, results, strict=True):
            if result.refused == "STALE":
                # its model was stored anew while it ran: run it again
                self.executor.metas.drop(result.key)
                self._later([(item.entry_id, item.fields)], item.queue or self.queue)

    def _complete_around(
        self, conn: JobConnection, finished: Sequence[Finished], cut_off: list[bool]
    ) -> None:
        """As ``_around``, for completions: those that write to a lost master are left pending
        (their leases lapse), the others completed."""
        for item, cut in zip(finished, cut_off, strict=True):
            if cut:
                log.warning("%s: job %s left pending: a node it writes to is unreachable",
                            item.queue or self.queue, item.entry_id)  # fmt: skip
                self.held.discard(item.queue or self.queue, item.entry_id)
        rest = [item for item, cut in zip(finished, cut_off, strict=True) if not cut]
        if rest:
            self._complete(conn, rest)

    def _lost(self) -> None:
        self.on_lost()


def _each(found: Sequence[tuple[str, Sequence[Entry]]]) -> Iterator[tuple[str, str, Any]]:
    """(stream, entry id, fields) of every entry read."""
    for queue, entries in found:
        for entry_id, fields in entries:
            yield queue, entry_id, fields


def _cut_off(conn: JobConnection, jobs: Sequence[tuple[Job, Ticket]]) -> list[bool]:
    """Per job, whether a key it reads is on an unreachable node (Redis Cluster)."""
    return [any(conn.unreachable(key) for _, key in job.request.state_reads()) for job, _ in jobs]


def _cut_off_writes(conn: JobConnection, finished: Sequence[Finished]) -> list[bool]:
    """``_cut_off`` for completions: the outputs and reply each one writes."""
    cut = []
    for item in finished:
        written = list(item.job.request.written_keys()) if item.job is not None else []
        if item.reply:
            written.append(item.reply)
        cut.append(any(conn.unreachable(key) for key in written))
    return cut


def failure_text(exc: BaseException) -> str:
    """A reply's text for an exception: RedisAI's message, or an internal error's type."""
    if isinstance(exc, (AIError, redis.ResponseError)):
        return error_text(exc)
    return f"internal error: {type(exc).__name__}: {error_text(exc)}"
