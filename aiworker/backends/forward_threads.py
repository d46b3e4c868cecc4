"""Threads that run CPU forwards for whichever lane thread runs a job.

Why: torch's intra-op parallelism on the CPU is OpenMP (libgomp in the pip wheels), whose thread
pool belongs to the thread that starts a parallel region. A device lane runs jobs on whichever of
its threads is free, so before long several threads of the process have started one; libgomp then
counts more threads than cores, stops spinning between parallel regions, and every region pays
futex wake-ups. A small conv net (1x3x64x64): 0.24 ms a forward called alone, 0.7-1.0 ms once one
other such thread is alive; in a worker with THREADS_PER_QUEUE 1 (two lane threads), 0.94-1.04 ms a
run against 0.53-0.68 ms with one lane thread. Forwards handed to these threads keep the pools as
few as the forwards in flight. A hand-off costs ~60 us of CPU here, so only calls that took long
enough last time come here (``worth_handing_off``): TORCH forwards and script calls, and loads.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

# A CPU forward (or script call) that took at least this long last time is handed to these
# threads; a shorter one runs on the calling thread, where a hand-off would cost more than it saves.
HAND_OFF_S = 0.0002
# Settings by which an operator chose how OpenMP threads wait (libgomp's, and Intel's runtime's).
OPENMP_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# How many times a worker's libgomp threads spin after a parallel region before they sleep
# (libgomp's default: 300,000, milliseconds of spinning).
WORKER_SPIN_COUNT = "10000"


def shorten_openmp_spin(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Let libgomp's threads (torch's intra-op pool in the pip wheels) spin ``WORKER_SPIN_COUNT``
    times after a parallel region, not 300,000, unless the environment already chose how OpenMP
    threads wait; True when it was set.

    A worker shares its cores with Redis and the clients. With 600 KB inputs and forwards of a
    millisecond or two, one spinning thread took 270 us of CPU an image on 2 cores; with this set
    the worker used 29-45% less CPU and served 18% more images on average (four pairs of runs),
    and a compute-bound MLP (``bench.batching``, five runs each way) ran as fast within the noise
    (bench/README.md). It counts only before the OpenMP runtime is loaded (torch's import): a
    worker process sets it at start (``Worker.run_forever``)."""
    if any(name in environ for name in OPENMP_WAIT_SETTINGS):
        return False
    environ["GOMP_SPINCOUNT"] = WORKER_SPIN_COUNT
    return True


def worth_handing_off(last_s: float | None) -> bool:
    """Whether a CPU call whose last run took ``last_s`` seconds (None: it never ran, so its cost
    is unknown) goes to these threads."""
    return last_s is None or last_s >= HAND_OFF_S


Call = tuple[Callable[..., Any], tuple[Any, ...], list[tuple[bool, Any]], threading.Lock]
_here = threading.local()  # ``forward``: set on the forward threads themselves


class _Thread:
    """One daemon thread running the calls put to it, one at a time."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[Call] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="aiworker-forward", daemon=True).start()

    def _loop(self) -> None:
        _here.forward = True
        while True:
            function, args, box, done = self.calls.get()
            try:
                box.append((True, function(*args)))
            except BaseException as exc:  # the caller raises it
                box.append((False, exc))
            done.release()

    def call(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        box: list[tuple[bool, Any]] = []
        done = threading.Lock()
        done.acquire()
        self.calls.put((function, args, box, done))
        done.acquire()  # released once the call ran
        ok, value = box[0]
        if ok:
            return value
        raise value


class ForwardThreads:
    """A thread per call in flight, reused: sequential calls all run on the same thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Thread] = []
        self._pid = os.getpid()

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on one of these threads (the calling one when it is one: a
        script's forward that runs a stored model); its result, or its exception raised."""
        if getattr(_here, "forward", False):
            return function(*args)
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's threads are not here
                self._idle, self._pid = [], os.getpid()
            thread = self._idle.pop() if self._idle else None
        if thread is None:
            thread = _Thread()
        try:
            return thread.call(function, args)
        finally:
            with self._lock:
                self._idle.append(thread)


FORWARD_THREADS = ForwardThreads()
