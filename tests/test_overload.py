"""Overload: a device queue bounded by its workers' ``max_queue_length``. A request beyond it is
refused at once with "queue CPU is full" (``QueueFull``, a ``ResponseError``) instead of waiting
behind an ever longer queue; the check and the XADD are one atomic step; ``aiworker status``
shows the limit and how full the queue is."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from conftest import stalled_worker, stub_blob, wait_until

from aiworker import Client, QueueFull, Settings, Worker
from aiworker import asyncio as aio
from aiworker.cli import main
from aiworker.embedded import RedisServer
from aiworker.storage import queues

QUEUE = "aiworker:queue:CPU"


@pytest.fixture
def bounded(client: Client, settings: Settings) -> Iterator[Client]:
    """One worker thread, a queue of at most 2 jobs (the one running and one waiting), and a
    model that takes 1.5 s."""
    w = Worker(settings.replace(threads_per_queue=1, max_queue_length=2)).start()
    try:
        wait_until(lambda: client.get(client.keyspace.queue_limit(QUEUE)) == b"2", timeout=10)
        client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
        client.tensorset("a", np.array([1.0], np.float32))
        yield client
    finally:
        w.stop(timeout=10)


def fill(client: Client, jobs: int) -> list[Any]:
    """Start ``jobs`` slow jobs in threads; returns their results list once all are queued."""
    results: list[Any] = []

    def one(n: int) -> None:
        try:
            results.append(client.modelexecute("slow", ["a", "a"], [f"o{n}"]))
        except Exception as exc:  # e.g. the worker stopped at the test's end
            results.append(exc)

    for n in range(jobs):
        threading.Thread(target=one, args=(n,), daemon=True).start()
        wait_until(lambda n=n: client.xlen(QUEUE) == n + 1, timeout=5)
    return results


def test_a_request_beyond_the_limit_is_refused_at_once(bounded: Client) -> None:
    results = fill(bounded, 2)
    started = time.monotonic()
    with pytest.raises(QueueFull) as info:
        bounded.modelexecute("slow", ["a", "a"], ["late"])
    assert time.monotonic() - started < 0.5
    assert isinstance(info.value, redis.ResponseError)
    assert str(info.value) == (
        "queue CPU is full: 2 jobs waiting, max_queue_length 2; the job was not queued"
    )
    with pytest.raises(QueueFull):  # the one-round-trip call too
        bounded.run("slow", {"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)}, ["y"])
    pipe = bounded.pipeline(transaction=False)
    pipe.modelexecute("slow", ["a", "a"], ["late"])
    [refused] = pipe.execute(raise_on_error=False)
    assert isinstance(refused, QueueFull)
    assert bounded.xlen(QUEUE) == 2, "nothing refused was queued"
    wait_until(lambda: len(results) == 2, timeout=10)
    assert results == ["OK", "OK"] and not bounded.exists("late")
    assert bounded.modelexecute("slow", ["a", "a"], ["later"]) == "OK", "room again"


def test_the_asyncio_client_is_refused_too(bounded: Client, redis_server: RedisServer) -> None:
    fill(bounded, 2)

    async def late() -> Any:
        async with aio.Client.from_url(redis_server.url) as acon:
            try:
                return await acon.modelexecute("slow", ["a", "a"], ["late"])
            except QueueFull as exc:
                return exc

    assert isinstance(asyncio.run(late()), QueueFull)


def test_status_shows_the_limit_and_how_full_the_queue_is(
    bounded: Client, redis_server: RedisServer
) -> None:
    fill(bounded, 1)
    result = CliRunner().invoke(main, ["status", "--redis-url", redis_server.url])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith(f"queue {QUEUE}:"))
    assert "length=1 limit=2 (50% full)" in line


def test_without_a_limit_nothing_is_refused(client: Client, settings: Settings) -> None:
    """The default: no limit published, plain XADDs (no script on the hot path)."""
    w = Worker(settings).start()
    try:
        client.modelstore("m", "STUB", "CPU", stub_blob("add"))
        client.tensorset("a", np.array([1.0], np.float32))
        for n in range(5):
            assert client.modelexecute("m", ["a", "a"], [f"o{n}"]) == "OK"
        assert client.get(client.keyspace.queue_limit(QUEUE)) is None
        assert not client._jobs.enqueuer.limited(QUEUE), "the client knows: XADD alone"
    finally:
        w.stop(timeout=10)


def test_a_limit_set_later_applies_within_a_second(client: Client) -> None:
    """A running client reads a queue's limit along with its XADDs at most once a second: a limit
    an operator sets applies to it from the next read on. (No worker runs the jobs: a stalled
    one's heartbeat, TIMEOUT 100 ms, so each wait ends TIMEDOUT with the entry taken back.)"""
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    stalled_worker(client)
    assert client.modelexecute("m", ["a", "a"], ["c"], timeout=100) == "TIMEDOUT"
    assert not client._jobs.enqueuer.limited(QUEUE), "no limit: plain XADDs"
    client.set(client.keyspace.queue_limit(QUEUE), 1)
    client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 d"})  # the queue is full
    time.sleep(queues.LIMIT_READ_EVERY_S)
    assert client.modelexecute("m", ["a", "a"], ["c"], timeout=100) == "TIMEDOUT"  # reads it
    with pytest.raises(QueueFull, match="queue CPU is full: 1 jobs waiting, max_queue_length 1"):
        client.modelexecute("m", ["a", "a"], ["c"], timeout=100)


def test_a_flushed_worker_beats_again_at_once(client: Client, settings: Settings) -> None:
    """``Heartbeat.beat_now``: what a consumer calls when it finds its queue flushed away, so that
    clients see a live worker (and the queue's limit) again before the next regular beat."""
    w = Worker(settings.replace(max_queue_length=3)).start()
    try:
        wait_until(lambda: client.exists(client.keyspace.workers), timeout=10)
        client.flushall()
        # the lane that found its stream gone may be publishing already: either way, it is back
        w.heartbeat.beat_now()
        wait_until(lambda: client.zscore(client.keyspace.workers, w.name) is not None, timeout=1)
        wait_until(lambda: client.get(client.keyspace.queue_limit(QUEUE)) == b"3", timeout=1)
    finally:
        w.stop(timeout=10)
