"""Redis Cluster with a hash slot no master serves for a while (CLUSTER DELSLOTS), then served again
(ADDSLOTS): every part (the blocking and the asyncio client, the gateway, a worker's job path and
its heartbeat) uses the slot again within about a second, without a restart, and while the slot
stays unserved re-reads the slot map at a bounded rate (``storage.cluster.UNCOVERED_REFRESH_S``).

A cluster of its own (3 masters, no replica) whose nodes keep serving the other slots meanwhile
(``cluster-require-full-coverage no``, as aiworker's clients expect: ``require_full_coverage``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from cluster import LocalCluster
from conftest import stub_blob, wait_until
from test_gateway import connect as gateway_client
from test_gateway import running_gateway

import aiworker.asyncio
from aiworker import Client, Settings, Worker
from aiworker.protocol.keys import key_slot
from aiworker.storage.cluster import UNCOVERED_REFRESH_S, job_connections
from aiworker.storage.redis_options import reconnect_retry

TAG = "{t}"  # a job's input, output and reply list: one slot
SLOT = key_slot(TAG)
# How soon after the slot is served again a part must use it (a map re-read, plus a margin for
# redis-py's own retries of a call that started just before).
RECOVERY_S = 6.0


@pytest.fixture(scope="module")
def holed() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=0) as cluster:
        for port in cluster.ports:
            cluster.node(port).config_set("cluster-require-full-coverage", "no")
        yield cluster


@pytest.fixture
def client(holed: LocalCluster) -> Iterator[Any]:
    holed.wait_ok()
    holed.flushall()
    c = Client.from_url(holed.url, reply_timeout=10)
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    yield c
    c.close()


@pytest.fixture
def worker(holed: LocalCluster, client: Any) -> Iterator[Worker]:
    settings = Settings(redis_url=holed.url, threads_per_queue=2, block_ms=100)
    w = Worker(settings).start()
    wait_until(lambda: client.zcard(client.keyspace.workers) > 0, timeout=10)
    yield w
    w.stop(timeout=10)


def slot_rows(cluster: LocalCluster, port: int) -> list[Any]:
    node: Any = cluster.node(port)
    return list(node.execute_command("CLUSTER", "SLOTS"))


def owner(cluster: LocalCluster, port: int, slot: int) -> int | None:
    """The master of ``slot`` as the node on ``port`` sees it."""
    for row in slot_rows(cluster, port):
        if int(row[0]) <= slot <= int(row[1]):
            return int(row[2][1])
    return None


def unserve(cluster: LocalCluster, slot: int) -> int:
    """DELSLOTS ``slot`` on every node (its master first), until none sees a master for it; the
    port of the master it had."""
    master = owner(cluster, cluster.ports[0], slot)
    assert master is not None
    nodes = [master, *(p for p in cluster.ports if p != master)]

    def gone() -> bool:
        for port in nodes:  # a master's older gossip may give the slot back: delete it again
            if owner(cluster, port, slot) is not None:
                cluster.node(port).execute_command("CLUSTER", "DELSLOTS", slot)
        time.sleep(0.2)
        return all(owner(cluster, port, slot) is None for port in nodes)

    wait_until(gone, timeout=10)
    return master


def serve(cluster: LocalCluster, slot: int, master: int) -> None:
    """ADDSLOTS ``slot`` on ``master`` and wait until every node sees it there."""
    cluster.node(master).execute_command("CLUSTER", "ADDSLOTS", slot)
    wait_until(lambda: all(owner(cluster, p, slot) == master for p in cluster.ports), timeout=10)


def works_again(attempt: Any, timeout: float = RECOVERY_S) -> None:
    """``attempt`` succeeds within ``timeout`` of the slot being served again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            attempt()
            return
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"still failing {timeout}s after the slot was served again: {exc!r}")
        time.sleep(0.1)


def job(c: Any, n: int) -> None:
    c.tensorset(f"a{TAG}", np.array([n, 1], dtype=np.float32))
    c.modelexecute("m", [f"a{TAG}", f"a{TAG}"], [f"c{TAG}"])
    assert c.tensorget(f"c{TAG}").tolist() == [2.0 * n, 2.0]


def test_blocking_client_and_worker(holed: LocalCluster, client: Any, worker: Worker) -> None:
    """A job whose input, output and reply list are on the slot: refused while no master serves
    it, run again once one does (the client's redis-py map and job wire, the worker's wire)."""
    job(client, 1)
    master = unserve(holed, SLOT)
    with pytest.raises((redis.RedisError, redis.exceptions.RedisClusterException)):
        client.tensorset(f"a{TAG}", np.array([0, 0], dtype=np.float32))
    client.set("elsewhere", 1)  # the other slots still work
    serve(holed, SLOT, master)
    works_again(lambda: job(client, 2))
    works_again(lambda: client.get(f"plain{TAG}"))  # a user's own Redis command


def test_asyncio_client(holed: LocalCluster, client: Any, worker: Worker) -> None:
    async def main() -> None:
        c = aiworker.asyncio.Client.from_url(holed.url, reply_timeout=10)
        try:

            async def run(n: int) -> None:
                await c.tensorset(f"a{TAG}", np.array([n, 1], dtype=np.float32))
                await c.modelexecute("m", [f"a{TAG}", f"a{TAG}"], [f"c{TAG}"])
                assert (await c.tensorget(f"c{TAG}")).tolist() == [2.0 * n, 2.0]

            await run(1)
            master = await asyncio.to_thread(unserve, holed, SLOT)
            with pytest.raises((redis.RedisError, redis.exceptions.RedisClusterException)):
                await c.tensorset(f"a{TAG}", np.array([0, 0], dtype=np.float32))
            await asyncio.to_thread(serve, holed, SLOT, master)
            deadline = time.monotonic() + RECOVERY_S
            for n in range(2, 1000):
                try:
                    await run(n)
                    await c.get(f"plain{TAG}")
                    return
                except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                    if time.monotonic() > deadline:
                        pytest.fail(f"still failing after the slot was served again: {exc!r}")
                await asyncio.sleep(0.1)
        finally:
            await c.aclose()

    asyncio.run(main())


def test_gateway(holed: LocalCluster, client: Any, worker: Worker) -> None:
    """AI.TENSORSET / AI.MODELEXECUTE / AI.TENSORGET and a plain GET through the gateway."""
    settings = Settings(redis_url=holed.url)
    with running_gateway(settings) as gw:
        g = gateway_client(gw)

        def run(n: int) -> None:
            g.execute_command("AI.TENSORSET", f"a{TAG}", "FLOAT", 2, "VALUES", n, 1)
            g.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, f"a{TAG}", f"a{TAG}",
                              "OUTPUTS", 1, f"c{TAG}")  # fmt: skip
            got = g.execute_command("AI.TENSORGET", f"c{TAG}", "VALUES")
            assert [float(v) for v in got] == [2.0 * n, 2.0]
            g.get(f"plain{TAG}")

        run(1)
        master = unserve(holed, SLOT)
        with pytest.raises(redis.RedisError):
            g.execute_command("AI.TENSORSET", f"a{TAG}", "FLOAT", 2, "VALUES", 0, 0)
        serve(holed, SLOT, master)
        works_again(lambda: run(2))
        g.close()


def test_heartbeat_resumes(holed: LocalCluster, client: Any, worker: Worker) -> None:
    """A worker whose heartbeat key's slot is unserved for a while beats again once it is
    served: its key, removed meanwhile, comes back."""
    key = client.keyspace.worker(worker.name)
    master = unserve(holed, key_slot(key))
    time.sleep(1.0)  # beats fail meanwhile
    serve(holed, key_slot(key), master)
    holed.node(master).delete(key)
    wait_until(lambda: holed.node(master).exists(key), timeout=RECOVERY_S)


def cluster_slots_calls(cluster: LocalCluster) -> int:
    total = 0
    for port in cluster.ports:
        stats = cluster.node(port).info("commandstats")
        total += int(stats.get("cmdstat_cluster|slots", {}).get("calls", 0))
    return total


def test_an_unserved_slot_costs_a_bounded_rate_of_map_reads(
    holed: LocalCluster, client: Any, worker: Worker
) -> None:
    """While the slot stays unserved and clients keep asking for it (jobs waiting on it at once,
    the worker beating meanwhile), each slot map is read about once per ``UNCOVERED_REFRESH_S``:
    redis-py's maps (the blocking client's, the worker's, the asyncio client's; redis-py asks
    every node for a map that lacks a slot) and the job wires' (the blocking client's and the
    worker's: one node each)."""
    unserved = (redis.RedisError, redis.exceptions.RedisClusterException)
    master = unserve(holed, SLOT)
    seconds = 4.0
    end = time.monotonic() + seconds

    def blocking() -> None:
        while time.monotonic() < end:
            with contextlib.suppress(*unserved):
                client.get(f"a{TAG}")
            with contextlib.suppress(*unserved):
                client.modelexecute("m", [f"b{TAG}"], [f"c{TAG}"], timeout=500)

    async def main() -> None:
        c = aiworker.asyncio.Client.from_url(holed.url, reply_timeout=2)

        async def jobs() -> None:
            while time.monotonic() < end:
                with contextlib.suppress(*unserved):
                    await c.get(f"a{TAG}")
                with contextlib.suppress(*unserved):
                    await c.modelexecute("m", [f"b{TAG}"], [f"c{TAG}"], timeout=500)

        try:
            await c.ping()
            await asyncio.gather(*(jobs() for _ in range(8)))
        finally:
            await c.aclose()

    try:
        before, started = cluster_slots_calls(holed), time.monotonic()
        thread = threading.Thread(target=blocking)
        thread.start()
        asyncio.run(main())
        thread.join()
        calls, elapsed = cluster_slots_calls(holed) - before, time.monotonic() - started
        per_read = 3 * len(holed.ports) + 2  # see the docstring
        bound = per_read * (elapsed / UNCOVERED_REFRESH_S + 1) + 2  # (+ the asyncio client's start)
        assert calls <= bound, f"{calls} CLUSTER SLOTS in {elapsed:.1f}s (bound {bound:.0f})"
    finally:
        serve(holed, SLOT, master)


def test_a_call_riding_out_an_unserved_slot_uses_it_once_served(holed: LocalCluster) -> None:
    """A job-path call that meets the unserved slot and rides it out (a worker's reconnect
    ``Retry``) reads the map again between its tries: it is answered about a second after the
    slot is served again, not once its retries are spent (about 15 s for a worker's)."""
    holed.wait_ok()
    rc = redis.RedisCluster.from_url(holed.url, require_full_coverage=False)
    wires = job_connections(rc, reconnect_retry())
    wire = wires.get()
    wire.pipeline([("SET", f"k{TAG}", 1)])  # the map read while the slot is served
    master = unserve(holed, SLOT)
    served = threading.Timer(1.0, serve, (holed, SLOT, master))  # while the call retries
    started = time.monotonic()
    served.start()
    try:
        assert wire.pipeline([("GET", f"k{TAG}")]) == [b"1"]
        elapsed = time.monotonic() - started
    finally:
        served.join()
        wires.close()
        rc.close()
    assert elapsed < RECOVERY_S, f"answered {elapsed:.1f}s after the call began"


@pytest.mark.slow  # redis-py retries the beat for ~15 s before it fails
def test_a_worker_says_an_unserved_slot_is_a_redis_failure(
    holed: LocalCluster, client: Any, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's loops on redis-py's client (heartbeat, leases, reclaims) take redis-py's
    SlotNotCoveredError, which is no RedisError, for the Redis failure it is: a warning and a
    quick retry, not a traceback at every turn."""
    key = client.keyspace.worker(worker.name)
    caplog.set_level(logging.WARNING, logger="aiworker")
    master = unserve(holed, key_slot(key))
    try:
        wait_until(lambda: "heartbeat failed" in caplog.text, timeout=40)
    finally:
        serve(holed, key_slot(key), master)
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("aiworker")]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_a_model_scan_keeps_a_model_it_could_not_read(holed: LocalCluster, client: Any) -> None:
    """AI._MODELSCAN drops from the index the models deleted behind aiworker's back; a model
    whose slot is unserved for a while (a master lost) is not one of them: it is listed again
    once its slot is served (it was dropped from the index for good)."""
    client.modelstore(f"n{TAG}", "STUB", "CPU", stub_blob("add"))
    assert sorted(name for name, _tag in client.modelscan()) == ["m", f"n{TAG}"]
    master = unserve(holed, SLOT)
    try:
        listed = [name for name, _tag in client.modelscan()]
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        listed = None  # the scan may fail as a whole: what matters is the index after
    assert listed is None or f"n{TAG}" not in listed
    serve(holed, SLOT, master)
    works_again(lambda: client.modelget(f"n{TAG}", meta_only=True))
    assert sorted(name for name, _tag in client.modelscan()) == ["m", f"n{TAG}"]


def test_a_cluster_with_no_slot_assigned_yet_is_named_then_served(tmp_path: Any) -> None:
    """A node of a cluster not set up yet (no master has slots: before ``redis-cli --cluster
    create``): the clients and a worker say so (redis-py failed with an IndexError), the gateway
    answers as such a node does and keeps its connections (it closed them with a traceback);
    once the slots are assigned, the gateway serves them without a restart."""
    from click.testing import CliRunner

    from aiworker.cli import main
    from aiworker.embedded import RedisServer, cluster_port

    with RedisServer(cluster_port(), extra_args=["--cluster-enabled", "yes"]) as node:
        url = node.url
        with pytest.raises(redis.ConnectionError, match="serves no hash slot"):
            Client.from_url(url)

        async def async_tensorset() -> None:
            con = aiworker.asyncio.Client.from_url(url)
            try:
                await con.tensorset("a", np.ones(1, np.float32))
            finally:
                await con.aclose()

        with pytest.raises(redis.ConnectionError, match="serves no hash slot"):
            asyncio.run(async_tensorset())
        result = CliRunner().invoke(main, ["worker", "--redis-url", url])
        assert result.exit_code != 0 and "serves no hash slot" in result.output, result.output

        with running_gateway(Settings(redis_url=url)) as gw:
            con = gateway_client(gw)
            assert con.ping()
            with pytest.raises(redis.exceptions.ClusterDownError):  # as the node answers
                con.get("x")
            with pytest.raises(redis.ResponseError, match="serves no hash slot"):
                con.execute_command("AI.TENSORSET", "a", "FLOAT", 1, "VALUES", 1)
            assert con.ping()  # the same connection
            admin = redis.Redis(port=node.port)
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            wait_until(lambda: b"cluster_state:ok" in admin.execute_command("CLUSTER", "INFO"))
            assert con.execute_command("AI.TENSORSET", "a", "FLOAT", 1, "VALUES", 1) == b"OK"
            assert con.set("x", 1) and con.get("x") == b"1"
            con.close()
            admin.close()
        client = Client.from_url(url)
        assert client.tensorget("a").tolist() == [1.0]
        client.close()
