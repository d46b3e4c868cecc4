"""Redis Cluster end to end: the core paths (tensors, chunked models, MODELEXECUTE, scripts, DAGs
with LOAD/PERSIST, batching, the redis-cli path, AI.INFO/AI.CONFIG, the CLI) against a real
3 masters + 3 replicas cluster, with an in-process worker whose queue is split in 3 partitions.
Keys are spread over the masters on purpose: inputs, models and scripts live anywhere; only a
request's written keys and its reply share a slot (the key rule, ``protocol.slots``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from cluster import WireWrapper
from conftest import stub_blob, torch_blob, wait_until, worker_env

from aiworker import AIError, Client, ClusterClient, Worker, WrongTypeError
from aiworker.embedded import cli_program, free_port
from aiworker.protocol import messages
from aiworker.protocol.keys import key_slot
from aiworker.protocol.requests import ModelExecute
from aiworker.storage import health

REDIS_CLI = cli_program()
SCRIPT = """
def pre(tensors: List[Tensor], keys: List[str], args: List[str]):
    x = tensors[0]
    return x * 2, x + float(args[0])
"""


def masters_of(cluster: Any, *keys: str) -> set[int]:
    return {cluster.master_of(key) for key in keys}


def cluster_masters(client: Any, key: str) -> str:
    """The name of the master that serves ``key``, as the cluster client sees it."""
    return str(client.get_node_from_key(key).name)


def test_a_cluster_is_found_from_any_node(redis_cluster: Any, cluster_client: Any) -> None:
    assert isinstance(cluster_client, ClusterClient)
    other = Client.from_url(f"redis://127.0.0.1:{redis_cluster.ports[-1]}/0")
    assert isinstance(other, ClusterClient)
    other.close()


def test_a_caller_that_knows_whether_redis_is_a_cluster_says_so(redis_cluster: Any) -> None:
    """``from_url(cluster=...)`` asks nothing: a cluster node that cannot be reached now is an
    error, not a single Redis (whose client fails on most keys of a cluster: the gateway, which
    knows it serves one, made its users' clients by asking, and kept such a client for good)."""
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    assert type(Client.from_url(unreachable)) is Client  # asked: taken for a single Redis
    with pytest.raises(redis.exceptions.RedisClusterException, match="Connection refused"):
        Client.from_url(unreachable, cluster=True)
    for cluster, kind in ((True, ClusterClient), (False, Client)):
        told = Client.from_url(redis_cluster.url, cluster=cluster)
        assert type(told) is kind
        told.close()


def test_tensors_on_every_master(redis_cluster: Any, cluster_client: Any) -> None:
    c = cluster_client
    keys = ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert len(masters_of(redis_cluster, *keys)) == 3
    for n, key in enumerate(keys):
        c.tensorset(key, np.full((2, 3), n, dtype=np.float32))
    for n, key in enumerate(keys):
        np.testing.assert_array_equal(c.tensorget(key), np.full((2, 3), n))
    big = np.arange(600_000, dtype=np.float32)  # a large blob: temporary key in the same slot
    c.tensorset("big", big)
    np.testing.assert_array_equal(c.tensorget("big"), big)
    assert c.tensorget("t1", meta_only=True) == {"dtype": "FLOAT", "shape": [2, 3]}
    c.set("plain", "x")
    with pytest.raises(WrongTypeError):
        c.tensorset("plain", np.zeros(1, np.float32))


def test_decode_responses_of_a_cluster_client_decodes_the_users_own_replies_only(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """``decode_responses=True`` (an argument, or the URL's option) decodes what the user's
    redis-py calls return, not what aiworker reads: blobs, models, and the replies of jobs that
    outlast the first wait for them."""
    pytest.importorskip("torch")  # a model blob that is not UTF-8
    c = cluster_client
    c.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    c.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1200))
    c.tensorset("x", np.array([1, 2], np.float32))
    for url, options in [
        (redis_cluster.url, {"decode_responses": True}),
        (redis_cluster.url + "?decode_responses=true", {}),
    ]:
        decoding = Client.from_url(url, reply_timeout=30, **options)
        try:
            assert isinstance(decoding, ClusterClient)
            assert decoding.tensorget("x").tolist() == [1, 2]
            assert decoding.modelget("m")["blob"] == torch_blob("add")
            assert decoding.modelexecute("slow", ["x", "x"], ["y"]) == "OK"
            decoding.set("native", "é")
            assert decoding.get("native") == "é"
        finally:
            decoding.close()


@pytest.mark.filterwarnings("ignore:Experimental")
def test_model_chunk_size_and_chunked_models(cluster_client: Any) -> None:
    """RedisAI's MODEL_CHUNK_SIZE failed with MOVED on clusters: here it is a hash field like any
    other, and a chunked model is stored and read back whole."""
    c = cluster_client
    assert c.config("MODEL_CHUNK_SIZE", 100) == "OK"
    assert c.config("MODEL_CHUNK_SIZE") == 100
    blob = torch_blob("add")
    assert c.modelstore("m{models}", "TORCH", "CPU", blob, tag="v1") == "OK"
    assert int(c.hget("m{models}", "chunks")) == -(-len(blob) // 100)
    got = c.modelget("m{models}")
    assert got["tag"] == "v1" and b"".join(got["blob"]) == blob
    assert c.modelscan() == [["m{models}", "v1"]]
    assert c.modeldel("m{models}") == "OK"
    assert c.modelscan() == []


def test_modelexecute_with_keys_on_three_masters(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    c = cluster_client
    c.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    c.tensorset("a", np.array([1, 2], dtype=np.float32))
    c.tensorset("b", np.array([10, 20], dtype=np.float32))
    assert len(masters_of(redis_cluster, "m", "a", "b")) > 1
    for n in range(6):  # outputs (and so the reply lists) on every master
        assert c.modelexecute("m", ["a", "b"], [f"out{n}"]) == "OK"
        np.testing.assert_array_equal(c.tensorget(f"out{n}"), [11, 22])
    assert len(masters_of(redis_cluster, *(f"out{n}" for n in range(6)))) == 3
    info = c.infoget("m")  # counted before each requester heard back
    assert info["calls"] == 6 and info["errors"] == 0


def test_the_key_rule(cluster_client: Any, cluster_worker: Worker) -> None:
    """Outputs in two slots are refused before anything is queued, with RedisAI's error; inputs
    and model anywhere are fine."""
    c = cluster_client
    c.modelstore("pair", "STUB", "CPU", stub_blob("identity"))
    c.tensorset("in", np.array([1, 2], dtype=np.float32))
    assert key_slot("x{u1}") != key_slot("y{u2}")
    with pytest.raises(AIError, match=messages.CROSSSLOT):
        c.modelexecute("pair", ["in", "in"], ["x{u1}", "y{u2}"])
    assert c.xlen("aiworker:queue:CPU") == 0
    assert c.modelexecute("pair", ["in", "in"], ["x{u1}", "y{u1}"]) == "OK"
    assert c.tensorget("x{u1}").tolist() == [1.0, 2.0]


def test_scripts_and_dags(cluster_client: Any, cluster_worker: Worker) -> None:
    pytest.importorskip("torch")
    c = cluster_client
    c.tensorset("x", np.array([1, 2], dtype=np.float32))
    c.scriptstore("s", "CPU", SCRIPT, ["pre"])
    c.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    assert c.scriptexecute("s", "pre", inputs=["x"], args=["10"], outputs=["d{r}", "e{r}"]) == "OK"
    np.testing.assert_array_equal(c.tensorget("e{r}"), [11, 12])
    results = (
        c.dag(load=["x"], persist=["sum"])
        .scriptexecute("s", "pre", inputs=["x"], args=["10"], outputs=["double", "shifted"])
        .modelexecute("m", ["double", "shifted"], ["sum"])
        .tensorget("shifted")
        .execute()
    )
    assert results[:2] == ["OK", "OK"]
    np.testing.assert_array_equal(results[2], [11, 12])
    np.testing.assert_array_equal(c.tensorget("sum"), [13, 16])
    assert c.infoget("m")["calls"] == 1 and c.infoget("s")["calls"] == 2
    with pytest.raises(AIError, match=messages.CROSSSLOT):
        dag = c.dag(load=["x"], persist=["p{a}", "q{b}"]).tensorset("p{a}", [1], dtype="float")
        dag.tensorset("q{b}", [2], dtype="float").execute()
    out = c.run("m", {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}, ["c"])
    np.testing.assert_array_equal(out["c"], [2, 2])


def test_batching(cluster_client: Any, cluster_worker: Worker) -> None:
    c = cluster_client
    c.modelstore("bm", "STUB", "CPU", stub_blob("add"), batch=8, minbatch=4, minbatchtimeout=2000)
    c.tensorset("b", np.array([[1.0]], dtype=np.float32))
    for n in range(4):
        c.tensorset(f"a{n}", np.array([[n]], dtype=np.float32))
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            c.modelexecute("bm", [f"a{n}", "b"], [f"c{n}"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert [c.tensorget(f"c{n}").tolist() for n in range(4)] == [[[n + 1.0]] for n in range(4)]
    info = c.infoget("bm")
    assert info["calls"] == 4 and info["samples"] == 4


def cli(port: int, *args: str) -> str:
    assert REDIS_CLI is not None
    return subprocess.run(
        [REDIS_CLI, "-c", "-p", str(port), *args],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
def test_redis_cli_path(redis_cluster: Any, cluster_client: Any, cluster_worker: Worker) -> None:
    """XADD onto the plain queue, BLPOP the reply (redis-cli -c follows MOVED); an entry whose
    output and reply keys are in different slots is answered with RedisAI's CROSSSLOT."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    port = redis_cluster.ports[0]
    cli(port, "HSET", "x", "kind", "tensor", "dtype", "FLOAT", "shape", "2", "values", "2 3")
    cli(port, "HSET", "y", "kind", "tensor", "dtype", "FLOAT", "shape", "2", "values", "10 20")
    cmd = "AI.MODELEXECUTE m INPUTS 2 x y OUTPUTS 1 z{job1}"
    entry_id = cli(port, "XADD", "aiworker:queue:CPU", "*", "cmd", cmd, "reply", "r{job1}")
    reply = json.loads(cli(port, "--raw", "BLPOP", "r{job1}", "20").splitlines()[1])
    assert reply["status"] == "ok" and reply["id"] == entry_id
    assert cli(port, "--raw", "HGET", "z{job1}", "shape") == "2"
    np.testing.assert_array_equal(c.tensorget("z{job1}"), [12, 23])
    cli(port, "XADD", "aiworker:queue:CPU", "*", "cmd", cmd, "reply", "r{job2}")
    reply = json.loads(cli(port, "--raw", "BLPOP", "r{job2}", "20").splitlines()[1])
    assert reply == {**reply, "status": "error", "error": messages.CROSSSLOT}


def test_info_config_and_status_from_the_cli(
    redis_cluster: Any, cluster_client: Any, cluster_worker: Worker
) -> None:
    """The CLI against a cluster node: tensor, model, run, exec (AI.INFO, AI.CONFIG), status with
    every partition, check."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "aiworker", *args, "--redis-url", redis_cluster.url],
            env=worker_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("tensor", "set", "a", "FLOAT", "2", "1", "2")
    run("tensor", "set", "b", "FLOAT", "2", "3", "4")
    assert "[4.0, 6.0]" in run("run", "m", "-i", "a,b", "-o", "c{1}")
    assert "calls" in run("exec", "AI.INFO m") and c.infoget("m")["calls"] == 1
    assert run("config", "MODEL_CHUNK_SIZE", "1000").strip() == "OK"
    assert run("exec", "AI.CONFIG GET MODEL_CHUNK_SIZE").strip().endswith("1000")
    status = json.loads(run("status", "--json"))
    streams = [q["queue"] for q in status["queues"] if q["device"] == "CPU"]
    assert streams == cluster_worker.lanes["CPU"].queues and len(streams) == 3
    assert len(masters_of(redis_cluster, *streams)) == 3, "partitions on different masters"
    assert status["workers"][0]["queues"] == {"CPU": streams}
    assert "healthy" in run("check", "--device", "CPU")


def test_jobs_spread_over_the_partitions(cluster_client: Any, cluster_worker: Worker) -> None:
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.array([1], dtype=np.float32))
    streams = cluster_worker.lanes["CPU"].queues
    wait_until(lambda: c._jobs.partitions.pick("CPU") != streams[0], timeout=10)
    for n in range(30):
        c.modelexecute("m", ["a", "a"], [f"o{n}"])
    assert c.infoget("m")["calls"] == 30
    added = [c.xinfo_stream(stream)["entries-added"] for stream in streams]
    assert sum(added) == 30 and all(added), added  # every partition took some
    for n in range(30):  # each on the partition of its reply's (its outputs') master
        reply_key = c._jobs.private_entry(ModelExecute("m", ("a", "a"), (f"o{n}",)))[0]
        stream = c._jobs.stream("CPU", reply_key)
        assert cluster_masters(c, stream) == cluster_masters(c, f"o{n}")
    status = health.gather(c, c.keyspace)
    assert {q["queue"] for q in status["queues"]} == set(streams)
    assert all(q["pending"] == 0 and q["length"] == 0 for q in status["queues"])


# effect-once across slots --------------------------------------------------------------------


class CutWire(WireWrapper):
    """A ``ClusterWire`` that loses the connection at its ``cut``-th round trip of scripts (a
    worker killed there): of that round, only its first ``reach`` commands reach Redis (killed
    between two sends), nothing after it."""

    def __init__(self, wire: Any, cut: int, reach: int = 0) -> None:
        super().__init__(wire)
        self.cut, self.reach, self.calls = cut, reach, 0

    def pipeline(
        self, commands: Any, routes: Any = None, large: bool = False, retry: bool = True
    ) -> Any:
        if commands and commands[0][0] == "EVALSHA":
            self.calls += 1
            if self.calls == self.cut:
                if self.reach:
                    self.wire.pipeline(commands[: self.reach], routes[: self.reach])
                raise redis.ConnectionError("killed")
        return self.wire.pipeline(commands, routes, large, retry)


def test_a_sweep_keeps_what_the_nodes_that_answered_delivered(
    cluster_client: Any, cluster_settings: Any
) -> None:
    """A read of several partitions (``Consumer.sweep``) that loses one node keeps the entries
    the other nodes delivered to its consumer: they are held (leased, run now) rather than left
    pending until the visibility timeout has them reclaimed."""
    from aiworker.storage.cluster import NodeLost
    from aiworker.worker.consume import Consumer, ensure_group

    c = cluster_client
    w = Worker(cluster_settings)
    streams = w.keys.queues("CPU", 3)
    for stream in streams:
        ensure_group(c, stream)
        c.xadd(stream, {"x": "1"})

    class LostAfter(WireWrapper):
        """Every command reaches Redis; then the node of ``streams[1]`` is reported lost."""

        def pipeline(
            self, commands: Any, routes: Any = None, large: bool = False, retry: bool = True
        ) -> Any:
            replies = self.wire.pipeline(commands, routes, large, retry)
            pairs = zip(commands, replies, strict=True)
            gone = [None if command[-2] == streams[1] else reply for command, reply in pairs]
            raise NodeLost("lost", gone)

    consumer = Consumer(f"{w.name}:CPU:0", streams, w.held, w.metrics, threading.Event())
    found = consumer.sweep(LostAfter(w.wires.get()), 6, streams)
    assert sorted(stream for stream, _entries in found) == sorted([streams[0], streams[2]])
    assert all(w.held.since(s, eid) for s, entries in found for eid, _ in entries)
    w.wires.close()


def _pending_job(
    cluster_client: Any, cluster_settings: Any, output: str = "out{t}"
) -> tuple[Worker, str, Any]:
    """A worker (not started) and a job entry one of its consumers holds, as if a thread had
    read it."""
    from aiworker.parser.entry import decode_entry
    from aiworker.protocol.requests import ModelExecute
    from aiworker.worker.consume import ensure_group

    w = Worker(cluster_settings.replace(queue_partitions=1))
    queue = w.keys.queue("CPU")
    ensure_group(w.r, queue)
    request = ModelExecute("m", ("a",), (output,))
    reply_key, fields = cluster_client._jobs.private_entry(request)
    entry_id = cluster_client.xadd(queue, fields).decode()
    wire = w.wires.get()
    consumer = f"{w.name}:CPU:0"
    [(_stream, [(read_id, flat)])] = wire.execute(
        "XREADGROUP", "GROUP", "aiworker", consumer, "COUNT", 1, "STREAMS", queue, ">"
    )
    assert read_id.decode() == entry_id
    w.held.add(queue, entry_id, consumer)
    entry = dict(zip(flat[::2], flat[1::2], strict=True))
    return w, queue, (entry_id, entry, decode_entry(entry_id, entry), reply_key)


def _finished(entry: Any) -> Any:
    from aiworker.execution.outcome import Outcome, StatsRecord
    from aiworker.worker.complete import Finished

    entry_id, fields, job, reply_key = entry
    outcome = Outcome(
        "ok", writes={"out{t}": np.array([7.0], np.float32)}, stats=[StatsRecord("m", 5, 1)]
    )
    return Finished(entry_id, outcome, job, reply_key, job.fmt, None, fields)


@pytest.mark.parametrize("reach", [0, 1, 2], ids=["before-stats", "before-reply", "before-ack"])
def test_a_completion_cut_between_two_steps_completes_once(
    cluster_client: Any, cluster_settings: Any, reach: int
) -> None:
    """kill -9 between any two steps of a split completion (statistics, outputs + reply,
    acknowledgement: one round trip, sent to their nodes in that order): the redelivery's
    completion applies what is missing, nothing twice."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    w, queue, entry = _pending_job(c, cluster_settings)
    reply_key = entry[3]
    assert len({key_slot(k) for k in (queue, "out{t}", c.keyspace.stats("m"))}) == 3
    replied = reach == 2
    with pytest.raises(Exception, match="killed"):
        w.completer.complete(CutWire(w.wires.get(), 1, reach), queue, [_finished(entry)])
    assert c.llen(reply_key) == (1 if replied else 0)
    assert c.infoget("m")["calls"] == (1 if reach else 0)
    [result] = w.completer.complete(w.wires.get(), queue, [_finished(entry)])  # redelivered
    assert result.applied == (not replied) and result.duplicate == replied
    [again] = w.completer.complete(w.wires.get(), queue, [_finished(entry)])  # a late one
    assert again.duplicate
    assert c.llen(reply_key) == 1, "one reply"
    assert c.tensorget("out{t}").tolist() == [7.0]
    info = c.infoget("m")
    assert info["calls"] == 1 and info["duration"] == 5, "statistics counted once"
    assert c.xlen(queue) == 0 and c.xpending(queue, "aiworker")["pending"] == 0
    w.wires.close()


def test_a_least_privilege_worker_on_the_cluster(redis_cluster: Any, cluster_client: Any) -> None:
    """docs/security.md's worker rule plus its cluster line, on every node: the worker finds the
    cluster, reads, runs and completes jobs over three masters, and may do nothing more."""
    import re

    from test_security import documented_worker_rule

    from aiworker import Settings

    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    extra = re.search(r"<!-- acl:worker-cluster -->\s*```text\n(.+)\n```", text)
    assert extra, "docs/security.md shows what a cluster worker needs besides the rule"
    rule = documented_worker_rule("workerpw").split()[2:] + extra.group(1).split()
    nodes = [redis_cluster.node(port) for port in redis_cluster.ports]
    for node in nodes:
        node.execute_command("ACL", "SETUSER", "aiworker", *rule)
    c = cluster_client
    try:
        c.modelstore("model:m", "STUB", "CPU", stub_blob("add"))
        c.tensorset("ai:a", np.array([1, 2], dtype=np.float32))
        port = redis_cluster.ports[1]
        settings = Settings(
            redis_url=f"redis://aiworker:workerpw@127.0.0.1:{port}/0",
            threads_per_queue=3,
            queue_partitions=3,
            block_ms=100,
        )
        w = Worker(settings).start()
        try:
            assert w.cluster
            outputs = [f"ai:o{{{n}}}" for n in range(6)]
            assert len(masters_of(redis_cluster, *outputs)) == 3
            for key in outputs:
                assert c.modelexecute("model:m", ["ai:a", "ai:a"], [key]) == "OK"
            with pytest.raises(AIError, match="NOPERM"):  # outside the worker's key patterns
                c.modelexecute("model:m", ["ai:a", "ai:a"], ["elsewhere"])
        finally:
            w.stop(timeout=10)
        assert c.infoget("model:m")["calls"] == 7
        assert not c.exists("elsewhere")
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "aiworker")


def test_a_job_runs_the_model_version_its_read_found(
    cluster_client: Any, cluster_worker: Worker
) -> None:
    """On the cluster a job's read fetches its model's metadata every time (in the round trip of
    its inputs), so that its completion needs no version check before the reply: a job in flight
    when its model is stored anew finishes with the version it read, as a RedisAI run held its
    model; a job read after the store runs the new version."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add", sleep_ms=400))
    c.tensorset("a", np.array([1, 2], dtype=np.float32))
    c.tensorset("b", np.array([3, 4], dtype=np.float32))
    assert c.modelexecute("m", ["a", "b"], ["o1"]) == "OK"  # the worker has read the model
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(c.modelexecute("m", ["a", "b"], ["o2"])))
    thread.start()
    wait_until(lambda: cluster_worker.held_entry_ids(), timeout=5)
    c.modelstore("m", "STUB", "CPU", stub_blob("mul"))
    thread.join(20)
    assert done == ["OK"]
    assert c.tensorget("o2").tolist() == [4.0, 6.0], "the version it read"
    assert c.modelexecute("m", ["a", "b"], ["o3"]) == "OK"
    assert c.tensorget("o3").tolist() == [3.0, 8.0], "the new version"


def test_dead_letters_and_forwards(
    redis_cluster: Any, cluster_client: Any, cluster_settings: Any
) -> None:
    """An entry its workers keep dying on goes to the dead letters with an error reply; a job on
    the wrong device queue is forwarded - each a completion step in another slot."""
    from aiworker.protocol.keys import CONSUMER_GROUP
    from aiworker.worker.consume import ensure_group

    c = cluster_client
    keys = c.keyspace
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.modelstore("m1", "STUB", "CPU:1", stub_blob("add"))
    c.tensorset("a", np.array([1], dtype=np.float32))
    queue = keys.queue("CPU")
    ensure_group(c, queue)
    cmd = "AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 o{d}"
    dead_id = c.xadd(queue, {"cmd": cmd, "reply": "r{d}"}).decode()
    c.xreadgroup(CONSUMER_GROUP, "gone:1:CPU:0", {queue: ">"}, count=1)  # never completed
    assert len({key_slot(k) for k in (queue, keys.dead_letters("CPU"), "r{d}")}) == 3
    settings = cluster_settings.replace(visibility_timeout=0.3, max_deliveries=1)
    w = Worker(settings).start()
    try:
        popped = c.blpop(["r{d}"], 10)
        assert popped is not None and b"delivered 2 times" in popped[1]
        forward = "AI.MODELEXECUTE m1 INPUTS 2 a a OUTPUTS 1 o{f}"
        c.xadd(queue, {"cmd": forward, "reply": "r{f}"})
        wait_until(lambda: c.exists(keys.queue("CPU:1")) and c.xlen(keys.queue("CPU:1")), 10)
    finally:
        w.stop(timeout=10)
    [(_id, letter)] = c.xrange(keys.dead_letters("CPU"))
    assert letter[b"dead_letter_entry"].decode() == dead_id
    assert not c.exists("o{d}") and c.infoget("m")["errors"] == 1
    [(forwarded_id, forwarded)] = c.xrange(keys.queue("CPU:1"))
    assert forwarded[b"cmd"].decode() == forward
    # its requester is told where it went (the new id, from the step in the new queue's slot)
    [notice] = [json.loads(raw) for raw in c.lrange("r{f}", 0, -1)]
    assert notice["status"] == "forwarded" and notice["queue"] == queue
    assert notice["to"] == {"queue": keys.queue("CPU:1"), "id": forwarded_id.decode()}
    assert c.xlen(queue) == 0 and c.xpending(queue, CONSUMER_GROUP)["pending"] == 0


REDIS_SCRIPT = """
def set_incr(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])
    redis.execute("INCR", keys[0])
    redis.execute("PEXPIRE", keys[0], "60000")
    redis.execute("HSET", keys[1], "f", args[0])
    redis.execute("HSET", keys[1], "g", redis.asString(redis.execute("HRANDFIELD", keys[1])))
    return torch.tensor(int(str(redis.execute("GET", keys[0]))))
"""


def test_a_script_calling_redis_on_keys_in_other_slots(
    cluster_client: Any, cluster_worker: Worker
) -> None:
    """A script's KEYS may live anywhere: each command it sends goes to its key's master (where an
    uncommon command's keys are, HRANDFIELD's, is asked of a node, as on a single Redis)."""
    pytest.importorskip("torch")
    c = cluster_client
    c.scriptstore("s", "CPU", REDIS_SCRIPT, ["set_incr"])
    assert key_slot("k{1}") != key_slot("h{2}")
    assert (
        c.scriptexecute("s", "set_incr", keys=["k{1}", "h{2}"], args=["41"], outputs=["o"]) == "OK"
    )
    assert c.tensorget("o").tolist() == 42 and c.get("k{1}") == b"42"
    assert c.hget("h{2}", "f") == b"41" and c.hget("h{2}", "g") == b"f"
    assert 0 < c.pttl("k{1}") <= 60000


def _sent(cluster: Any) -> int:
    """Bytes every master has sent its clients so far."""
    return sum(
        int(cluster.node(port).info("stats")["total_net_output_bytes"])
        for port in cluster.master_ports()
    )


def test_max_job_bytes_holds_for_a_job_whose_inputs_span_slots(
    redis_cluster: Any, cluster_client: Any, cluster_settings: Any
) -> None:
    """A read made a script call per hash slot, each checking its slot's tensors against the
    whole max_job_bytes: six 400 KB inputs in six slots passed a 1 MB limit, all fetched (the
    worker's memory) before the job was refused. They are sized first now; a job within the
    limit across slots still runs, fetched with the limit shared out by known sizes."""
    c = cluster_client
    keys = [f"in{n}" for n in range(6)]
    assert len({key_slot(key) for key in keys}) == 6
    for key in keys:
        c.tensorset(key, np.ones(100_000, np.float32))  # 400 KB each
    w = Worker(cluster_settings.replace(max_job_bytes=1 << 20)).start()
    try:
        wait_until(lambda: c.zcard(c.keyspace.workers) > 0, timeout=10)
        small = c.dag(load=keys[:2]).tensorget(keys[0], as_numpy=False, meta_only=True)
        for _ in range(2):  # unknown sizes, then known ones
            assert small.execute()[0]["shape"] == [100_000]
        for key in keys:  # every size known: together over the limit, each slot within it
            assert c.dag(load=[key]).tensorget(key, meta_only=True).execute()
        before = _sent(redis_cluster)
        with pytest.raises(AIError, match=r"max_job_bytes \(1,048,576\)"):
            c.dag(load=keys).tensorget(keys[0], as_numpy=False, meta_only=True).execute()
        assert _sent(redis_cluster) - before < 400_000  # no input was fetched
        c.tensorset(keys[1], np.ones(150_000, np.float32))  # past its share, not the limit
        assert small.execute()[0]["shape"] == [100_000]
    finally:
        w.stop(timeout=10)


def test_a_forward_to_a_queue_that_takes_no_more_entries_is_answered(
    cluster_client: Any, cluster_settings: Any
) -> None:
    """A queue given the largest stream id refuses every XADD: the forward's completion step
    failed as a script error after the entry's outputs step, the whole batch's completion with
    it, again at every delivery. The step is refused instead, and the job answered with why."""
    from aiworker.protocol.keys import CONSUMER_GROUP

    c = cluster_client
    keys = c.keyspace
    c.modelstore("m1", "STUB", "CPU:1", stub_blob("add"))
    c.tensorset("a", np.array([1], dtype=np.float32))
    c.xadd(keys.queue("CPU:1"), {"cmd": "x"}, id="18446744073709551615-18446744073709551615")
    queue = keys.queue("CPU")
    w = Worker(cluster_settings.replace(queue_partitions=1)).start()
    try:
        c.xadd(queue, {"cmd": "AI.MODELEXECUTE m1 INPUTS 2 a a OUTPUTS 1 o{f}", "reply": "r{f}"})
        popped = c.blpop(["r{f}"], 10)
        assert popped is not None
        reply = json.loads(popped[1])
        assert reply["status"] == "error", reply
        assert reply["error"] == f"the stream '{keys.queue('CPU:1')}' takes no more entries"
        wait_until(lambda: c.xpending(queue, CONSUMER_GROUP)["pending"] == 0)
    finally:
        w.stop(timeout=10)
    assert c.xlen(queue) == 0
