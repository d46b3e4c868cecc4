"""A Redis that stalls for longer than the clients' socket timeout (``CLIENT PAUSE``, as a slow
disk, a long script or a failover would): a job's wait goes on through it, and ends as the README
says - with the reply, or ``ReplyTimeout``/``NoLiveWorker`` - never with redis-py's raw
``TimeoutError`` or ``ConnectionError``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
import redis
from conftest import stub_blob

from aiworker import Client, NoLiveWorker, ReplyTimeout, Settings, Worker
from aiworker import asyncio as aio
from aiworker.embedded import RedisServer

X = np.array([1.0, 2.0], np.float32)
STALLS = 16


def outcome(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # returned for the test to look at
        return exc


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_jobs_ride_out_a_stall(
    client: Client, settings: Settings, redis_server: RedisServer, shared: bool
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add", sleep_ms=50))
    w = Worker(settings.replace(threads_per_queue=4)).start()
    clients = [  # several, so that several reader threads of shared lists ride the stalls
        Client.from_url(
            redis_server.url, reply_timeout=15, socket_timeout=0.5, shared_replies=shared
        )
        for _ in range(4)
    ]
    results: list[Any] = []
    stop = threading.Event()

    def requester(c: Client) -> None:
        while not stop.is_set():
            results.append(outcome(lambda: c.run("m", {"a": X, "b": X}, ["y"])))

    threads = [threading.Thread(target=requester, args=(clients[n % 4],)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        before = len(results)
        client.execute_command("CLIENT", "PAUSE", 2000, "ALL")  # every other client waits 2 s
        time.sleep(2.5)
        # stalls a little longer than the socket timeout, again and again: Redis runs a wait for
        # a reply only once the client gave up on it, and the reply must not go with it
        for _ in range(STALLS):
            client.execute_command("CLIENT", "PAUSE", 700, "ALL")
            time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        w.stop(timeout=10)
        for c in clients:
            c.close()
    raw = [
        r for r in results if isinstance(r, redis.RedisError) and not isinstance(r, ReplyTimeout)
    ]
    assert not raw, raw
    answered = [r for r in results if isinstance(r, dict)]
    assert all(r["y"].tolist() == (X + X).tolist() for r in answered)
    assert len(answered) > before, "jobs went on after the stall"
    # only an XADD Redis never confirmed may end so: no reply is lost
    unconfirmed = [r for r in results if "did not confirm the job's XADD" in str(r)]
    assert len(answered) + len(unconfirmed) == len(results), [
        r for r in results if isinstance(r, Exception) and r not in unconfirmed
    ]
    assert not any(isinstance(r, NoLiveWorker) for r in results)
    if not shared:  # every private list read to its end was removed: those left are the lists
        # of jobs whose XADD went unconfirmed (their replies came after the wait ended)
        assert len(client.keys("aiworker:reply:*")) <= len(unconfirmed)


def test_the_asyncio_client_rides_out_a_stall(
    client: Client, settings: Settings, redis_server: RedisServer
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add", sleep_ms=50))
    w = Worker(settings.replace(threads_per_queue=4)).start()

    def stall() -> None:
        client.execute_command("CLIENT", "PAUSE", 2000, "ALL")
        time.sleep(2.5)
        for _ in range(STALLS):  # as in the test above, for the reader task of each client
            client.execute_command("CLIENT", "PAUSE", 700, "ALL")
            time.sleep(1.0)

    async def requests(acon: aio.Client, stalls: asyncio.Future[None]) -> list[Any]:
        results = []
        while not stalls.done():
            tasks = [acon.run("m", {"a": X, "b": X}, ["y"]) for _ in range(5)]
            results += await asyncio.gather(*tasks, return_exceptions=True)
        return results

    async def calls() -> list[Any]:
        clients = [aio.Client.from_url(redis_server.url, socket_timeout=0.5) for _ in range(4)]
        try:
            for acon in clients:  # the model's device known: what follows is the job's wait
                await acon.run("m", {"a": X, "b": X}, ["y"])
            stalls = asyncio.ensure_future(asyncio.to_thread(stall))
            done = await asyncio.gather(*(requests(acon, stalls) for acon in clients))
            await stalls
            return [r for results in done for r in results]
        finally:
            for acon in clients:
                await acon.aclose()

    try:
        results = asyncio.run(calls())
    finally:
        w.stop(timeout=10)
    raw = [
        r for r in results if isinstance(r, redis.RedisError) and not isinstance(r, ReplyTimeout)
    ]
    assert not raw, raw
    assert sum(isinstance(r, dict) for r in results) > 100
    lost = [r for r in results if not isinstance(r, dict) and "did not confirm" not in str(r)]
    assert not lost, lost
