"""Redis Cluster under faults, with real processes: a worker killed with -9 under 1,000 jobs spread
over the three masters, and a master killed (SIGKILL) under load until its replica takes over."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from cluster import LocalCluster
from conftest import wait_until
from faults import WorkerProcess, elapsed_until, stub_model, workers

from aiworker import AIError, Client, Settings, Worker
from aiworker.client import wait_plan
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.keys import CONSUMER_GROUP, Keys, key_slot
from aiworker.protocol.requests import ModelExecute
from aiworker.protocol.text import text
from aiworker.storage import cluster as cluster_module
from aiworker.storage import health

KEYS = Keys()
STREAMS = KEYS.queues("CPU", 3)


def live_pids(r: Any) -> set[int]:
    names = [n.decode() for n in r.zrange(KEYS.workers, 0, -1)]
    found = r.mget_nonatomic([KEYS.worker(name) for name in names]) if names else []
    return {int(json.loads(raw)["pid"]) for raw in found if raw is not None}


def wait_for(r: Any, procs: list[WorkerProcess], timeout: float = 60) -> None:
    def ready() -> bool:
        for p in procs:
            if p.proc.poll() is not None:
                pytest.fail(f"worker exited with {p.proc.returncode}:\n{p.log()[-3000:]}")
        return {p.proc.pid for p in procs} <= live_pids(r)

    wait_until(ready, timeout=timeout, interval=0.1)


def pending(r: Any, consumer_part: str = "") -> set[tuple[str, str]]:
    found = set()
    for stream in STREAMS:
        try:
            rows = r.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=100_000)
        except redis.ResponseError:
            continue
        for row in rows:
            if consumer_part in row["consumer"].decode():
                found.add((stream, row["message_id"].decode()))
    return found


def reply_counts(r: Any, keys: list[str]) -> list[int]:
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    return [int(n) for n in pipe.execute()]


@pytest.mark.slow
def test_kill_9_one_of_two_workers_with_1000_jobs_over_three_masters(
    redis_cluster: Any, cluster_client: Any, tmp_path: Path
) -> None:
    """Jobs on 3 queue partitions (one per master), outputs and replies over every master; one of
    two worker processes is killed mid-run: every job completes, one reply each, statistics
    count each job once."""
    c, n, visibility = cluster_client, 1000, 2.0
    stub_model(c, "m", sleep_ms=10)
    c.hset("b", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "2", "values": "10 20"})
    pipe = c.pipeline(transaction=False)
    for i in range(n):
        pipe.hset(
            f"a{{{i}}}",
            mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "2", "values": f"{i} {-i}"},
        )
    pipe.execute()
    outputs, replies = [f"c{{{i}}}" for i in range(n)], [f"r{{{i}}}" for i in range(n)]
    assert len({redis_cluster.master_of(key) for key in outputs[:50]}) == 3
    assert len({redis_cluster.master_of(stream) for stream in STREAMS}) == 3
    settings = {
        "threads_per_queue": 2,
        "queue_partitions": 3,
        "visibility_timeout": visibility,
        "block_ms": 200,
    }
    with workers(redis_cluster.url, tmp_path, 2, **settings) as procs:
        wait_for(c, procs)
        pipe = c.pipeline(transaction=False)
        for i in range(n):
            request = ModelExecute("m", (f"a{{{i}}}", "b"), (outputs[i],))
            pipe.xadd(STREAMS[i % 3], encode_entry(request, replies[i]))  # type: ignore[arg-type]
        pipe.execute()
        wait_until(lambda: sum(reply_counts(c, replies)) >= n // 4, timeout=60)

        victim = procs[0]
        wait_until(lambda: pending(c, victim.name_prefix), timeout=30, interval=0.001)
        victim.proc.kill()
        victim.wait(10)
        held = pending(c, victim.name_prefix)
        assert held, "the killed worker held entries when it died"
        reclaim_s = elapsed_until(lambda: not held & pending(c, victim.name_prefix), timeout=60)
        print(f"held={len(held)} reclaim_s={reclaim_s:.2f}")
        wait_until(lambda: sum(reply_counts(c, replies)) >= n, timeout=120)
        assert procs[1].proc.poll() is None, "the surviving worker kept running"

    assert reply_counts(c, replies) == [1] * n, "exactly one reply per requester"
    pipe = c.pipeline(transaction=False)
    for key in replies:
        pipe.lindex(key, 0)
    assert all(json.loads(raw)["status"] == "ok" for raw in pipe.execute())
    pipe = c.pipeline(transaction=False)
    for key in outputs:
        pipe.hget(key, "blob")
    got = [np.frombuffer(blob, dtype="<f4").tolist() for blob in pipe.execute()]
    assert got == [[i + 10, 20 - i] for i in range(n)]
    assert c.infoget("m")["calls"] == n, "statistics count each job once"
    assert sum(c.xlen(stream) for stream in STREAMS) == 0 and not pending(c)


@pytest.mark.slow
def test_a_master_killed_under_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a master (the one holding the plain queue) while requesters keep sending jobs: its
    replica is promoted, no requester hangs (each call ends: done, or an error saying to retry),
    no job is answered twice, and jobs sent after the failover complete."""
    with LocalCluster() as cluster:
        client = Client.from_url(cluster.url, reply_timeout=15)
        stub_model(client, "m", sleep_ms=2)
        client.hset("a", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1", "values": "1"})
        settings = {
            "threads_per_queue": 3,
            "queue_partitions": 3,
            "visibility_timeout": 2.0,
            "block_ms": 200,
            "wait_replicas": 1,  # a step's writes reach the replica before the next step
            "wait_replicas_timeout": 500,
        }
        proc = WorkerProcess(cluster.url, tmp_path / "worker.log", **settings)
        try:
            wait_for(client, [proc])
            mine = threading.local()  # each requester's last reply key
            private_entry = client._jobs.private_entry

            def recording(request: Any) -> Any:
                reply_key, fields = private_entry(request)
                mine.key = reply_key
                return reply_key, fields

            client._jobs.private_entry = recording
            # every reply item a requester read: one left in its list afterwards is one whose DEL
            # (sent without waiting) the killed master lost, not a second answer (which differs:
            # its queue_ms and compute_ms are its own)
            read_items: set[bytes] = set()
            decode = wait_plan.decode_reply

            def reading(raw: Any) -> Any:
                read_items.add(bytes(raw))
                return decode(raw)

            monkeypatch.setattr(wait_plan, "decode_reply", reading)
            results: list[tuple[str, str, float]] = []  # (reply key, outcome, seconds)
            stop = threading.Event()

            def requester(t: int) -> None:
                n = 0
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        outcome = client.modelexecute("m", ["a", "a"], [f"o{t}.{n}"])
                    except (AIError, redis.RedisError) as exc:
                        outcome = f"{type(exc).__name__}: {exc}"
                    took = time.monotonic() - started
                    results.append((getattr(mine, "key", ""), outcome, took))
                    n += 1

            threads = [threading.Thread(target=requester, args=(t,)) for t in range(4)]
            for thread in threads:
                thread.start()
            wait_until(lambda: sum(1 for r in results if r[1] == "OK") >= 50, timeout=60)
            victim = cluster.master_of(KEYS.queue("CPU"))
            cluster.kill(victim)
            promoted = cluster.wait_promoted(victim, timeout=60)
            print(f"killed master {victim}, replica {promoted} promoted")
            done_before = len(results)
            wait_until(lambda: len(results) >= done_before + 50, timeout=60)
            stop.set()
            for thread in threads:
                thread.join(60)
                assert not thread.is_alive(), "a requester hangs"
        finally:
            proc.stop()
        errors = [r for r in results if r[1] != "OK"]
        print(f"{len(results)} calls, {len(errors)} errors: {sorted({e[1][:60] for e in errors})}")
        assert max(seconds for _key, _outcome, seconds in results) < 15 + 5
        assert sum(1 for r in results[done_before:] if r[1] == "OK") >= 40, "service resumed"
        for _key, outcome, _s in errors:
            # "retry it", or NoLiveWorker's "removed from the queue and will not run" (the
            # heartbeats lapsed while the failover lasted): both safe to send again
            assert "retry it" in outcome or "will not run" in outcome, outcome
        time.sleep(3)  # a redelivered job would answer within a visibility timeout or so
        answered = [key for key, outcome, _s in results if outcome == "OK"]
        pipe = client.pipeline(transaction=False)
        for key in answered:
            pipe.lrange(key, 0, -1)
        left = [item for items in pipe.execute() for item in items]
        assert not [item for item in left if item not in read_items], "no job answered twice"
        client.close()


@pytest.mark.slow
def test_the_gateway_follows_a_failover_of_its_seed_master() -> None:
    """The master the gateway's URL names is killed and its replica promoted: the gateway reads
    the slot map from the masters it knows and serves its clients again (it sent every command
    for that master's slots, and every keyless one, to the dead node for good), AI.* commands
    too (their client started from the URL's node alone)."""
    from test_gateway import running_gateway

    with LocalCluster() as cluster:
        seed = cluster.ports[0]
        keys = [f"k{n}" for n in range(60)]
        mine = [key for key in keys if cluster.master_of(key) == seed]
        with running_gateway(Settings(redis_url=cluster.url)) as gw:
            con = redis.Redis(*gw.address(), protocol=2, socket_timeout=10)
            for key in keys:
                con.set(key, key)
            con.close()
            assert redis.Redis(port=seed).wait(1, 10_000) == 1  # its replica has them
            cluster.kill(seed)
            cluster.wait_promoted(seed, timeout=60)

            def served() -> bool:
                fresh = redis.Redis(*gw.address(), protocol=2, socket_timeout=10)
                try:
                    return fresh.ping() and fresh.get(mine[0]) == mine[0].encode()
                except redis.RedisError:
                    return False  # (a lost master's first client finds it gone)
                finally:
                    fresh.close()

            wait_until(served, timeout=30)
            fresh = redis.Redis(*gw.address(), protocol=2, socket_timeout=10)
            assert [fresh.get(key) for key in keys] == [key.encode() for key in keys]
            # AI.* commands' first client starts from the masters the gateway knows
            tensor = ("AI.TENSORSET", mine[0] + "t", "FLOAT", 1, "VALUES", 1)
            assert fresh.execute_command(*tensor) == b"OK"
            fresh.close()


def replica_of(cluster: LocalCluster, port: int) -> int | None:
    """The port of a replica of the master on ``port``, as that master sees them."""
    nodes = cluster.node(port).cluster("NODES")  # {"host:port": {...}}, as redis-py parses it
    master = next(node["node_id"] for at, node in nodes.items() if at.endswith(f":{port}"))
    found = [at for at, node in nodes.items() if node["master_id"] == master]
    return int(found[0].rsplit(":", 1)[1]) if found else None


def replica_known(cluster: LocalCluster, port: int) -> int:
    """The port of the replica of the master on ``port``, once that master knows it."""
    wait_until(lambda: replica_of(cluster, port), timeout=20)
    replica = replica_of(cluster, port)
    assert replica is not None
    return replica


def serve_partially(cluster: LocalCluster) -> None:
    """Every node serves its slots while another master's are not served (a master lost for
    good): ``cluster-require-full-coverage no``, as aiworker's clients expect."""
    for port in cluster.ports:
        cluster.node(port).config_set("cluster-require-full-coverage", "no")


def tags_by(cluster: LocalCluster, port: int, on: bool, count: int = 1) -> list[str]:
    """The first ``count`` hash tags (``t0``, ``t1`` ...) whose slot is on the master on
    ``port`` (``on``), or is not."""
    found: list[str] = []
    for tag in (f"t{i}" for i in range(10_000)):
        if (cluster.master_of(tag) == port) == on:
            found.append(tag)
            if len(found) == count:
                break
    return found


def fail_over_while_blocked(cluster: LocalCluster, key: str) -> None:
    """Once a client waits for a reply (BLMOVE, or redis-cli's BLPOP) on ``key``'s master,
    promote that master's replica with CLUSTER FAILOVER (the old master becomes a replica and
    unblocks the wait)."""
    master = cluster.master_of(key)
    node = cluster.node(master)
    replica_known(cluster, master)  # after an earlier failover
    waits = ("blmove", "blpop")
    wait_until(lambda: any(c["cmd"] in waits for c in node.client_list()), timeout=10)
    promote_replica(cluster, key)


def promote_replica(cluster: LocalCluster, key: str) -> int:
    """Promote the replica of ``key``'s master with CLUSTER FAILOVER; its port. A manual failover
    gives up after 5 s when the master does not answer its handshake in time (a loaded machine,
    a replica still syncing): asked again, then forced."""
    replica = replica_known(cluster, cluster.master_of(key))
    for how in ((), (), ("FORCE",)):
        cluster.node(replica).execute_command("CLUSTER", "FAILOVER", *how)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if cluster.master_of(key) == replica:
                return replica
            time.sleep(0.05)
    pytest.fail(f"the replica on port {replica} was not promoted")


@pytest.mark.slow
def test_a_wait_unblocked_by_a_failover_of_its_reply_master_goes_on() -> None:
    """CLUSTER FAILOVER ends a BLPOP on the old master with UNBLOCKED while the job runs on: the
    blocking and asyncio clients and the gateway wait on where the reply now lives, and return
    the result."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from test_gateway import running_gateway

    import aiworker.asyncio

    with LocalCluster() as cluster:
        client = Client.from_url(cluster.url, reply_timeout=30)
        client.modelstore("m", "STUB", "CPU", json.dumps({"op": "add", "sleep_ms": 2500}))
        client.tensorset("b", np.array([1, 1], dtype=np.float32))
        for tag in ("s", "a", "g"):
            client.tensorset(f"x{{{tag}}}", np.array([1, 2], dtype=np.float32))
        worker = Worker(Settings(redis_url=cluster.url)).start()
        pool = ThreadPoolExecutor(1)
        try:
            failover = pool.submit(fail_over_while_blocked, cluster, "y{s}")
            client.modelexecute("m", ["x{s}", "b"], ["y{s}"])
            failover.result()
            assert client.tensorget("y{s}").tolist() == [2, 3]

            async def run_async() -> None:
                acon = aiworker.asyncio.Client.from_url(cluster.url, reply_timeout=30)
                try:
                    await acon.modelexecute("m", ["x{a}", "b"], ["y{a}"])
                finally:
                    await acon.aclose()

            failover = pool.submit(fail_over_while_blocked, cluster, "y{a}")
            asyncio.run(run_async())
            failover.result()
            assert client.tensorget("y{a}").tolist() == [2, 3]

            with running_gateway(Settings(redis_url=cluster.url)) as gw:
                con = redis.Redis(*gw.address(), socket_timeout=30)
                failover = pool.submit(fail_over_while_blocked, cluster, "y{g}")
                job = ("AI.MODELEXECUTE", "m", "INPUTS", 2, "x{g}", "b", "OUTPUTS", 1, "y{g}")
                assert con.execute_command(*job) == b"OK"
                failover.result()
                con.close()
            assert client.tensorget("y{g}").tolist() == [2, 3]
        finally:
            pool.shutdown()
            worker.stop(timeout=10)
            client.close()


@pytest.mark.slow
def test_a_worker_read_unblocked_by_a_failover_reads_on_from_the_promoted_master(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CLUSTER FAILOVER ends the worker's blocked XREADGROUP with UNBLOCKED ("instance state
    changed") on the old master: nothing vanished, so the worker reads on from the promoted
    master without saying its stream or group had vanished, and serves the next job."""
    caplog.set_level(logging.INFO, logger="aiworker")
    queue = KEYS.queue("CPU")
    with LocalCluster() as cluster:
        client = Client.from_url(cluster.url, reply_timeout=30)
        client.modelstore("m", "STUB", "CPU", json.dumps({"op": "add"}))
        client.tensorset("b", np.array([1, 1], dtype=np.float32))
        client.tensorset("x{q}", np.array([1, 2], dtype=np.float32))
        # a read that blocks long enough to be blocked still when the roles change
        worker = Worker(Settings(redis_url=cluster.url, block_ms=8000)).start()
        try:
            client.modelexecute("m", ["x{q}", "b"], ["y{q}"])
            master = cluster.master_of(queue)
            node = cluster.node(master)
            wait_until(
                lambda: any(c["cmd"] == "xreadgroup" for c in node.client_list()), timeout=10
            )
            promote_replica(cluster, queue)
            client.modelexecute("m", ["x{q}", "b"], ["z{q}"])
            assert client.tensorget("z{q}").tolist() == [2, 3]
        finally:
            worker.stop(timeout=10)
            client.close()
    assert "vanished" not in caplog.text


def test_the_gateway_answers_ai_commands_on_an_unserved_slot_as_redis_does() -> None:
    """A hash slot no master serves (CLUSTER DELSLOTS, a node removed with slots): AI.* commands
    on its keys get a node's `CLUSTERDOWN Hash slot not served`, as a plain command does, not
    redis-py's words or the message without its code (which cluster clients retry on)."""
    from test_gateway import running_gateway

    with (
        LocalCluster(replicas=0) as cluster,
        running_gateway(Settings(redis_url=cluster.url)) as gw,
    ):
        con = redis.Redis(*gw.address(), socket_timeout=30)
        assert con.execute_command("AI.TENSORSET", "t{a}", "FLOAT", 1, "VALUES", 1) == b"OK"
        for port in cluster.ports:
            cluster.node(port).execute_command("CLUSTER", "DELSLOTS", key_slot("t{a}"))
        commands = [
            ("GET", "t{a}"),
            ("AI.TENSORGET", "t{a}", "VALUES"),
            ("AI.TENSORSET", "u{a}", "FLOAT", 1, "VALUES", 1),
            ("AI.TENSORGET", "t{a}", "META"),
        ]
        for command in commands:
            with pytest.raises(redis.exceptions.ClusterDownError, match=r"^Hash slot not served$"):
                con.execute_command(*command)  # -CLUSTERDOWN Hash slot not served
        con.close()


@pytest.mark.slow
def test_wait_replicas_on_a_master_without_its_replica_costs_one_timeout() -> None:
    """``wait_replicas`` 1 on a master whose replica is gone (a failover promoted it, or the
    replica died): WAIT can only wait out its timeout there, and every completion on that master
    did (one job a second per thread). The node is asked for the replicas it reached instead,
    and for the full count again a few seconds later."""
    with LocalCluster() as cluster:
        client = Client.from_url(cluster.url, reply_timeout=30)
        stub_model(client, "m")
        client.hset("a", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1", "values": "1"})
        settings = Settings(
            redis_url=cluster.url, block_ms=200, wait_replicas=1, wait_replicas_timeout=1000
        )
        worker = Worker(settings).start()
        try:
            assert client.modelexecute("m", ["a", "a"], ["o{w}"]) == "OK"
            master = cluster.master_of("o{w}")
            wait_until(lambda: replica_of(cluster, master), timeout=20)
            replica = replica_of(cluster, master)
            assert replica is not None
            cluster.kill(replica)
            wait_until(lambda: cluster.node(master).info("replication")["connected_slaves"] == 0)
            started = time.monotonic()
            for n in range(8):
                assert client.modelexecute("m", ["a", "a"], [f"o{n}{{w}}"]) == "OK"
            took = time.monotonic() - started
        finally:
            worker.stop(timeout=10)
            client.close()
    # one WAIT timeout (1 s) for the first, then the replicas reached (6-8 s when each waited)
    assert took < 4.0, f"8 jobs took {took:.1f}s"


@pytest.mark.slow
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("lost", ["inputs", "outputs"])
def test_jobs_on_a_lost_master_do_not_hold_back_the_jobs_read_with_them(
    lost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master lost for good (no replica; ``cluster-require-full-coverage no``, so the other
    slots are served) holds a job's inputs (its read fails) or its outputs and reply (its
    completion fails; the model batches, so both jobs complete together), beside a job on live
    masters read in the same batch. Once the retries are spent the live job goes on at once and
    only the other is left pending (both stayed pending, reclaimed together after the visibility
    timeout, and failed together again: the live job was never answered). The worker's threads
    take the lost master's errors in their stride (deregistering raised redis-py's
    RedisClusterUnreachableError, which is no RedisError). The lost master is tried again off
    the job path (every 0.2 s here): jobs read later do not wait for it."""
    monkeypatch.setattr(cluster_module, "PROBE_EVERY_S", 0.2)
    with LocalCluster() as cluster:
        client = Client.from_url(cluster.url, reply_timeout=30)
        serve_partially(cluster)
        queue_master = cluster.master_of(KEYS.queue("CPU"))
        model = next(
            m for m in (f"m{i}" for i in range(1000)) if cluster.master_of(m) == queue_master
        )
        stub_model(client, model, batch=(2, 2, 10_000) if lost == "outputs" else (0, 0, 0))
        worker_name = f"{socket.gethostname()}:{os.getpid()}"  # an in-process worker's
        keys = (KEYS.queue("CPU"), model, KEYS.workers, KEYS.worker(worker_name))
        busy = {cluster.master_of(key) for key in keys}  # kept alive: the test is about jobs
        victim = next(p for p in cluster.master_ports() if p not in busy)  # the model by the queue

        dead, live = tags_by(cluster, victim, True)[0], tags_by(cluster, victim, False)[0]
        for tag in (dead, live):
            client.hset(
                f"a{{{tag}}}",
                mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1", "values": "1"},
            )
        replica = replica_known(cluster, victim)
        cluster.kill(replica)
        cluster.kill(victim)

        def send_pair(n: int) -> None:
            for tag in (dead, live):  # one read takes both
                source = tag if lost == "inputs" else live  # the lost job reads or writes there
                inputs = (f"a{{{source}}}", f"a{{{source}}}")
                request = ModelExecute(model, inputs, (f"o{n}{{{tag}}}",))
                entry = encode_entry(request, f"r{n}{{{tag}}}")
                client.xadd(KEYS.queue("CPU"), entry)  # type: ignore[arg-type]

        def answered(n: int) -> float:
            took = elapsed_until(lambda: client.llen(f"r{n}{{{live}}}") > 0, timeout=40)
            reply = client.lpop(f"r{n}{{{live}}}")
            assert json.loads(reply)["status"] == "ok", reply
            assert client.exists(f"o{n}{{{live}}}") == 1
            return took

        send_pair(1)
        seed = f"redis://127.0.0.1:{cluster.master_of(KEYS.queue('CPU'))}"  # the URL's may be dead
        worker = Worker(Settings(redis_url=seed, block_ms=200, visibility_timeout=120))
        worker.start()
        try:
            answered(1)  # once the retries (~12 s) are spent; before, never
            rows = client.xpending_range(KEYS.queue("CPU"), CONSUMER_GROUP, "-", "+", 10)
            assert len(rows) == 1, rows  # the lost one, left for a later reclaim
            send_pair(2)  # the lost master is known now: no retries for the live job's sake
            assert answered(2) < 5
            rows = client.xpending_range(KEYS.queue("CPU"), CONSUMER_GROUP, "-", "+", 10)
            assert len(rows) == 2, rows
            time.sleep(2)  # ten tries of the lost master, off the job path: it stays cut off
            send_pair(3)
            assert answered(3) < 5
        finally:
            worker.stop(timeout=10)
            client.close()


@pytest.mark.slow
def test_a_master_lost_for_good_takes_no_worker_out_of_sight(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A master lost for good (no replica; the other slots served) that held this worker's
    status key as it was named before (a slot of its own): the worker stays alive to clients
    (``live_workers``) past the heartbeats' age limit, and jobs that wait in the queue long
    enough for their requesters to look at the heartbeats are answered (before: the worker
    could not beat, and every requester was told NoLiveWorker, its queued job withdrawn). Its
    stop deregisters in time (deleting that key waited out the retries: it stopped without)."""
    caplog.set_level(logging.INFO, logger="aiworker")
    with LocalCluster() as cluster:
        serve_partially(cluster)
        client = Client.from_url(cluster.url, reply_timeout=30)
        queue_master = cluster.master_of(KEYS.queue("CPU"))
        model = next(
            m for m in (f"m{i}" for i in range(1000)) if cluster.master_of(m) == queue_master
        )
        stub_model(client, model, sleep_ms=700)
        busy = {cluster.master_of(key) for key in (KEYS.queue("CPU"), model, KEYS.workers)}
        victim = next(p for p in cluster.master_ports() if p not in busy)
        host = next(  # this process's worker name then puts its old status key on the victim
            h
            for h in (f"h{i}" for i in range(10_000))
            if cluster.master_of(KEYS.legacy_worker(f"{h}:{os.getpid()}")) == victim
        )
        monkeypatch.setattr(socket, "gethostname", lambda: host)
        live = tags_by(cluster, victim, False)[0]
        inputs = [f"a{{{live}}}"] * 2
        client.hset(
            inputs[0], mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1", "values": "1"}
        )
        replica = replica_known(cluster, victim)
        seed = f"redis://127.0.0.1:{queue_master}"
        worker = Worker(Settings(redis_url=seed, block_ms=200))
        worker.start()
        try:
            wait_until(lambda: client.zscore(KEYS.workers, worker.name) is not None, timeout=30)
            cluster.kill(replica)
            cluster.kill(victim)
            time.sleep(health.LIVE_FOR_S + 2)  # a heartbeat of before the kill is too old now
            assert [s["name"] for s in health.live_workers(client, KEYS)] == [worker.name]
            outcomes: list[str] = []

            def requester(n: int) -> None:  # three at once: two wait behind a running one
                try:
                    outcomes.append(str(client.modelexecute(model, inputs, [f"o{n}{{{live}}}"])))
                except AIError as exc:
                    outcomes.append(f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=requester, args=(n,)) for n in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert outcomes == ["OK"] * 3
        finally:
            worker.stop(timeout=10)
            client.close()
    assert f"worker {worker.name} stopped (" in caplog.text
    assert "without deregistering" not in caplog.text


@pytest.mark.slow
def test_a_lost_master_holding_a_queue_partition_does_not_stall_the_others() -> None:
    """Queue partitions over the three masters; one master lost for good (no replica, the other
    slots served) takes its partition with it. The worker's reads of the other partitions go on
    without a pause: a sweep of partitions does not wait out the retries for the lost one (it
    held every read of the lane meanwhile, and swept it again: live requesters saw 4 calls in
    25 s, 3 of them timed out), and no read is sent to that master while it does not answer."""
    with LocalCluster() as cluster:
        serve_partially(cluster)
        client = Client.from_url(cluster.url, reply_timeout=20)
        registry = cluster.master_of(KEYS.workers)
        model = next(m for m in (f"m{i}" for i in range(1000)) if cluster.master_of(m) == registry)
        stub_model(client, model)
        victim = next(p for p in cluster.master_ports() if p != registry)
        streams = KEYS.queues("CPU", 3)
        assert any(cluster.master_of(s) == victim for s in streams)  # it holds a partition
        tags = tags_by(cluster, victim, False, count=2)
        for tag in tags:
            client.hset(
                f"a{{{tag}}}",
                mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1", "values": "1"},
            )
        replica = replica_known(cluster, victim)
        seed = f"redis://127.0.0.1:{registry}"
        settings = Settings(redis_url=seed, block_ms=200, queue_partitions=3, threads_per_queue=3)
        worker = Worker(settings)
        worker.start()
        calls: list[tuple[float, str]] = []  # (seconds, outcome) of calls sent after the kill
        stop = threading.Event()
        killed = threading.Event()

        def requester(tag: str) -> None:
            con = Client.from_url(seed, reply_timeout=20)
            while not stop.is_set():
                after = killed.is_set()
                began = time.monotonic()
                try:
                    outcome = str(con.modelexecute(model, [f"a{{{tag}}}"] * 2, [f"o{{{tag}}}"]))
                except (AIError, redis.RedisError) as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                if after:
                    calls.append((time.monotonic() - began, outcome))
            con.close()

        threads = [threading.Thread(target=requester, args=(tag,)) for tag in tags]
        try:
            wait_until(lambda: client.zscore(KEYS.workers, worker.name) is not None, timeout=30)
            for thread in threads:
                thread.start()
            time.sleep(2)
            cluster.kill(replica)
            cluster.kill(victim)
            killed.set()
            time.sleep(20)  # past the cluster's detection of the failure and the retries' budget
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
            worker.stop(timeout=10)
            client.close()
        failed = [outcome for _s, outcome in calls if outcome != "OK"]
        assert not failed, failed[:3]
        assert len(calls) > 200 and max(seconds for seconds, _o in calls) < 5, (
            len(calls),
            max(seconds for seconds, _o in calls),
        )


@pytest.mark.slow
def test_a_lost_master_holding_a_queue_partition_delays_no_reclaim_or_lease_of_the_others() -> None:
    """One master lost for good with its queue partition: a dead worker's job on another
    partition is reclaimed on the visibility timeout's schedule, and a long job there keeps its
    lease. Before, each reclaim pass and each lease renewal that held an entry of the lost
    partition waited out the retries for it (13 s) before going on to the others: a reclaim came
    up to 15 s late, and a job running past the visibility timeout lost its lease and ran twice."""
    with LocalCluster() as cluster:
        serve_partially(cluster)
        client = Client.from_url(cluster.url, reply_timeout=20)
        registry = cluster.master_of(KEYS.workers)
        models = [m for m in (f"m{i}" for i in range(1000)) if cluster.master_of(m) == registry]
        stub_model(client, models[0])
        stub_model(client, models[1], sleep_ms=4000)  # twice the visibility timeout
        streams = KEYS.queues("CPU", 3)
        assert len({cluster.master_of(stream) for stream in streams}) == 3
        lost_at = next(n for n, s in enumerate(streams) if cluster.master_of(s) != registry)
        victim, live = cluster.master_of(streams[lost_at]), streams[lost_at + 1]
        [tag] = tags_by(cluster, victim, False)
        client.hset(
            f"a{{{tag}}}", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1", "values": "1"}
        )
        replica = replica_known(cluster, victim)
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{registry}",
            block_ms=200,
            queue_partitions=3,
            visibility_timeout=2.0,
        )
        worker = Worker(settings).start()
        reclaimed = worker.metrics.reclaimed.labels("CPU")
        failed_reclaims = worker.metrics.redis_errors.labels("reclaim")

        def job(model: str, reply: str, taken_by: str | None = None) -> str:
            """A job's entry on the live partition, read at once by ``taken_by`` if named."""
            request = ModelExecute(model, (f"a{{{tag}}}",) * 2, (f"o{{{tag}}}",))
            pipe = cluster.node(cluster.master_of(live)).pipeline(transaction=True)
            pipe.xadd(live, encode_entry(request, f"{reply}{{{tag}}}"))  # type: ignore[arg-type]
            if taken_by is not None:  # in the same MULTI: the worker cannot read it first
                pipe.xreadgroup(CONSUMER_GROUP, taken_by, {live: ">"}, count=1)
            return str(pipe.execute()[0].decode())

        try:
            wait_until(lambda: client.zscore(KEYS.workers, worker.name) is not None, timeout=30)
            cluster.kill(replica)
            cluster.kill(victim)
            conn = worker.wires.get()
            wait_until(lambda: conn.unreachable(streams[lost_at]), timeout=40)
            time.sleep(14)  # a reclaim pass under way when it was found lost has ended
            errors_before, reclaimed_before = failed_reclaims._value.get(), reclaimed._value.get()

            job(models[0], "abandoned", taken_by="gone")  # a dead worker's
            began = time.monotonic()
            assert client.blpop([f"abandoned{{{tag}}}"], 20) is not None
            reclaim_s = time.monotonic() - began

            worker.held.add(streams[lost_at], "1-1", f"{worker.name}:CPU:0")  # held at the loss
            long_job = job(models[1], "long")
            popped = client.blpop([f"long{{{tag}}}"], 20)
            assert popped is not None and b'"ok"' in popped[1]
            time.sleep(max(0.0, began + 14 - time.monotonic()))  # a pass without the fix fails
            errors_after, reclaimed_after = failed_reclaims._value.get(), reclaimed._value.get()
        finally:
            worker.stop(timeout=10)
        # its stop deleted its consumers of the other partitions (in time: not after the lost one)
        consumers = [text(c["name"]) for c in client.xinfo_consumers(live, CONSUMER_GROUP)]
        client.close()
    assert not [name for name in consumers if name.startswith(worker.name)], consumers
    assert reclaim_s < 6, f"reclaimed after {reclaim_s:.1f}s with a visibility timeout of 2 s"
    assert errors_after == errors_before, "a reclaim pass tried the lost partition again"
    assert reclaimed_after == reclaimed_before + 1, f"{long_job} lost its lease"


@pytest.mark.slow
def test_status_shows_what_the_other_masters_hold_when_one_is_lost() -> None:
    """``aiworker status`` on a cluster that lost a master holding a queue partition: the
    workers and the other partitions as usual, that partition and the master named unreachable
    (before: "Redis unreachable" and nothing else, when an operator needs it most)."""
    from test_cli import invoke

    with LocalCluster() as cluster:
        serve_partially(cluster)
        registry = cluster.master_of(KEYS.workers)
        streams = KEYS.queues("CPU", 3)
        lost = next(s for s in streams if cluster.master_of(s) != registry)
        victim = cluster.master_of(lost)
        seed = f"redis://127.0.0.1:{registry}"
        worker = Worker(Settings(redis_url=seed, block_ms=200, queue_partitions=3)).start()
        try:
            node = cluster.node(registry)
            wait_until(lambda: node.zscore(KEYS.workers, worker.name) is not None, timeout=30)
            cluster.kill(replica_known(cluster, victim))
            cluster.kill(victim)
            code, out = invoke(seed, "status", "--json")
            assert code == 0, out
            found = json.loads(out)
            assert [w["name"] for w in found["workers"]] == [worker.name]
            queues = {q["queue"]: q for q in found["queues"]}
            assert set(queues) == set(streams)
            assert queues[lost]["error"].startswith("unreachable: ")
            assert all(queues[s]["length"] == 0 for s in streams if s != lost)
            assert found["unreachable"] == [f"127.0.0.1:{victim}"]
            code, out = invoke(seed, "status")
            assert code == 0 and f"queue {lost}: unreachable: " in out, out
        finally:
            worker.stop(timeout=10)


@pytest.mark.slow
def test_the_gateway_serves_the_other_masters_when_one_is_lost_for_good() -> None:
    """The master of the first slots (the one the gateway sent commands without a key to, a
    client's CLIENT SETINFO among them) is lost for good, with its replica: the gateway's clients
    go on with the other masters (before: every client was disconnected at its first command),
    and a command for the lost master's slots gets an error without costing the client its
    connection."""
    from test_gateway import running_gateway

    with LocalCluster() as cluster:
        serve_partially(cluster)
        client = Client.from_url(cluster.url, reply_timeout=20)
        victim = cluster.master_of("{06S}")  # slot 0: the first master CLUSTER SLOTS names
        registry = cluster.master_of(KEYS.workers)
        assert key_slot("{06S}") == 0 and victim not in (
            registry,
            cluster.master_of(KEYS.queue("CPU")),
        )
        model = next(m for m in (f"m{i}" for i in range(1000)) if cluster.master_of(m) == registry)
        stub_model(client, model)
        live, dead = tags_by(cluster, victim, False)[0], tags_by(cluster, victim, True)[0]
        replica = replica_known(cluster, victim)
        seed = f"redis://127.0.0.1:{registry}"
        worker = Worker(Settings(redis_url=seed, block_ms=200))
        worker.start()
        try:
            with running_gateway(Settings(redis_url=seed)) as gw:
                cluster.kill(replica)
                cluster.kill(victim)
                for _ in range(3):  # new connections, each starting with CLIENT SETINFO
                    con = redis.Redis(*gw.address(), protocol=2, socket_timeout=30)
                    assert con.ping()
                    assert con.set(f"x{{{live}}}", 1) and con.get(f"x{{{live}}}") == b"1"
                    tensor = ("AI.TENSORSET", f"a{{{live}}}", "FLOAT", 1, "VALUES", 2)
                    assert con.execute_command(*tensor) == b"OK"
                    run = ("AI.MODELEXECUTE", model, "INPUTS", 2, f"a{{{live}}}", f"a{{{live}}}")
                    assert con.execute_command(*run, "OUTPUTS", 1, f"o{{{live}}}") == b"OK"
                    with pytest.raises(redis.ResponseError, match="cannot reach Redis"):
                        con.get(f"x{{{dead}}}")
                    assert con.ping() and con.get(f"x{{{live}}}") == b"1"  # the same connection
                    con.close()
        finally:
            worker.stop(timeout=10)
            client.close()
