"""One Lua caller and one completion path: how a script call is made (KEYS, the keys-as-arguments
re-run), grouping by hash slot, and a single Redis as the one-slot case of the cluster path."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import redis
from conftest import stub_blob

from aiworker import Client, Worker
from aiworker.embedded import RedisServer
from aiworker.execution.outcome import Outcome, StatsRecord
from aiworker.protocol import messages
from aiworker.protocol.keys import CONSUMER_GROUP, Keys, key_slot
from aiworker.storage import lua, tensor_io
from aiworker.storage.model import ModelMeta, store_model
from aiworker.storage.plans import by_slot, one_slot
from aiworker.storage.wire import Wire
from aiworker.worker.complete import Completer, Finished
from aiworker.worker.complete_steps import Record
from aiworker.worker.leases import HeldEntries


def calls_of(r: redis.Redis, command: str) -> int:
    """How many times Redis ran ``command`` so far (scripts' calls included)."""
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_call_and_its_keys_as_arguments() -> None:
    script = lua.LuaScript("s", "return 1", keys_in_argv=3)
    call = lua.Call(script, ["q", "b", "c"], ["x", "y", "e1", "e2"])
    assert call.command() == ("EVALSHA", script.sha, 3, "q", "b", "c", "x", "y", 0, "e1", "e2")
    assert call.keys_as_arguments() == (
        "EVALSHA", script.sha, 1, "q", "x", "y", 2, "b", "c", "e1", "e2",
    )  # fmt: skip
    assert call.route == "q" and lua.Call(script, ["q"], [], near="o{t}").route == "o{t}"
    plain = lua.Call(lua.LuaScript("p", "return 1"), ["k"], [7])
    assert plain.command() == ("EVALSHA", plain.script.sha, 1, "k", 7)
    assert lua.load("complete").keys_in_argv == 5 and lua.load("complete_once").keys_in_argv == 5
    assert lua.load("read_jobs").keys_in_argv is None


def test_keys_are_grouped_by_slot_and_a_single_redis_is_one() -> None:
    keys = ["a{1}", "b", "c{1}", "d"]
    assert len({key_slot(k) for k in ("a{1}", "b", "d")}) == 3
    assert by_slot(keys, key_slot) == [[0, 2], [1], [3]]
    assert by_slot(keys, one_slot) == [[0, 1, 2, 3]]
    assert {Wire.slot(key) for key in keys} == {0}


def test_a_single_redis_completes_in_one_script_call(client: Client, worker: Worker) -> None:
    """Outputs, statistics and the queue in three cluster slots: on a single Redis the job still
    completes in one complete.lua call (acknowledged first), with no done markers and no
    ownership check: the same path as on a cluster, with one slot."""
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.array([1, 2], dtype=np.float32))
    queue = worker.keys.queue("CPU")
    assert len({key_slot(k) for k in (queue, "o{x}", client.keyspace.stats("m"))}) == 3
    client.modelexecute("m", ["a", "a"], ["o{x}"])  # the model's metadata is cached now

    before = {name: calls_of(client, name) for name in ("evalsha", "xpending")}
    assert client.modelexecute("m", ["a", "a"], ["o{x}"]) == "OK"
    after = {name: calls_of(client, name) for name in before}
    assert after["evalsha"] - before["evalsha"] == 2, "one read, one completion"
    assert after["xpending"] == before["xpending"]
    assert not list(client.scan_iter(match=f"{client.keyspace.prefix}done:*"))
    assert client.infoget("m")["calls"] == 2


def test_a_batch_completes_with_one_count_per_statistics_key(redis_server: RedisServer) -> None:
    """Entries completed in one complete.lua call that share a model count its statistics once
    (their sums), check its version once and delete their entries in one XDEL: Redis's calls do
    not grow with the batch but for the per-entry writes. A statistics key that needed repair
    says so for every entry counted into it."""
    r = redis.Redis.from_url(redis_server.url)
    keys = Keys(prefix="batchstats:")
    queue = keys.queue("CPU")
    r.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
    store_model(r, keys, "bm", ModelMeta("STUB", "CPU"), b"{}")
    digest = bytes(r.hget("bm", "digest") or b"")
    wire = Wire(r.connection_pool)
    completer = Completer(keys, "w1", 60, HeldEntries())

    def complete(n: int, nbytes: int = 8) -> list[Any]:
        wire.pipeline([("XADD", queue, "*", "job", "x") for _ in range(n)])
        read = wire.execute("XREADGROUP", "GROUP", CONSUMER_GROUP, "c", "STREAMS", queue, ">")
        stat = [StatsRecord("bm", duration_us=10, samples=2, calls=1)]
        items = [
            Finished(
                entry[0].decode(),
                Outcome("ok", writes={f"bo{i}": np.full(nbytes // 4, i, np.float32)}, stats=stat),
                reply=f"br{i}",
                expect=[("bm", digest)],
            )
            for i, entry in enumerate(read[0][1])
        ]
        return completer.complete(wire, queue, items)

    def calls() -> dict[str, int]:
        return {name: calls_of(r, name) for name in ("hincrby", "hmget", "xdel", "xack", "rpush")}

    complete(1)  # loads the script
    before = calls()
    results = complete(8)
    grew = {name: count - before[name] for name, count in calls().items()}
    assert all(result.applied and result.stats == 1 for result in results)
    assert grew == {"hincrby": 3, "hmget": 1, "xdel": 1, "xack": 8, "rpush": 8}
    counters = r.hgetall(keys.stats("bm"))
    assert {k.decode(): int(v) for k, v in counters.items()} == {
        "duration": 90, "samples": 18, "calls": 9,
    }  # fmt: skip
    assert r.xlen(queue) == 0 and r.lrange("br7", 0, -1)
    assert tensor_io.read(r, "bo7").tolist() == [7, 7]

    r.hset(keys.stats("bm"), "calls", "not a number")
    results = complete(3)
    assert [result.stats for result in results] == [-1, -1, -1]
    assert int(r.hget(keys.stats("bm"), "calls") or 0) == 3

    # outputs under LUA_VALUE_BYTES: LUA_CALL_BYTES of them through the script, the rest staged
    size = tensor_io.LUA_VALUE_BYTES // 2
    assert 2 * size <= tensor_io.LUA_CALL_BYTES < 3 * size
    renamed = calls_of(r, "rename")
    assert all(result.applied for result in complete(1, size))
    assert calls_of(r, "rename") == renamed, "one job's output stays in the script"
    assert all(result.applied for result in complete(6, size))
    assert calls_of(r, "rename") - renamed == 4, "two in the script, four staged"
    for i in range(6):
        assert tensor_io.read(r, f"bo{i}").tolist() == [i] * (size // 4)
    assert not list(r.scan_iter(match=f"{keys.prefix}tmp:*")), "no stage left"


def test_a_record_of_many_fields_is_appended_whole(redis_server: RedisServer) -> None:
    """The completion script reads short argument runs with one unpack and long ones (a dead
    letter's fields) one by one: a record of 500 fields reaches its stream whole, in order."""
    r = redis.Redis.from_url(redis_server.url)
    keys = Keys(prefix="longrec:")
    queue = keys.queue("CPU")
    r.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
    wire = Wire(r.connection_pool)
    wire.execute("XADD", queue, "*", "job", "x")
    [[_stream, [(entry_id, _fields)]]] = wire.execute(
        "XREADGROUP", "GROUP", CONSUMER_GROUP, "c", "STREAMS", queue, ">"
    )
    fields = {f"f{n}": f"v{n}" for n in range(500)}
    item = Finished(
        entry_id.decode(),
        Outcome("ok", writes={"lr_out": np.arange(3, dtype=np.float32)}),
        reply="lr_reply",
        records=[Record("lr_stream", fields)],
    )
    [result] = Completer(keys, "w1", 60, HeldEntries()).complete(wire, queue, [item])
    assert result.applied
    [(_id, stored)] = r.xrange("lr_stream")
    assert [(k.decode(), v.decode()) for k, v in stored.items()] == list(fields.items())
    assert tensor_io.read(r, "lr_out").tolist() == [0, 1, 2] and r.llen("lr_reply") == 1


def test_a_result_that_cannot_be_encoded_fails_its_job_alone(redis_server: RedisServer) -> None:
    """An output no check foresaw the encoder refusing (here a STRING element with a NUL inside,
    made by hand: the runs refuse one before the completion) fails its own job with that said;
    the job completed with it is answered as usual, and neither is left pending."""
    r = redis.Redis.from_url(redis_server.url)
    keys = Keys(prefix="unencodable:")
    queue = keys.queue("CPU")
    r.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
    wire = Wire(r.connection_pool)
    wire.pipeline([("XADD", queue, "*", "job", "x") for _ in range(2)])
    read = wire.execute("XREADGROUP", "GROUP", CONSUMER_GROUP, "c", "STREAMS", queue, ">")
    stat = [StatsRecord("um", duration_us=10, samples=1, calls=1)]
    outputs = [np.array([b"a\0b"], dtype=object), np.arange(2, dtype=np.float32)]
    items = [
        Finished(
            entry[0].decode(), Outcome("ok", writes={f"uo{i}": out}, stats=stat), reply=f"ur{i}"
        )
        for i, (entry, out) in enumerate(zip(read[0][1], outputs, strict=True))
    ]
    results = Completer(keys, "w1", 60, HeldEntries()).complete(wire, queue, items)
    assert all(result.applied for result in results)
    failed, answered = (json.loads(r.lpop(f"ur{i}") or b"{}") for i in range(2))
    assert failed["status"] == "error", failed
    assert failed["error"].startswith(messages.RESULTS_UNWRITABLE), failed
    assert answered["status"] == "ok" and not r.exists("uo0")
    assert tensor_io.read(r, "uo1").tolist() == [0, 1]
    assert r.xpending(queue, CONSUMER_GROUP)["pending"] == 0
