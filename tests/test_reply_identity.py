"""Nobody answers for someone else: a requester believes a reply only when it names the stream and
the id Redis gave its own XADD (issue "reply identity").

Each attack is made as a requester with plain Redis access would make it: read the queue to learn
a victim's entry id and reply list, then XADD an entry of one's own that names them (the ``origin``
field an earlier protocol trusted, or the same id XADDed explicitly on another queue). The
victim's job is slow, so the forged entry completes first. The victim must get its own result.
Against a single Redis and the 3+3 cluster; the asyncio client (single Redis) too.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import stub_blob, wait_until

from aiworker import Client, Worker
from aiworker import asyncio as aio
from aiworker.embedded import RedisServer
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.replies import MSGPACK
from aiworker.protocol.requests import DagExecute, TensorGet, TensorSet
from aiworker.storage import health

SLOW_MS = 1500
X = np.array([1.0, 2.0, 3.0], np.float32)


@pytest.fixture(params=["single", "cluster"])
def served(request: pytest.FixtureRequest) -> Iterator[Client]:
    """A client and a worker serving CPU and CPU:1 (2+ threads: a forged entry completes while
    the victim's slow job runs); ``slow`` adds its inputs after SLOW_MS."""
    cluster = request.param == "cluster"
    c: Client = request.getfixturevalue("cluster_client" if cluster else "client")
    settings = request.getfixturevalue("cluster_settings" if cluster else "settings")
    w = Worker(settings.replace(devices=("CPU", "CPU:1"))).start()
    try:
        wait_until(lambda: c.zcard(c.keyspace.workers) > 0, timeout=10)
        c.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=SLOW_MS))
        c.tensorset("a", X)
        yield c
    finally:
        w.stop(timeout=10)


def victim_entry(c: Any) -> tuple[str, str, dict[bytes, bytes]]:
    """(stream, id, fields) of the one job entry in the CPU queue (any partition), as an attacker
    who may read the queue sees it."""
    found: list[tuple[str, str, dict[bytes, bytes]]] = []

    def seen() -> bool:
        for stream in c.keyspace.queues("CPU", 3):
            for entry_id, fields in c.xrange(stream):
                found.append((stream, entry_id.decode(), fields))
        return bool(found)

    wait_until(seen, timeout=10)
    return found[0]


def beside(c: Any, stream: str) -> str:
    """A stream of the CPU queue that another consumer thread reads than the one busy with the
    victim's job: another partition on the cluster (a thread each), the same stream on one Redis
    (threads share it)."""
    served = {s for w in health.live_workers(c, c.keyspace) for s in w["queues"].get("CPU", [])}
    return next((s for s in sorted(served) if s != stream), stream)


def forged(reply: bytes, outputs: int = 1) -> dict[str, Any]:
    """A fast tensor-only DAG whose results look like a ``run`` of ``slow`` giving [666]: two
    TENSORSETs, one more TENSORSET where the MODELEXECUTE was, a TENSORGET per output."""
    evil = np.array([666.0], np.float32).tobytes()
    ops: list[Any] = [TensorSet("a", "FLOAT", (1,), evil), TensorSet("b", "FLOAT", (1,), evil)]
    ops += [TensorSet("out", "FLOAT", (1,), evil)]
    ops += [TensorGet("out", meta=True, data="BLOB")] * outputs
    return encode_entry(DagExecute(ops=tuple(ops), readonly=True), reply.decode(), MSGPACK)


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(call()))
    thread.start()
    return thread, done


def test_a_forged_reply_naming_the_victims_id_is_not_believed_by_run(served: Client) -> None:
    thread, done = in_thread(lambda: served.run("slow", {"a": X, "b": X}, ["out"]))
    stream, entry_id, fields = victim_entry(served)
    served.xadd(beside(served, stream), {**forged(fields[b"reply"]), "origin": entry_id})
    thread.join(30)
    assert done[0]["out"].tolist() == (X + X).tolist()


def test_a_forged_reply_does_not_end_modelexecute_before_its_job_ran(served: Client) -> None:
    thread, done = in_thread(lambda: served.modelexecute("slow", ["a", "a"], ["c"]))
    stream, entry_id, fields = victim_entry(served)
    served.xadd(beside(served, stream), {**forged(fields[b"reply"]), "origin": entry_id})
    thread.join(30)
    assert done == ["OK"]
    assert served.tensorget("c").tolist() == (X + X).tolist(), "it returned once its job ran"


def test_an_entry_with_the_victims_id_on_another_queue_is_not_its_reply(served: Client) -> None:
    """The same id XADDed explicitly on another device's queue: a worker reads and answers it
    there, so its reply names that queue."""
    thread, done = in_thread(lambda: served.run("slow", {"a": X, "b": X}, ["out"]))
    _stream, entry_id, fields = victim_entry(served)
    other = served.keyspace.queue("CPU:1")
    assert served.xadd(other, forged(fields[b"reply"]), id=entry_id).decode() == entry_id
    wait_until(lambda: served.xlen(other) == 0, timeout=10)  # answered
    thread.join(30)
    assert done[0]["out"].tolist() == (X + X).tolist()


def test_a_legit_forward_is_still_answered(served: Client) -> None:
    """A client whose cached device is stale sends a job to the wrong queue: the worker forwards
    it, the client follows the notice to the new entry and takes its reply."""
    assert served.modelexecute("slow", ["a", "a"], ["c"]) == "OK"  # caches "slow" on CPU
    other = Client.from_url(_url(served))
    other.modelstore("slow", "STUB", "CPU:1", stub_blob("mul"))  # moved to another device
    other.close()
    assert served.modelexecute("slow", ["a", "a"], ["c"]) == "OK"
    assert served.tensorget("c").tolist() == (X * X).tolist()
    assert served.run("slow", {"a": X, "b": X}, ["out"])["out"].tolist() == (X * X).tolist()


def _url(c: Any) -> str:
    """A URL of ``c``'s Redis (any node of a cluster)."""
    if hasattr(c, "get_default_node"):
        node = c.get_default_node()
        return f"redis://{node.host}:{node.port}"
    kwargs = c.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}"


def test_an_entry_with_thousands_of_fields_is_forwarded_and_answered(served: Client) -> None:
    """Only the request travels on: an entry with 5,000 other fields completes its forward."""
    served.modelstore("m1", "STUB", "CPU:1", stub_blob("add"))
    cmd = "AI.MODELEXECUTE m1 INPUTS 2 a a OUTPUTS 1 {t}o"
    junk = {f"x{n}": "y" for n in range(5000)}
    stream = served.keyspace.queue("CPU")
    entry_id = served.xadd(stream, {"cmd": cmd, "reply": "{t}r", **junk}).decode()
    popped = [served.blpop(["{t}r"], 15) for _ in range(2)]
    # on the cluster the forward and its notice are two steps: the reply may come first
    by_status = {reply["status"]: reply for reply in (json.loads(p[1]) for p in popped if p)}
    notice, reply = by_status["forwarded"], by_status["ok"]
    assert (notice["queue"], notice["id"]) == (stream, entry_id)
    assert (reply["queue"], reply["id"]) == (notice["to"]["queue"], notice["to"]["id"])
    assert served.tensorget("{t}o").tolist() == (X + X).tolist()


# the asyncio client (single Redis) ----------------------------------------------------------


@pytest.fixture
def async_served(client: Client, settings: Any) -> Iterator[Client]:
    w = Worker(settings.replace(devices=("CPU", "CPU:1"))).start()
    try:
        wait_until(lambda: client.zcard(client.keyspace.workers) > 0, timeout=10)
        client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=SLOW_MS))
        client.tensorset("a", X)
        yield client
    finally:
        w.stop(timeout=10)


async def _attacked(url: str, victim: Any, attacker: Client, origin: bool = True) -> Any:
    async with aio.Client.from_url(url, reply_timeout=30) as acon:
        task = asyncio.ensure_future(victim(acon))
        stream, entry_id, fields = await asyncio.to_thread(victim_entry, attacker)
        extra = {"origin": entry_id} if origin else {}
        attacker.xadd(beside(attacker, stream), {**forged(fields[b"reply"]), **extra})
        return await asyncio.wait_for(task, 30)


def test_async_run_believes_only_its_own_reply(
    async_served: Client, redis_server: RedisServer
) -> None:
    result = asyncio.run(
        _attacked(
            redis_server.url, lambda c: c.run("slow", {"a": X, "b": X}, ["out"]), async_served
        )
    )
    assert result["out"].tolist() == (X + X).tolist()


def test_async_modelexecute_returns_only_once_its_job_ran(
    async_served: Client, redis_server: RedisServer
) -> None:
    victim = lambda c: c.modelexecute("slow", ["a", "a"], ["c"])  # noqa: E731
    assert asyncio.run(_attacked(redis_server.url, victim, async_served)) == "OK"
    assert async_served.tensorget("c").tolist() == (X + X).tolist()


def test_async_legit_forward_is_still_answered(
    async_served: Client, redis_server: RedisServer
) -> None:
    async def calls() -> list[Any]:
        async with aio.Client.from_url(redis_server.url, reply_timeout=30) as acon:
            first = await acon.modelexecute("slow", ["a", "a"], ["c"])  # caches "slow" on CPU
            async_served.modelstore("slow", "STUB", "CPU:1", stub_blob("mul"))
            runs = await asyncio.gather(
                *(acon.run("slow", {"a": X, "b": X}, ["out"]) for _ in range(5))
            )
            return [first, await acon.modelexecute("slow", ["a", "a"], ["c"]), *runs]

    first, second, *runs = asyncio.run(calls())
    assert first == second == "OK"
    assert async_served.tensorget("c").tolist() == (X * X).tolist()
    assert all(r["out"].tolist() == (X * X).tolist() for r in runs)


# the other ways in: a shared reply list (sync), a pipeline, aiworker exec (single Redis) ------


def _shared_run(c: Client, url: str) -> Any:
    shared = Client.from_url(url, reply_timeout=30, shared_replies=True)
    try:
        return shared.run("slow", {"a": X, "b": X}, ["out"])["out"].tolist()
    finally:
        shared.close()


def _pipelined(c: Client, url: str) -> Any:
    pipe = c.pipeline(transaction=False)
    pipe.modelexecute("slow", ["a", "a"], ["c"])
    [result] = pipe.execute()
    return [result, c.tensorget("c").tolist()]


def _exec(c: Client, url: str) -> Any:
    from aiworker.cli.rai_exec import execute

    dag = "AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE slow INPUTS 2 a a OUTPUTS 1 o |> "
    return execute(c, dag + "AI.TENSORGET o VALUES")


@pytest.mark.parametrize(
    ("call", "own"),
    [
        (_shared_run, (X + X).tolist()),
        (_pipelined, [b"OK", (X + X).tolist()]),
        (_exec, ["OK", [b"2", b"4", b"6"]]),
    ],
    ids=["sync-shared-list", "pipeline", "aiworker-exec"],
)
def test_every_way_in_believes_only_its_own_reply(
    async_served: Client, redis_server: RedisServer, call: Any, own: Any
) -> None:
    thread, done = in_thread(lambda: call(async_served, redis_server.url))
    stream, entry_id, fields = victim_entry(async_served)
    forgery = forged(fields[b"reply"], outputs=1)
    async_served.xadd(beside(async_served, stream), {**forgery, "origin": entry_id})
    thread.join(30)
    assert done == [own]
