"""Dropped connections and socket timeouts: workers carry on."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from conftest import stub_blob, wait_until
from faults import ReplyDropper, enqueue, job_entry, reply_counts, stub_model, tensor

from aiworker import Client, ReplyTimeout, Settings, Worker
from aiworker.embedded import RedisServer
from aiworker.storage.redis_options import block_ms_for
from aiworker.storage.wire import IDLE_CHECK_S


def test_workers_survive_killed_connections(client: Client, settings: Settings) -> None:
    n = 200
    stub_model(client, "m", sleep_ms=1)
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    # A connection killed while a read's reply is in flight leaves that entry pending until the
    # visibility timeout: keep it short so such entries come back quickly.
    w = Worker(settings.replace(threads_per_queue=2, visibility_timeout=1.0)).start()
    stop = threading.Event()
    killed = []

    def kill_connections() -> None:
        killer = redis.Redis.from_url(settings.redis_url)
        while not stop.wait(0.05):
            killed.append(killer.client_kill_filter(_type="normal", skipme=True))
        killer.close()

    killer = threading.Thread(target=kill_connections, daemon=True)
    keys = [f"r{i}" for i in range(n)]

    def done() -> bool:
        try:
            return min(reply_counts(client, keys)) >= 1
        except redis.ConnectionError:
            return False

    try:
        killer.start()
        for i in range(0, n, 20):
            batch = [job_entry("m", ["a", "b"], [f"c{j}"], f"r{j}") for j in range(i, i + 20)]
            for _attempt in range(20):
                try:
                    enqueue(client, batch)
                    break
                except redis.ConnectionError:
                    continue
        wait_until(done, timeout=30, interval=0.05)
    finally:
        stop.set()
        killer.join(5)
        w.stop(timeout=5)
    assert sum(killed) > 0, "connections were killed under the worker"
    assert reply_counts(client, keys) == [1] * n
    assert not w.problems(), "every worker thread is alive"
    assert w.held_entries() == [], "nothing left in flight"
    assert 'aiworker_inflight_requests{device="CPU"} 0.0' in w.metrics.render().decode()


def test_blocking_reads_stay_below_the_socket_timeout(redis_server: RedisServer) -> None:
    url = redis_server.url + "?socket_timeout=0.5"
    w = Worker(Settings(redis_url=url, block_ms=1000, threads_per_queue=1))
    assert block_ms_for(w.r, 1000) == w.settings.block_ms == 400
    w.start()
    try:
        time.sleep(1.5)  # several idle blocking reads
        assert w.metrics.redis_errors.labels("read")._value.get() == 0, "no read timed out"
    finally:
        w.stop(timeout=5)


def test_worker_connections_get_a_socket_timeout_above_the_block(settings: Settings) -> None:
    w = Worker(settings.replace(block_ms=1000))
    timeout = w.r.connection_pool.connection_kwargs["socket_timeout"]
    assert timeout > 1.0 and w.settings.block_ms == 1000
    assert w.r.connection_pool.connection_kwargs["retry"].get_retries() > 0


def test_a_client_connection_redis_closed_while_idle_is_made_again() -> None:
    """Redis' ``timeout`` (or a proxy's idle timeout, or CLIENT KILL) closes a connection left
    idle. The client's next call went out on the closed socket and failed - a job's XADD
    reported as "may or may not have been queued", though nothing was sent. Now a connection
    idle for a while is checked first and made again."""
    import numpy as np
    from conftest import stub_blob

    with RedisServer(extra_args=["--timeout", "1"]) as server:
        c = Client.from_url(server.url, reply_timeout=30)
        w = Worker(Settings(redis_url=server.url, threads_per_queue=1, block_ms=100)).start()
        try:
            c.modelstore("m", "STUB", "CPU", stub_blob("add"))
            c.tensorset("a", np.ones(2, np.float32))
            assert c.modelexecute("m", ["a", "a"], ["b"]) == "OK"
            for _ in range(2):
                time.sleep(2.2)  # Redis closes the client's idle connections
                c.tensorset("a", np.full(2, 2, np.float32))
                assert c.tensorget("a").tolist() == [2, 2]
                time.sleep(2.2)
                assert c.modelexecute("m", ["a", "a"], ["b"]) == "OK"
                assert c.tensorget("b").tolist() == [4, 4]
            killer = redis.Redis.from_url(server.url)
            killer.client_kill_filter(_type="normal", skipme=True)
            time.sleep(IDLE_CHECK_S + 0.1)
            assert c.modelexecute("m", ["a", "a"], ["b"]) == "OK"
            killer.close()
        finally:
            w.stop(timeout=10)
            c.close()


def _entries_added(r: redis.Redis, stream: str) -> int:
    return int(r.xinfo_stream(stream)["entries-added"])


@pytest.mark.parametrize("kind", ["asyncio", "shared_replies"])
def test_a_job_whose_xadd_reply_was_lost_is_not_queued_twice(
    client: Client, worker: Worker, redis_server: RedisServer, kind: str
) -> None:
    """The link drops after Redis ran a job's XADD, before its reply came: the job may or may
    not have been queued (ReplyTimeout says so), and it is not sent again (redis-py's retry
    sent the asyncio client's pipeline and a shared reply list's XADD again: one request, two
    entries, two runs)."""
    stub_model(client, "m")
    tensor(client, "a", [1])
    proxy = ReplyDropper(redis_server.port)
    queue = client.keyspace.queue("CPU")
    before = _entries_added(client, queue)
    try:
        if kind == "asyncio":
            from aiworker.asyncio import Client as AsyncClient

            async def run() -> None:
                # (the constructor: its redis-py default is to retry)
                ac = AsyncClient(host="127.0.0.1", port=proxy.port, reply_timeout=5)
                try:
                    await ac.tensorget("a")  # connected
                    proxy.armed.set()
                    with pytest.raises(ReplyTimeout, match="may or may not"):
                        await ac.modelexecute("m", ["a", "a"], ["b"])
                finally:
                    await ac.aclose()

            asyncio.run(run())
        else:
            c = Client(host="127.0.0.1", port=proxy.port, reply_timeout=5, shared_replies=True)
            try:
                c.tensorget("a")
                proxy.armed.set()
                with pytest.raises(ReplyTimeout, match="may or may not"):
                    c.modelexecute("m", ["a", "a"], ["b"])
            finally:
                c.close()
    finally:
        proxy.close()
    assert proxy.dropped == 1
    assert _entries_added(client, queue) - before == 1


def test_a_job_whose_first_wait_lost_its_link_waits_on(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    """Redis answered the job's XADD, then the link dropped during the wait for its reply in the
    same round trip: the job is queued, and its wait goes on on a new connection (it ended at once
    saying Redis did not confirm the XADD, and a retry would have run the job twice)."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=500))
    tensor(client, "a", [1])
    proxy = ReplyDropper(redis_server.port, answer_first=True)
    c = Client.from_url(proxy.url, reply_timeout=10)
    try:
        c.tensorget("a")
        proxy.armed.set()
        assert c.modelexecute("slow", ["a", "a"], ["b"]) == "OK"
        assert proxy.dropped == 1
        assert c.tensorget("b").tolist() == [2]
    finally:
        c.close()
        proxy.close()


def test_a_tensor_read_on_a_link_redis_just_closed_is_sent_again(
    client: Client, settings: Settings
) -> None:
    """A read on the client's own connection that Redis closed moments after its last use (too
    soon for the idle check): sent again on a new connection, as redis-py's retry does for
    its commands (it raised ConnectionError)."""
    tensor(client, "a", [1, 2])
    killer = redis.Redis.from_url(settings.redis_url)
    for _ in range(3):
        assert client.tensorget("a").tolist() == [1, 2]
        assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
        assert client.tensorget("a").tolist() == [1, 2]
    killer.close()
