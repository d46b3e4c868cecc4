"""``aiworker.asyncio.ClusterClient``: the asyncio client on Redis Cluster, against the real
3 masters + 3 replicas cluster fixture and an in-process worker whose queue is split in 3
partitions. Every method of the blocking ``ClusterClient``, its key rule, concurrent requests
from one event loop, a reply on another master than its job's stream, MOVED on the job path, a
lost connection while a job waits, ``aclose()`` while jobs wait (the single Redis client's too),
connections Redis closed while idle, ``max_connections``, ``from_url`` of a server that never
answers, and the round trips one modelexecute costs (equal to the blocking cluster client's)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from conftest import stub_blob, torch_blob, wait_until
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff

import aiworker.asyncio
from aiworker import AIError, NoLiveWorker, Worker
from aiworker.asyncio import ClientClosed
from aiworker.asyncio.client import PROBE_TIMEOUT_S
from aiworker.asyncio.cluster_wire import AsyncClusterWire
from aiworker.client import placement
from aiworker.protocol import messages
from aiworker.protocol.keys import key_slot
from aiworker.storage.cluster import ClusterWire, command_key, slot_of

T = TypeVar("T")

SCRIPT = """
def pre(tensors: List[Tensor], keys: List[str], args: List[str]):
    x = tensors[0]
    return x * 2, x + float(args[0])
"""
KEYS_ON_EVERY_MASTER = ["t1", "t2", "t3", "t4", "t5", "t6"]


def arun(cluster: Any, body: Callable[[Any], Awaitable[T]], **options: Any) -> T:
    """``body`` run with an asyncio client of the cluster, made as a user makes one."""

    async def main() -> T:
        con = aiworker.asyncio.Client.from_url(cluster.url, reply_timeout=30, **options)
        try:
            return await body(con)
        finally:
            await con.aclose()

    return asyncio.run(main())


def masters_of(cluster: Any, *keys: str) -> set[int]:
    return {cluster.master_of(key) for key in keys}


def test_from_url_gives_an_asyncio_cluster_client(redis_cluster: Any, cluster_client: Any) -> None:
    async def body(con: Any) -> tuple[type, Any]:
        return type(con), await con.ping()

    kind, pong = arun(redis_cluster, body)
    assert kind is aiworker.asyncio.ClusterClient and pong is True
    assert issubclass(kind, redis.asyncio.cluster.RedisCluster)


@pytest.mark.parametrize("decode", [False, True])
def test_a_new_clients_first_call_may_be_a_users_own_command(
    redis_cluster: Any, cluster_client: Any, decode: bool
) -> None:
    """A new client's first call a keyed Redis command of the user's: it failed with redis-py's
    "'AsyncCommandsParser' object has no attribute 'node'" when the client's own slot-map check
    ran before redis-py had read the cluster."""

    async def body(con: Any) -> tuple[Any, Any]:
        return await con.set("{first}k", "v"), await con.get("{first}k")

    done, got = arun(redis_cluster, body, decode_responses=decode)
    assert done is True and got == ("v" if decode else b"v")


def test_tensors_models_and_scripts_on_every_master(
    redis_cluster: Any, cluster_client: Any
) -> None:
    pytest.importorskip("torch")
    big = np.arange(600_000, dtype=np.float32)  # a large blob: staged write in the same slot
    blob = torch_blob("add")

    async def body(con: Any) -> None:
        for n, key in enumerate(KEYS_ON_EVERY_MASTER):
            assert await con.tensorset(key, np.full((2, 3), n, dtype=np.float32)) == "OK"
        for n, key in enumerate(KEYS_ON_EVERY_MASTER):
            np.testing.assert_array_equal(await con.tensorget(key), np.full((2, 3), n))
        assert await con.tensorget("t1", meta_only=True) == {"dtype": "FLOAT", "shape": [2, 3]}
        assert await con.tensorset("big", big) == "OK"
        np.testing.assert_array_equal(await con.tensorget("big"), big)
        await con.set("plain", "x")
        with pytest.raises(aiworker.WrongTypeError):
            await con.tensorset("plain", np.zeros(1, np.float32))

        assert await con.config("MODEL_CHUNK_SIZE", 100) == "OK"  # a chunked model
        assert await con.modelstore("m{models}", "TORCH", "CPU", blob, tag="v1") == "OK"
        assert int(await con.hget("m{models}", "chunks")) == -(-len(blob) // 100)
        got = await con.modelget("m{models}")
        assert got["tag"] == "v1" and b"".join(got["blob"]) == blob
        assert (await con.modelget("m{models}", meta_only=True))["backend"] == "TORCH"
        with pytest.warns(UserWarning, match="Experimental"):
            assert await con.modelscan() == [["m{models}", "v1"]]
        assert await con.modeldel("m{models}") == "OK"
        with pytest.warns(UserWarning, match="Experimental"):
            assert await con.modelscan() == []

        assert await con.scriptstore("s", "CPU", SCRIPT, ["pre"], tag="s1") == "OK"
        script = await con.scriptget("s")
        assert script == {"device": "CPU", "tag": "s1", "entry points": [b"pre"], "source": SCRIPT}
        assert await con.scriptdel("s") == "OK"
        with pytest.raises(redis.ResponseError):
            await con.scriptget("s")

    arun(redis_cluster, body)
    assert len(masters_of(redis_cluster, *KEYS_ON_EVERY_MASTER)) == 3
    assert cluster_client.tensorget("t6").tolist() == [[5.0] * 3] * 2  # the blocking client agrees
    assert not list(cluster_client.scan_iter("aiworker:tmp:*"))


def test_decode_responses_of_a_cluster_client_decodes_the_users_own_replies_only(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """``decode_responses=True`` decodes what the user's redis.asyncio calls return, not what
    aiworker reads: blobs, models and jobs' replies."""
    pytest.importorskip("torch")  # a model blob that is not UTF-8
    cluster_client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    cluster_client.tensorset("x", np.array([1, 2], np.float32))

    async def body(con: Any) -> None:
        assert type(con) is aiworker.asyncio.ClusterClient
        assert (await con.tensorget("x")).tolist() == [1, 2]
        assert (await con.modelget("m"))["blob"] == torch_blob("add")
        assert await con.modelexecute("m", ["x", "x"], ["y"]) == "OK"
        await con.set("native", "é")
        assert await con.get("native") == "é"

    arun(redis_cluster, body, decode_responses=True)


def test_jobs_with_keys_on_three_masters(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """modelexecute, scriptexecute, a DAG with LOAD and PERSIST, run: inputs, models and
    scripts on any master, outputs (and so the reply lists) on every master."""
    pytest.importorskip("torch")
    outputs = [f"out{n}" for n in range(6)]
    assert len(masters_of(redis_cluster, *outputs)) == 3
    assert len(masters_of(redis_cluster, "m", "a", "b", "s", "x")) > 1

    async def body(con: Any) -> None:
        await con.modelstore("m", "TORCH", "CPU", torch_blob("add"))
        await con.tensorset("a", np.array([1, 2], dtype=np.float32))
        await con.tensorset("b", np.array([10, 20], dtype=np.float32))
        for key in outputs:
            assert await con.modelexecute("m", ["a", "b"], [key]) == "OK"
            np.testing.assert_array_equal(await con.tensorget(key), [11, 22])
        assert (await con.infoget("m"))["calls"] == 6

        await con.tensorset("x", np.array([1, 2], dtype=np.float32))
        await con.scriptstore("s", "CPU", SCRIPT, ["pre"])
        done = await con.scriptexecute(
            "s", "pre", inputs=["x"], args=["10"], outputs=["d{r}", "e{r}"]
        )
        assert done == "OK"
        np.testing.assert_array_equal(await con.tensorget("d{r}"), [2, 4])
        np.testing.assert_array_equal(await con.tensorget("e{r}"), [11, 12])

        dag = con.dag(load=["x"], persist=["sum"])
        dag.scriptexecute("s", "pre", inputs=["x"], args=["10"], outputs=["double", "shifted"])
        results = (
            await dag.modelexecute("m", ["double", "shifted"], ["sum"])
            .tensorget("shifted")
            .execute()
        )
        assert results[:2] == ["OK", "OK"]
        np.testing.assert_array_equal(results[2], [11, 12])
        np.testing.assert_array_equal(await con.tensorget("sum"), [13, 16])
        assert not await con.exists("double")  # only PERSIST keys reach the keyspace

        out = await con.run("m", {"p": np.ones(2, np.float32), "q": np.ones(2, np.float32)}, ["c"])
        np.testing.assert_array_equal(out["c"], [2, 2])
        assert (await con.infoget("m"))["calls"] == 8 and (await con.infoget("s"))["calls"] == 2

    arun(redis_cluster, body)
    assert cluster_client.tensorget("out5").tolist() == [11.0, 22.0]
    assert not list(cluster_client.scan_iter("aiworker:reply:*")), "every reply taken"


def test_the_key_rule(redis_cluster: Any, cluster_client: Any, cluster_worker: Worker) -> None:
    """Written keys in two slots are refused with RedisAI's CROSSSLOT before anything is
    queued, as the blocking client refuses them; inputs and model anywhere are fine."""
    c = cluster_client
    c.modelstore("pair", "STUB", "CPU", stub_blob("identity"))
    c.tensorset("in", np.array([1, 2], dtype=np.float32))
    assert key_slot("x{u1}") != key_slot("y{u2}")
    streams = cluster_worker.lanes["CPU"].queues

    async def body(con: Any) -> None:
        with pytest.raises(AIError, match=messages.CROSSSLOT):
            await con.modelexecute("pair", ["in", "in"], ["x{u1}", "y{u2}"])
        with pytest.raises(AIError, match=messages.CROSSSLOT):
            dag = con.dag(load=["in"], persist=["p{a}", "q{b}"]).tensorset(
                "p{a}", [1], dtype="float"
            )
            await dag.tensorset("q{b}", [2], dtype="float").execute()
        assert sum([await con.xlen(stream) for stream in streams]) == 0, "nothing queued"
        assert await con.modelexecute("pair", ["in", "in"], ["x{u1}", "y{u1}"]) == "OK"

    arun(redis_cluster, body)
    assert c.tensorget("y{u1}").tolist() == [1.0, 2.0]
    assert not c.exists("x{u2}") and not c.exists("p{a}")


def test_fifty_concurrent_modelexecutes_from_one_event_loop(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """50 gathered modelexecutes, their outputs over every master: each answered with its own
    result, each job on the queue partition of its reply's master."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    for n in range(50):
        c.tensorset(f"a{{{n}}}", np.array([n, -n], dtype=np.float32))
    streams = cluster_worker.lanes["CPU"].queues
    outputs = [f"c{{{n}}}" for n in range(50)]
    assert len(masters_of(redis_cluster, *outputs)) == 3

    async def body(con: Any) -> list[Any]:
        await con.modelexecute("m", ["a{0}", "a{0}"], ["c{0}"])  # the partitions are known
        return await asyncio.gather(
            *(con.modelexecute("m", [f"a{{{n}}}"] * 2, [outputs[n]]) for n in range(50))
        )

    assert arun(redis_cluster, body) == ["OK"] * 50
    assert [c.tensorget(key).tolist() for key in outputs] == [[2 * n, -2 * n] for n in range(50)]
    assert c.infoget("m")["calls"] == 51
    added = {s: c.xinfo_stream(s)["entries-added"] for s in streams}
    assert sum(added.values()) == 51 and all(added.values()), added  # every partition took some
    for stream, count in added.items():  # each job's XADD and BLPOP went to one master
        expected = sum(
            1 for key in outputs if redis_cluster.master_of(key) == redis_cluster.master_of(stream)
        )
        assert count == expected + (stream == _partition_of(redis_cluster, streams, "c{0}")), added


def _partition_of(cluster: Any, streams: list[str], key: str) -> str:
    [stream] = [s for s in streams if cluster.master_of(s) == cluster.master_of(key)]
    return stream


def test_a_reply_on_another_master_than_the_jobs_stream(
    redis_cluster: Any, cluster_client: Any, cluster_settings: Any
) -> None:
    """A worker serving the plain queue only (one partition): a job whose outputs, and so its
    reply list, live on another master than that stream sends its XADD and its first BLPOP to two
    masters in one round trip; the worker's reply is pushed on the reply's master."""
    c = cluster_client
    queue = c.keyspace.queue("CPU")
    output = next(k for k in (f"o{{{n}}}" for n in range(20)) if
                  redis_cluster.master_of(k) != redis_cluster.master_of(queue))  # fmt: skip
    c.modelstore("m", "STUB", "CPU", stub_blob("add", sleep_ms=50))
    c.tensorset("a", np.array([1, 2], dtype=np.float32))
    w = Worker(cluster_settings.replace(queue_partitions=1)).start()
    rounds: list[set[int]] = []
    pipeline = AsyncClusterWire.pipeline

    async def watched(wire: AsyncClusterWire, commands: Any) -> Any:
        rounds.append({wire.masters.address(slot_of(command_key(cmd)))[1] for cmd in commands})
        return await pipeline(wire, commands)

    try:
        wait_until(lambda: c.zcard(c.keyspace.workers) > 0, timeout=10)

        async def body(con: Any) -> tuple[Any, Any]:
            con._jobs.wire.pipeline = lambda commands: watched(con._jobs.wire, commands)
            done = await con.modelexecute("m", ["a", "a"], [output])
            out = await con.run(
                "m", {"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}, ["z"]
            )
            return done, out

        done, out = arun(redis_cluster, body)
    finally:
        w.stop(timeout=10)
    assert done == "OK" and c.tensorget(output).tolist() == [2.0, 4.0]
    assert out["z"].tolist() == [2.0]
    assert c.xinfo_stream(queue)["entries-added"] == 2
    both = {redis_cluster.master_of(queue), redis_cluster.master_of(output)}
    assert both <= rounds[0], "the XADD and the BLPOP went to two masters in one round"


def test_moved_on_the_job_path_is_followed(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """A stale slot cache (every slot on one master, as after a resharding): the job's XADD and
    BLPOP are redirected with MOVED, followed, and the cache learns where the slots are."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.array([3], dtype=np.float32))
    outputs = [f"k{{{n}}}" for n in range(6)]
    assert len(masters_of(redis_cluster, *outputs)) == 3

    async def body(con: Any) -> list[Any]:
        await con.modelexecute("m", ["a", "a"], ["warm"])
        manager = con.nodes_manager
        one = manager.get_node_from_slot(key_slot("t1"))
        for slot in list(manager.slots_cache):
            manager.slots_cache[slot] = [one]
        results = [await con.modelexecute("m", ["a", "a"], [key]) for key in outputs]
        learnt = {key: manager.get_node_from_slot(key_slot(key)).port for key in outputs}
        return [results, learnt]

    results, learnt = arun(redis_cluster, body)
    assert results == ["OK"] * 6
    assert learnt == {key: redis_cluster.master_of(key) for key in outputs}
    assert [c.tensorget(key).tolist() for key in outputs] == [[6.0]] * 6


def test_a_wait_rides_out_a_lost_connection(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """The connection a job waits on for its reply is killed (CLIENT KILL on the reply's master):
    the wait goes on, on a new connection, and the job is answered once."""
    c = cluster_client
    c.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
    c.tensorset("a", np.array([1], dtype=np.float32))
    node = redis_cluster.node(redis_cluster.master_of("r{9}"))
    killed: list[int] = []

    def kill_the_waiter() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not killed:
            for client in node.client_list():
                if client["cmd"] == "blmove":  # the wait for the reply
                    node.client_kill_filter(_id=client["id"])
                    killed.append(int(client["id"]))
            time.sleep(0.01)

    async def body(con: Any) -> Any:
        killer = threading.Thread(target=kill_the_waiter)
        killer.start()
        try:
            return await con.modelexecute("slow", ["a", "a"], ["r{9}"])
        finally:
            await asyncio.to_thread(killer.join)

    assert arun(redis_cluster, body) == "OK"
    assert killed, "a waiting connection was killed"
    assert c.tensorget("r{9}").tolist() == [2.0]
    assert c.infoget("slow")["calls"] == 1


def test_no_live_worker_on_the_cluster(redis_cluster: Any, cluster_client: Any) -> None:
    """Without a worker the wait ends with NoLiveWorker and the entry is taken back from its
    stream (the heartbeats and the withdrawal read on the cluster)."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.ones(2, np.float32))

    async def body(con: Any) -> list[Any]:
        return await asyncio.gather(
            *(con.modelexecute("m", ["a", "a"], [f"c{n}"]) for n in range(5)),
            return_exceptions=True,
        )

    results = arun(redis_cluster, body)
    assert all(isinstance(r, NoLiveWorker) and r.removed for r in results), results
    assert c.xlen(c.keyspace.queue("CPU")) == 0


def waiting_connections(cluster: Any) -> set[tuple[int, str]]:
    """(master port, client id) of the connections whose last command was a BLMOVE (a wait for
    a reply): a client's job path (workers send none)."""
    return {
        (port, client["id"])
        for port in cluster.master_ports()
        for client in cluster.node(port).client_list()
        if client["cmd"] == "blmove"
    }


def test_aclose_ends_the_waits_of_jobs_in_flight_and_leaves_no_connection(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """``aclose()`` while jobs wait for their replies: the waits end at once with an error that
    says the job may or may not run, and no connection of the client stays open (the waits went
    on, on connections opened again after the close that nothing closed). The client can still
    be used afterwards, as redis-py's."""
    c = cluster_client
    c.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=2500))
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.array([1], dtype=np.float32))

    before = waiting_connections(redis_cluster)

    def waits() -> int:
        return len(waiting_connections(redis_cluster) - before)

    async def body(con: Any) -> list[Any]:
        jobs = [
            asyncio.ensure_future(con.modelexecute("slow", ["a", "a"], [f"s{{{n}}}"]))
            for n in range(3)
        ]
        await asyncio.to_thread(wait_until, lambda: waits() >= 3)
        await con.aclose()
        ended = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 2)
        await asyncio.sleep(0.3)
        left = [waits(), len(con._jobs.wire._all)]
        again = await con.modelexecute("m", ["a", "a"], ["again"])
        return [ended, left, again]

    ended, left, again = arun(redis_cluster, body)
    assert all(isinstance(e, ClientClosed) for e in ended), ended
    assert "may or may not" in str(ended[0])
    assert left == [0, 0]
    assert again == "OK"
    assert c.tensorget("again").tolist() == [2.0]


def test_redis_pys_own_close_to_start_over_leaves_the_jobs_waiting(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """redis-py before 8 calls ``aclose()`` itself after a lost connection or a failover, to
    connect again at its next command: the jobs in flight ended with ClientClosed then (an idle
    client ``timeout`` was enough). Only a user's close ends them."""
    c = cluster_client
    c.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=800))
    c.tensorset("a", np.array([1], dtype=np.float32))
    # a function of a module of redis-py's, as its command path calls aclose()
    scope: dict[str, Any] = {"__name__": "redis.asyncio.cluster"}
    exec("async def start_over(client):\n    await client.aclose()\n", scope)

    async def body(con: Any) -> list[Any]:
        jobs = [
            asyncio.ensure_future(con.modelexecute("slow", ["a", "a"], [f"w{{{n}}}"]))
            for n in range(3)
        ]
        await asyncio.sleep(0.3)
        await scope["start_over"](con)
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    assert arun(redis_cluster, body) == ["OK"] * 3


def test_aclose_ends_the_waits_of_a_single_redis_clients_jobs_too(
    client: Any, worker: Worker, redis_server: Any
) -> None:
    """The single Redis client's ``aclose()`` while jobs wait ends them at once with the same
    error (its reply reader was stopped: they waited out their whole limit, then said no reply
    came from a worker that had answered); a job submitted as it closes does not hang."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
    client.tensorset("a", np.array([1], dtype=np.float32))

    async def main() -> list[Any]:
        con = aiworker.asyncio.Client.from_url(redis_server.url, reply_timeout=20)
        assert type(con) is aiworker.asyncio.Client
        jobs = [
            asyncio.ensure_future(con.modelexecute("slow", ["a", "a"], [f"o{n}"])) for n in range(2)
        ]
        await asyncio.sleep(0.5)
        queued = asyncio.ensure_future(con.modelexecute("slow", ["a", "a"], ["late"]))
        await asyncio.sleep(0)  # its metadata read in flight, or its XADD about to be sent
        started = time.monotonic()
        await con.aclose()
        ended = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 5)
        took = time.monotonic() - started
        late = await asyncio.wait_for(asyncio.gather(queued, return_exceptions=True), 25)
        return [ended, took, late]

    ended, took, late = asyncio.run(main())
    assert all(isinstance(e, ClientClosed) for e in ended), ended
    assert took < 2.0
    assert late[0] == "OK" or isinstance(late[0], ClientClosed), late


def test_connections_the_server_closed_while_idle_are_not_used(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis closes idle clients (``timeout``): the job path's free connections are dead by the
    next job, which opens new ones instead of losing its round trip on one (a lost XADD round:
    a slot map refresh and a failover pause, a second or so)."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.array([1], dtype=np.float32))
    lost: list[Exception] = []
    original = AsyncClusterWire._lost

    async def counted(self: Any, error: Exception, replies: list[Any]) -> Any:
        lost.append(error)
        return await original(self, error, replies)

    monkeypatch.setattr(AsyncClusterWire, "_lost", counted)

    async def body(con: Any) -> list[Any]:
        keys = [f"i{{{n}}}" for n in range(6)]
        await asyncio.gather(*(con.modelexecute("m", ["a", "a"], [key]) for key in keys))
        for port in redis_cluster.master_ports():
            redis_cluster.node(port).config_set("timeout", 1)
        try:
            await asyncio.sleep(2.5)  # Redis closes them (it looks about once a second)
            return [await con.modelexecute("m", ["a", "a"], [key]) for key in keys]
        finally:
            for port in redis_cluster.master_ports():
                redis_cluster.node(port).config_set("timeout", 0)

    assert arun(redis_cluster, body) == ["OK"] * 6
    assert lost == []


def test_max_connections_bounds_the_connections_jobs_hold(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """Each waiting job holds a connection: a burst of them opened one each to its reply's
    master, whatever redis-py's ``max_connections`` said, up to Redis' ``maxclients`` (then
    "max number of clients reached" for jobs and workers alike). Given, it bounds them per
    node, the jobs beyond it waiting their turn, and every job is answered."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add", sleep_ms=100))
    c.tensorset("a", np.array([1], dtype=np.float32))
    outputs = [f"b{{{n}}}" for n in range(40)]
    assert len(masters_of(redis_cluster, *outputs)) == 3

    before = waiting_connections(redis_cluster)

    def waits() -> dict[int, int]:
        held = waiting_connections(redis_cluster) - before
        return {port: sum(at == port for at, _ in held) for port in redis_cluster.master_ports()}

    async def body(con: Any) -> list[Any]:
        results = await asyncio.gather(*(con.modelexecute("m", ["a", "a"], [k]) for k in outputs))
        return [results, waits()]

    results, held = arun(redis_cluster, body, max_connections=4)
    assert results == ["OK"] * len(outputs)
    assert max(held.values()) <= 4, held
    assert [c.tensorget(key).tolist() for key in outputs] == [[2.0]] * len(outputs)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections and never answers (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # the kernel completes connections: nobody accepts or answers
    yield server.getsockname()[1]
    server.close()


@pytest.mark.parametrize(
    ("query", "options"),
    [
        ("?socket_timeout=30&socket_connect_timeout=30", {}),
        ("", {"socket_timeout": 30, "retry_on_timeout": True}),
        ("", {"socket_timeout": 30, "retry": Retry(ConstantBackoff(0.1), 5)}),
    ],
)
def test_from_url_of_a_server_that_never_answers_holds_the_loop_at_most_the_probe(
    silent_port: int, query: str, options: dict[str, Any]
) -> None:
    """``from_url`` asks the server whether it is a cluster node on a blocking connection: it
    holds the event loop ``PROBE_TIMEOUT_S`` at most, whatever the URL's own options say (a
    ``socket_timeout`` in the URL held it that long) and without retries."""

    async def main() -> tuple[type, float]:
        started = time.monotonic()
        con = aiworker.asyncio.Client.from_url(
            f"redis://127.0.0.1:{silent_port}/0{query}", **options
        )
        took = time.monotonic() - started
        await con.aclose()
        return type(con), took

    kind, took = asyncio.run(main())
    assert kind is aiworker.asyncio.Client
    assert took < PROBE_TIMEOUT_S + 1.0


# round trips -------------------------------------------------------------------------------


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every round trip the test's own thread makes to the cluster, blocking or asyncio: a job
    path's (``ClusterWire``, ``AsyncClusterWire``) or redis-py's (a command, a pipeline). The
    worker's threads are not counted. Partitions are read once, at the first job, and not
    again."""
    me = threading.get_ident()
    seen: list[str] = []
    monkeypatch.setattr(placement, "PARTITIONS_REFRESH_S", 3600.0)

    def counting(owner: Any, name: str) -> None:
        original = getattr(owner, name)
        if asyncio.iscoroutinefunction(original):

            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                if threading.get_ident() == me:
                    seen.append(f"{owner.__name__}.{name}")
                return await original(*args, **kwargs)

            monkeypatch.setattr(owner, name, counted_async)
        else:

            def counted(*args: Any, **kwargs: Any) -> Any:
                if threading.get_ident() == me:
                    seen.append(f"{owner.__name__}.{name}")
                return original(*args, **kwargs)

            monkeypatch.setattr(owner, name, counted)

    counting(ClusterWire, "pipeline")
    counting(redis.cluster.RedisCluster, "execute_command")
    counting(redis.cluster.ClusterPipeline, "execute")
    counting(AsyncClusterWire, "pipeline")
    counting(redis.asyncio.cluster.RedisCluster, "execute_command")
    counting(redis.asyncio.cluster.ClusterPipeline, "execute")
    yield seen


def test_round_trips_per_modelexecute_equal_the_blocking_clients(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker, round_trips: list[str]
) -> None:
    """Once the model's queue and every partition's length limit are known, one modelexecute
    costs the asyncio cluster client one round trip (the XADD and the first BLPOP, on the job
    path), as it costs the blocking ``ClusterClient``."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.array([1], dtype=np.float32))
    outputs = [f"rt{{{n}}}" for n in range(12)]
    assert len(masters_of(redis_cluster, *outputs)) == 3
    jobs = 20

    for key in outputs:  # warm up: the model's queue, every partition's limit
        c.modelexecute("m", ["a", "a"], [key])
    round_trips.clear()
    for n in range(jobs):
        assert c.modelexecute("m", ["a", "a"], [outputs[n % len(outputs)]]) == "OK"
    blocking = list(round_trips)

    async def body(con: Any) -> list[str]:
        for key in outputs:
            await con.modelexecute("m", ["a", "a"], [key])
        round_trips.clear()
        for n in range(jobs):
            assert await con.modelexecute("m", ["a", "a"], [outputs[n % len(outputs)]]) == "OK"
        return list(round_trips)

    asynchronous = arun(redis_cluster, body)
    assert blocking == ["ClusterWire.pipeline"] * jobs
    assert asynchronous == ["AsyncClusterWire.pipeline"] * jobs
    assert len(asynchronous) == len(blocking) == jobs, "one round trip a modelexecute, both"
