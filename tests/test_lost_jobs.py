"""A job Redis loses while a worker holds it (FLUSHALL or FLUSHDB, a restart without persistence,
a failover): its entry is gone from the stream and no reply ever comes. The wait ends with a
ReplyTimeout saying so, soon after, instead of at its deadline (or never, without one)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import stub_blob, wait_until

from aiworker import Client, ReplyTimeout, Settings, Worker
from aiworker.asyncio import Client as AsyncClient
from aiworker.client.waiting import ENTRY_CHECK_AFTER_S
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import CONSUMER_GROUP, Keys


def _flush_once_read(url: str, started: threading.Event) -> threading.Thread:
    """FLUSHALL as soon as the worker has read the job."""
    import redis

    def flush() -> None:
        r = redis.Redis.from_url(url)
        started.wait(10)
        queue = Keys().queue("CPU")
        wait_until(lambda: r.exists(queue) and r.xpending(queue, CONSUMER_GROUP)["pending"], 10)
        r.flushall()
        r.close()

    thread = threading.Thread(target=flush)
    thread.start()
    return thread


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_a_job_lost_with_a_flush_ends_its_wait_without_a_deadline(flavour: str) -> None:
    with RedisServer() as server:
        c = Client.from_url(server.url, reply_timeout=None)
        c.modelstore("slow", "STUB", "CPU", stub_blob("identity", sleep_ms=1500))
        c.tensorset("a", np.ones(2, np.float32))
        w = Worker(Settings(redis_url=server.url, threads_per_queue=1, block_ms=100)).start()
        started = threading.Event()
        flusher = _flush_once_read(server.url, started)
        began = time.monotonic()
        try:
            with pytest.raises(ReplyTimeout, match="no longer in queue CPU and no reply came"):
                started.set()
                if flavour == "sync":
                    c.modelexecute("slow", ["a"], ["b"])
                else:
                    asyncio.run(_async_execute(server.url))
            # before: it waited for good (or until reply_timeout, blaming a failover)
            assert time.monotonic() - began < ENTRY_CHECK_AFTER_S + 8
        finally:
            flusher.join(10)
            w.stop(timeout=10)
            c.close()


async def _async_execute(url: str) -> Any:
    ac = AsyncClient.from_url(url, reply_timeout=None)
    try:
        return await ac.modelexecute("slow", ["a"], ["b"])
    finally:
        await ac.aclose()
