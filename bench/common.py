"""Shared benchmark plumbing: a private Redis, worker processes, timing and markdown tables."""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def env_with_checkout(**extra: str) -> dict[str, str]:
    """Environment for child processes with this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@contextmanager
def process(args: Sequence[str], **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, terminated (then killed) on exit."""
    proc = subprocess.Popen(
        list(args),
        env=env_with_checkout(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def aiworker_worker(url: str, threads: int = 2, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aiworker", "worker", "--redis-url", url,
            "--threads-per-queue", str(threads), *extra]  # fmt: skip


def wait_until(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def latencies(call: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    """Seconds per call, one after another."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def percentile(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def throughput(
    make_call: Callable[[], Callable[[], object]], clients: int, seconds: float
) -> float:
    """Calls per second from ``clients`` threads, each with its own ``make_call()`` callable."""
    calls = [make_call() for _ in range(clients)]
    for call in calls:
        call()  # warm connections and caches
    stop = time.perf_counter() + seconds
    counts = [0] * clients
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        try:
            while time.perf_counter() < stop:
                calls[i]()
                counts[i] += 1
        except BaseException as exc:  # surfaced after join
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.perf_counter() - started)


def median_time(call: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def torchscript_bytes(module: object) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the process's name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (``/proc/<pid>/stat``, all its threads)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Minor page faults a process has taken so far (``/proc/<pid>/stat``)."""
    return int(_stat(pid)[7])


def redis_cpu(r: Any) -> float:
    """User + system CPU seconds a Redis server has used so far (``INFO cpu``)."""
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def cpu_per_job(pid: int, call: Callable[[], object], n: int, warmup: int = 50) -> float:
    """Seconds of ``pid``'s CPU per call, over ``n`` calls made one after another."""
    for _ in range(warmup):
        call()
    before = cpu_seconds(pid)
    for _ in range(n):
        call()
    return (cpu_seconds(pid) - before) / n
