"""Jobs while a hash slot is resharded (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE key by key,
SETSLOT NODE), on a cluster of their own (the migrations move slots between its masters).

Mid-migration, a script whose keys are split between the two masters, or new to both (a
completion's done marker always is), is refused with TRYAGAIN, and a script run where ASK sends
it may not be loaded there (NOSCRIPT). No job may fail or be lost for it: it waits, or runs
again, until the migration moves on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio
from cluster import LocalCluster, SlotMigration
from conftest import stub_blob, wait_until

from aiworker import Client, Worker
from aiworker.asyncio.cluster_wire import AsyncClusterWire
from aiworker.protocol.keys import CONSUMER_GROUP, key_slot
from aiworker.settings import Settings
from aiworker.storage import cluster as storage_cluster
from aiworker.storage.cluster import ClusterWires, SlotMigrating


@pytest.fixture(scope="module")
def resharded() -> Iterator[LocalCluster]:
    """3 masters, no replicas: each test migrates slots of its own hash tags."""
    with LocalCluster(replicas=0) as cluster:
        yield cluster


@pytest.fixture
def client(resharded: LocalCluster) -> Iterator[Any]:
    c = Client.from_url(resharded.url, reply_timeout=60)
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    yield c
    c.close()


@pytest.fixture
def worker(resharded: LocalCluster, client: Any) -> Iterator[Worker]:
    settings = Settings(
        redis_url=resharded.url, threads_per_queue=2, block_ms=100, visibility_timeout=2.0
    )
    w = Worker(settings).start()
    wait_until(lambda: client.zcard(client.keyspace.workers) > 0, timeout=10)
    yield w
    w.stop(timeout=10)


def _in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """``call()`` in a thread; its result (or exception) lands in the dict."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = call()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def _on_any_master(cluster: LocalCluster, key: str) -> bool:
    """Whether any master holds ``key`` (asked by slot: EXISTS would be redirected)."""
    slot, key_bytes = key_slot(key), key.encode()
    for port in cluster.master_ports():
        node: Any = cluster.node(port)
        if key_bytes in node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000):
            return True
    return False


def _pending(c: Any) -> int:
    return int(c.xpending(c.keyspace.queue("CPU"), CONSUMER_GROUP)["pending"])


@pytest.mark.slow
def test_a_job_whose_keys_a_migration_splits_waits_for_it_and_completes(
    resharded: LocalCluster, client: Any, worker: Worker
) -> None:
    """Its inputs split between source and target (TRYAGAIN for the read), its outputs' step
    refused while the slot is mid-migration: the job waits, nothing of it written, and completes
    once the migration is over. Tensors are stored and read meanwhile (a script ASK sends to the
    target is loaded there: it was NOSCRIPT)."""
    c = client
    c.tensorset("a{t}", np.array([1, 2], dtype=np.float32))
    c.tensorset("b{t}", np.array([10, 20], dtype=np.float32))
    migration = SlotMigration(resharded, "a{t}").begin()
    migration.move(["a{t}"])  # b{t} stays behind
    thread, out = _in_thread(lambda: c.modelexecute("m", ["a{t}", "b{t}"], ["c{t}"]))
    c.tensorset("d{t}", np.array([3], dtype=np.float32))  # new: the script runs on the target
    assert c.tensorget("d{t}").tolist() == [3.0]
    assert c.tensorget("a{t}").tolist() == [1.0, 2.0]
    time.sleep(3)
    assert thread.is_alive() and not out, f"the job waits for the migration: {out}"
    assert not _on_any_master(resharded, "c{t}"), "nothing written while the keys are split"
    migration.finish()
    thread.join(30)
    assert out == {"result": "OK"}
    assert c.tensorget("c{t}").tolist() == [11.0, 22.0]
    assert resharded.master_of("c{t}") == migration.target
    wait_until(lambda: _pending(c) == 0, timeout=10)
    assert c.infoget("m")["calls"] == 1


@pytest.mark.slow
def test_completions_meeting_a_migration_are_neither_lost_nor_answered_twice(
    resharded: LocalCluster, client: Any, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs elsewhere: the first job meets the migration only in its completion, whose
    acknowledgement ran in the same round trip (its steps are retried until they apply); the
    next ones, the slot known to be migrating, are acknowledged only after their steps, and
    the retries running out leaves them pending, to run again. Each completes once."""
    monkeypatch.setattr(storage_cluster, "TRYAGAIN_WAIT_S", 1.0)
    c = client
    c.tensorset("x", np.array([1], dtype=np.float32))
    migration = SlotMigration(resharded, "o{w}").begin()
    threads = []
    for n in range(3):
        threads.append(_in_thread(lambda n=n: c.modelexecute("m", ["x", "x"], [f"o{n}{{w}}"])))
        time.sleep(0.7)
    time.sleep(1.5)  # longer than one round's wait for TRYAGAIN: the later jobs run again
    assert all(not out for _thread, out in threads), "no job ends while the slot is split"
    migration.finish()
    for thread, out in threads:
        thread.join(30)
        assert out == {"result": "OK"}
    for n in range(3):
        assert c.tensorget(f"o{n}{{w}}").tolist() == [2.0]
    wait_until(lambda: _pending(c) == 0, timeout=10)
    assert c.infoget("m")["calls"] == 3, "each job counted once"


def test_a_split_command_is_sent_again_until_the_migration_moves_on(
    resharded: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job path's connection: a command refused with TRYAGAIN is sent again with backoff
    and runs once the keys are together; past ``TRYAGAIN_WAIT_S`` it fails with an error that
    names TRYAGAIN and the migration, having written nothing."""
    monkeypatch.setattr(storage_cluster, "TRYAGAIN_WAIT_S", 0.5)
    rc = redis.RedisCluster.from_url(resharded.url)
    wires = ClusterWires(rc)
    try:
        wire = wires.get()
        rc.set("p{s}", "1")
        migration = SlotMigration(resharded, "p{s}").begin()
        migration.move(["p{s}"])
        started = time.monotonic()
        with pytest.raises(SlotMigrating, match=r"TRYAGAIN.*migrat"):
            wire.execute("MSET", "p{s}", "x", "r{s}", "y")
        assert 0.3 < time.monotonic() - started < 3
        assert wire.migrating(wire.slot("p{s}"))
        assert not _on_any_master(resharded, "r{s}"), "nothing written"
        threading.Timer(0.3, migration.finish).start()
        monkeypatch.setattr(storage_cluster, "TRYAGAIN_WAIT_S", 10.0)
        assert wire.execute("MSET", "p{s}", "x", "r{s}", "y") in (b"OK", "OK", True)
        assert rc.mget_nonatomic(["p{s}", "r{s}"]) == [b"x", b"y"]
    finally:
        wires.close()
        rc.close()


def test_the_asyncio_client_waits_out_a_split_command_too(
    resharded: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio cluster client's connection: TRYAGAIN was taken for a lost node (NodeLost at
    once, where the blocking client waits); now it is sent again with the same backoff."""
    monkeypatch.setattr(storage_cluster, "TRYAGAIN_WAIT_S", 0.5)

    async def scenario() -> None:
        rc = redis.asyncio.RedisCluster.from_url(resharded.url)
        wire = AsyncClusterWire(rc)
        try:
            await rc.set("p{a}", "1")
            migration = SlotMigration(resharded, "p{a}").begin()
            migration.move(["p{a}"])
            started = time.monotonic()
            with pytest.raises(SlotMigrating, match=r"TRYAGAIN.*migrat"):
                await wire.pipeline([("MSET", "p{a}", "x", "r{a}", "y")])
            assert 0.3 < time.monotonic() - started < 3
            assert not _on_any_master(resharded, "r{a}"), "nothing written"
            threading.Timer(0.3, migration.finish).start()
            monkeypatch.setattr(storage_cluster, "TRYAGAIN_WAIT_S", 10.0)
            (reply,) = await wire.pipeline([("MSET", "p{a}", "x", "r{a}", "y")])
            assert reply in (b"OK", "OK", True)
            assert await rc.mget_nonatomic(["p{a}", "r{a}"]) == [b"x", b"y"]
        finally:
            await wire.close()
            await rc.aclose()

    asyncio.run(scenario())


def test_a_transaction_meeting_a_migration_is_sent_again_whole(resharded: LocalCluster) -> None:
    """A MULTI whose commands a migrating slot redirects (ASK, TRYAGAIN) at queue time: each
    redirected command was sent again alone, outside the transaction (EXEC still said
    EXECABORT). The block waits for the migration and is sent again whole."""
    rc = redis.RedisCluster.from_url(resharded.url)
    wires = ClusterWires(rc)
    try:
        wire = wires.get()
        rc.set("p{m}", "1")
        migration = SlotMigration(resharded, "p{m}").begin()
        migration.move(["p{m}"])
        threading.Timer(0.5, migration.finish).start()
        block = [("MULTI",), ("SET", "p{m}", "x"), ("SET", "r{m}", "y"), ("EXEC",)]
        replies = wire.pipeline(block, ["p{m}"] * len(block))
        assert not any(isinstance(reply, Exception) for reply in replies), replies
        assert [bool(done) for done in replies[-1]] == [True, True]
        assert rc.mget_nonatomic(["p{m}", "r{m}"]) == [b"x", b"y"]
    finally:
        wires.close()
        rc.close()
