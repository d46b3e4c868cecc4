"""``aiworker.asyncio.Client``: the same API as awaitables, many concurrent requests on a few
connections; and the blocking client's shared reply list (``shared_replies=True``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pytest
import redis
import redis.asyncio
from conftest import stub_blob, torch_blob

import aiworker.asyncio
from aiworker import AIError, Client, NoLiveWorker, ReplyTimeout, Worker
from aiworker.embedded import RedisServer

T = TypeVar("T")

SCRIPT = """
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[1]
"""


def arun(redis_server: RedisServer, body: Callable[[aiworker.asyncio.Client], Awaitable[T]]) -> T:
    async def main() -> T:
        con = aiworker.asyncio.Client.from_url(redis_server.url, reply_timeout=30)
        try:
            return await body(con)
        finally:
            await con.aclose()

    return asyncio.run(main())


def connections(con: Any) -> int:
    """The connections the client holds: its user's and aiworker's own."""
    pools = {id(p): p for p in (con.connection_pool, con._plain.connection_pool)}.values()
    return sum(len(p._available_connections) + len(p._in_use_connections) for p in pools)


def test_the_api_as_awaitables(client: Client, worker: Worker, redis_server: RedisServer) -> None:
    torch = pytest.importorskip("torch")
    del torch

    async def body(con: aiworker.asyncio.Client) -> None:
        assert await con.tensorset("a", np.array([1, 2], np.float32)) == "OK"
        assert await con.tensorset("b", [10, 20], dtype="float") == "OK"
        assert (await con.tensorget("b")).tolist() == [10, 20]
        assert await con.tensorget("b", as_numpy=False) == {
            "dtype": "FLOAT",
            "shape": [2],
            "values": [10.0, 20.0],
        }
        assert await con.modelstore("m", "TORCH", "CPU", torch_blob("add"), tag="v1") == "OK"
        assert (await con.modelget("m", meta_only=True))["tag"] == "v1"
        assert await con.modelexecute("m", ["a", "b"], ["c"]) == "OK"
        assert (await con.tensorget("c")).tolist() == [11, 22]
        assert await con.scriptstore("s", "CPU", SCRIPT, "bar") == "OK"
        assert await con.scriptexecute("s", "bar", inputs=["a", "c"], outputs=["d"]) == "OK"
        assert (await con.tensorget("d")).tolist() == [12, 24]
        dag = con.dag(load=["a"]).tensorset("x", [1, 1], dtype="float")
        results = await dag.modelexecute("m", ["a", "x"], ["y"]).tensorget("y").execute()
        assert results[:2] == ["OK", "OK"] and results[2].tolist() == [2, 3]
        out = await con.run("m", {"p": np.ones(2, np.float32), "q": np.ones(2, np.float32)}, ["r"])
        assert out["r"].tolist() == [2, 2]
        assert (await con.infoget("m"))["calls"] == 3
        assert await con.config("MODEL_CHUNK_SIZE", 1024) == "OK"
        assert await con.config("MODEL_CHUNK_SIZE") == 1024
        with pytest.raises(ValueError, match=r"^Missing required arguments"):
            await con.modelexecute("m", None, None)
        assert await con.set("native", 1) is True  # redis.asyncio's own commands

    arun(redis_server, body)


def test_a_thousand_concurrent_requests_on_a_few_connections(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.arange(4, dtype=np.float32))

    async def body(con: aiworker.asyncio.Client) -> tuple[list[Any], int]:
        await con.modelexecute("m", ["a", "a"], ["c"])  # the model's queue, cached
        results = await asyncio.gather(
            *(con.modelexecute("m", ["a", "a"], [f"c{i}"]) for i in range(1000))
        )
        return results, connections(con)

    results, used = arun(redis_server, body)
    assert results == ["OK"] * 1000
    assert client.tensorget("c999").tolist() == [0, 2, 4, 6]
    assert used <= 4, f"{used} connections for 1,000 concurrent requests"


@pytest.mark.parametrize("max_connections", [1, 4])
def test_max_connections_makes_calls_wait_their_turn(
    client: Client, worker: Worker, redis_server: RedisServer, max_connections: int
) -> None:
    """As on the blocking client, calls beyond ``max_connections`` wait for a connection (they
    failed with ``MaxConnectionsError``, and at 1 every job with a ``ReplyTimeout``): aiworker's
    commands hold at most that many, plus the jobs' writer and reader."""
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))

    async def main() -> tuple[list[Any], int]:
        con = aiworker.asyncio.Client(
            port=redis_server.port, max_connections=max_connections, reply_timeout=30
        )

        async def one(n: int) -> Any:
            await con.tensorset(f"a{n}", np.full(2, n, np.float32))
            await con.modelexecute("m", [f"a{n}", f"a{n}"], [f"o{n}"])
            return (await con.tensorget(f"o{n}")).tolist()

        try:
            results = await asyncio.gather(*(one(n) for n in range(20)))
            assert await con.set("native", 1) is True
            return results, connections(con)
        finally:
            await con.aclose()

    results, used = asyncio.run(main())
    assert results == [[2 * n, 2 * n] for n in range(20)]
    assert used <= 2 * max_connections + 2


class ServicePool(redis.asyncio.ConnectionPool):
    """A pool of its own kind needing an argument of its own, as Sentinel's does."""

    def __init__(self, service_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service_name = service_name


def test_a_pool_of_its_own_kind_is_the_clients_own(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    """aiworker's commands made a copy of every pool (``type(pool)(**its arguments)``): a
    Sentinel pool, which needs its service's name, failed to construct. An unbounded pool that
    does not decode replies is shared as it is."""
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))

    async def main() -> list[float]:
        pool = ServicePool("svc", port=redis_server.port)
        con = aiworker.asyncio.Client(connection_pool=pool, reply_timeout=30)
        try:
            assert con._plain.connection_pool is pool
            await con.tensorset("a", np.ones(2, np.float32))
            await con.modelexecute("m", ["a", "a"], ["o"])
            return list((await con.tensorget("o")).tolist())
        finally:
            await con.aclose()
            await pool.disconnect()

    assert asyncio.run(main()) == [2.0, 2.0]


@pytest.mark.parametrize("how", ["argument", "url"])
def test_decode_responses_decodes_the_users_own_replies_only(
    client: Client, worker: Worker, redis_server: RedisServer, how: str
) -> None:
    """``decode_responses=True`` decodes what the user's redis.asyncio calls return, not what
    aiworker reads: blobs, STRING tensors, models and jobs' replies (its reader failed on the
    first, and every job waited until it was said lost)."""
    pytest.importorskip("torch")  # a model blob that is not UTF-8
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"))
    client.tensorset("x", np.array([1, 2], np.float32))
    client.tensorset("s", ["ab", "c"], dtype="STRING")
    url, options = (
        (redis_server.url, {"decode_responses": True})
        if how == "argument"
        else (redis_server.url + "?decode_responses=true", {})
    )

    async def main() -> None:
        con = aiworker.asyncio.Client.from_url(url, reply_timeout=30, **options)
        try:
            assert (await con.tensorget("x")).tolist() == [1, 2]
            assert (await con.tensorget("s")).tolist() == ["ab", "c"]
            assert (await con.modelget("m"))["blob"] == torch_blob("add")
            assert await con.modelexecute("m", ["x", "x"], ["y"]) == "OK"
            await con.set("native", "é")
            assert await con.get("native") == "é"
        finally:
            await con.aclose()

    asyncio.run(main())


def test_a_failing_reply_reader_ends_the_waits_at_once(
    client: Client, worker: Worker, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in the reader task (a bug, not a lost Redis) ends the jobs waiting
    with it, as the reader could hand them no reply: they waited until the job was said lost."""
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.ones(2, np.float32))

    def garbled(raw: Any) -> Any:
        raise ValueError("garbled")

    monkeypatch.setattr("aiworker.asyncio.jobs.decode_reply", garbled)

    async def body(con: aiworker.asyncio.Client) -> tuple[list[Any], float]:
        started = time.monotonic()
        jobs = (con.modelexecute("m", ["a", "a"], [f"c{n}"]) for n in range(5))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        return results, time.monotonic() - started

    results, took = arun(redis_server, body)
    assert all(isinstance(r, ReplyTimeout) and "garbled" in str(r) for r in results), results
    assert took < 3.0


def test_no_live_worker_in_asyncio(client: Client, redis_server: RedisServer) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.ones(2, np.float32))

    async def body(con: aiworker.asyncio.Client) -> Any:
        return await asyncio.gather(
            *(con.modelexecute("m", ["a", "a"], ["c"]) for _ in range(300)), return_exceptions=True
        )

    results = arun(redis_server, body)
    assert all(isinstance(r, NoLiveWorker) and r.removed for r in results), {
        repr(r) for r in results
    }
    assert client.xlen(client.keyspace.queue("CPU")) == 0


def test_refusals_in_redis_own_words_in_asyncio(client: Client, redis_server: RedisServer) -> None:
    """Redis' NOPERM as Redis words it, not as redis-py's pipelines do ("Command # 3 (EVALSHA
    <sha> 2 ro:t...) of pipeline caused error: ...", naming aiworker's own commands)."""
    client.modelstore("ro:m", "STUB", "CPU", stub_blob("add"))
    client.execute_command("ACL", "SETUSER", "lim", "on", ">pw", "~aiworker:*", "%R~ro:*", "+@all")
    try:
        with pytest.raises(redis.exceptions.NoPermissionError) as direct:
            redis.Redis(port=redis_server.port, username="lim", password="pw").hset("ro:t", "a", 1)

        async def main() -> list[BaseException | str]:
            con = aiworker.asyncio.Client(port=redis_server.port, username="lim", password="pw")
            try:
                return await asyncio.gather(
                    con.tensorset("ro:t", np.zeros(10_000, np.float32)),  # staged in a MULTI
                    con.modelstore("ro:m2", "STUB", "CPU", stub_blob("add")),
                    con.modeldel("ro:m"),
                    return_exceptions=True,
                )
            finally:
                await con.aclose()

        for refused in asyncio.run(main()):
            assert isinstance(refused, redis.exceptions.NoPermissionError), refused
            assert str(refused) == str(direct.value)
    finally:
        client.acl_deluser("lim")


def test_batch_settings_no_reader_takes_back_are_refused_in_asyncio(
    client: Client, redis_server: RedisServer
) -> None:
    async def body(con: aiworker.asyncio.Client) -> None:
        with pytest.raises(AIError, match=r"^Invalid argument for BATCHSIZE$"):
            await con.modelstore("m", "STUB", "CPU", stub_blob("add"), batch=10**18)

    arun(redis_server, body)
    assert not client.exists("m")


def test_raw_replies_and_debug_in_asyncio(
    client: Client, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        con = aiworker.asyncio.Client(True, False, port=redis_server.port)
        try:
            assert await con.tensorset("x", (2, 3, 4, 5), dtype="float") == b"OK"
            assert await con.tensorget("x", meta_only=True) == [b"dtype", b"FLOAT", b"shape", [4]]
        finally:
            await con.aclose()

    asyncio.run(main())
    assert capsys.readouterr().out.splitlines()[0] == "AI.TENSORSET x FLOAT 4 VALUES 2 3 4 5"


def test_blocking_client_with_a_shared_reply_list(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    shared = Client.from_url(redis_server.url, shared_replies=True, reply_timeout=30)
    a = np.arange(3, dtype=np.float32)
    try:
        with ThreadPoolExecutor(32) as pool:
            outs = list(
                pool.map(
                    lambda i: shared.run("m", {"a": a, "b": np.full(3, i, np.float32)}, ["c"]),
                    range(200),
                )
            )
    finally:
        shared.close()
    assert [o["c"].tolist() for o in outs] == [[i, i + 1, i + 2] for i in range(200)]
    # one reply list for the whole client, emptied as replies are taken
    assert not client.keys("aiworker:reply:*")


def test_large_tensors_in_asyncio(client: Client, redis_server: RedisServer) -> None:
    """A tensor over LUA_VALUE_BYTES goes through the staged write (an HSET of a temporary key
    and the checked rename in one MULTI) on the asyncio client too: stored whole, WRONGTYPE on a
    key of another type, and moved after a SCRIPT FLUSH; no temporary key left."""
    from aiworker.protocol.errors import WrongTypeError
    from aiworker.storage.tensor_io import LUA_VALUE_BYTES

    big = np.arange(LUA_VALUE_BYTES // 4 + 10, dtype=np.float32)
    client.rpush("list", "x")

    async def body(con: aiworker.asyncio.Client) -> None:
        assert await con.tensorset("t", big) == "OK"
        np.testing.assert_array_equal(await con.tensorget("t"), big)
        with pytest.raises(WrongTypeError):
            await con.tensorset("list", big)
        await con.script_flush()
        assert await con.tensorset("t", big + 1) == "OK"
        np.testing.assert_array_equal(await con.tensorget("t"), big + 1)

    arun(redis_server, body)
    assert client.lrange("list", 0, -1) == [b"x"]
    assert not list(client.scan_iter("aiworker:tmp:*"))
