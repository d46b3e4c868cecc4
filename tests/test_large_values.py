"""Large tensors stay cheap for Redis: a job's inputs and outputs never pass through Lua, while
every guarantee of the small path holds (sizes checked before anything large is fetched, one
version of each key, WRONGTYPE, nothing half written), and a key named many times is read,
decoded and converted once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import redis
from conftest import stub_blob
from faults import QUEUE

from aiworker import Client, Settings, Worker, WrongTypeError
from aiworker.execution import limits, state
from aiworker.protocol.errors import AIError, LimitExceeded
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import DagExecute, ModelExecute
from aiworker.storage import tensor_io
from aiworker.storage.wire import Wire

BIG = np.arange(150_000, dtype=np.float32)  # 600 KB


def monitored(r: redis.Redis, action: Callable[[], object]) -> list[dict[str, Any]]:
    """Every command Redis ran while ``action`` ran (MONITOR; ``client_type`` 'lua' for the
    commands scripts call)."""
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def watch() -> None:
        with r.monitor() as monitor:
            ready.set()
            while True:
                command = monitor.next_command()
                if command["command"] == "ECHO monitor-done":
                    return
                seen.append(command)

    thread = threading.Thread(target=watch)
    thread.start()
    ready.wait(5)
    try:
        action()
    finally:
        r.echo("monitor-done")
        thread.join(10)
    return seen


def output_bytes(r: redis.Redis) -> int:
    """Bytes Redis has sent to its clients so far."""
    return int(r.info("stats")["total_net_output_bytes"])


def test_large_inputs_and_outputs_never_pass_through_lua(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    client.tensorset("x", BIG)
    assert client.modelexecute("m", ["x"], ["y"]) == "OK"  # scripts loaded, metadata cached
    seen = monitored(client, lambda: client.modelexecute("m", ["x"], ["y"]))
    np.testing.assert_array_equal(client.tensorget("y"), BIG)
    scripted = [c["command"] for c in seen if c["client_type"] == "lua"]
    assert scripted and all(len(command) < 4096 for command in scripted), "no large value in Lua"
    plain = [[*c["command"].split(" ", 2), ""][:2] for c in seen if c["client_type"] == "tcp"]
    assert ["HMGET", "x"] in plain, "the input came from a plain HMGET"
    assert any(cmd == "HSET" and key.startswith("aiworker:tmp:{y}") for cmd, key in plain)
    renamed = [c for c in seen if c["command"].startswith("RENAME aiworker:tmp:{y}")]
    assert [c["client_type"] for c in renamed] == ["lua"], "the completion put it in place"
    assert not client.keys("aiworker:tmp:*"), "the stage was renamed into place"


def test_small_outputs_stay_in_the_completion_script(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    client.tensorset("x", np.arange(4, dtype=np.float32))
    assert client.modelexecute("m", ["x"], ["y"]) == "OK"
    seen = monitored(client, lambda: client.modelexecute("m", ["x"], ["y"]))
    assert not [c for c in seen if c["command"].startswith("HSET aiworker:tmp:")]
    assert [c for c in seen if c["command"].startswith("HSET y ") and c["client_type"] == "lua"]


def test_a_large_output_over_another_kind_of_key_writes_nothing(
    client: Client, worker: Worker
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    client.tensorset("x", BIG)
    before = client.hgetall("m")
    with pytest.raises(WrongTypeError):
        client.modelexecute("m", ["x"], ["m"])
    assert client.hgetall("m") == before
    assert not client.keys("aiworker:tmp:*"), "the refused output's stage is gone"
    client.set("plain", "text")
    with pytest.raises(WrongTypeError):
        client.modelexecute("m", ["x"], ["plain"])
    assert client.get("plain") == b"text" and not client.keys("aiworker:tmp:*")


def test_a_large_output_replaces_a_tensor_whole(client: Client, worker: Worker) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    client.tensorset("x", BIG)
    client.hset("y", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "2", "values": "1 2"})
    assert client.modelexecute("m", ["x"], ["y"]) == "OK"
    assert not client.hexists("y", "values"), "no stale field"
    np.testing.assert_array_equal(client.tensorget("y"), BIG)


def test_a_read_passes_at_most_lua_call_bytes_through_its_script(client: Client) -> None:
    """Values under LUA_VALUE_BYTES stay in a single job's read script, but one read passes at
    most LUA_CALL_BYTES of them through Lua (smallest first): Redis hashes every byte that enters
    it. The rest of a batch's inputs come from plain HMGETs, with the same results. (The
    completion's side: tests/test_completion_path.py.)"""
    size = tensor_io.LUA_VALUE_BYTES // 2  # two fit the call's bytes
    assert 2 * size <= tensor_io.LUA_CALL_BYTES < 3 * size
    inputs = [np.full(size // 4, n, np.float32) for n in range(6)]
    for n, array in enumerate(inputs):
        tensor_io.write(client, f"bin{n}", array)
    client.modelstore("bm", "STUB", "CPU", stub_blob("identity"))
    requests = [ModelExecute("bm", (f"bin{n}",), (f"bout{n}",)) for n in range(6)]
    wire, cache = Wire(client.connection_pool), state.MetaCache()
    state.read(wire, requests, limits.Limits(), cache, Keys())  # the sizes are learnt
    snapshots: list[state.Snapshot] = []
    seen = monitored(
        client, lambda: snapshots.extend(state.read(wire, requests, limits.Limits(), cache, Keys()))
    )
    fetched = [c["client_type"] for c in seen if c["command"].startswith("HMGET bin")]
    assert sorted(fetched) == ["lua", "lua", "tcp", "tcp", "tcp", "tcp"], fetched
    for snapshot, array, n in zip(snapshots, inputs, range(6), strict=True):
        np.testing.assert_array_equal(snapshot.tensor(f"bin{n}"), array)
    seen = monitored(client, lambda: state.read(wire, requests[:1], limits.Limits(), cache, Keys()))
    assert not [c for c in seen if c["command"].startswith("MULTI")], "one job: in the script"


# The read's guarantees, on the worker's own connection ----------------------------------------


@pytest.fixture
def wire(client: Client) -> Wire:
    return Wire(client.connection_pool)


def read_one(
    wire: Wire,
    request: Any,
    bounds: limits.Limits | None = None,
    cache: state.MetaCache | None = None,
) -> state.Snapshot:
    [snapshot] = state.read(wire, [request], bounds or limits.Limits(), cache, Keys())
    return snapshot


def test_a_large_tensor_is_learnt_and_then_read_in_one_round_trip(
    client: Client, wire: Wire
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    tensor_io.write(client, "x", BIG)
    request = ModelExecute("m", ("x",), ("y",))
    cache = state.MetaCache()
    seen = monitored(client, lambda: read_one(wire, request, cache=cache))
    assert len([c for c in seen if c["command"].startswith("EVALSHA")]) == 2, "found large"
    seen = monitored(client, lambda: read_one(wire, request, cache=cache))
    assert len([c for c in seen if c["command"].startswith("EVALSHA")]) == 1, "known large"
    np.testing.assert_array_equal(read_one(wire, request, cache=cache).tensor("x"), BIG)
    tensor_io.write(client, "x", np.arange(4, dtype=np.float32))  # small again: read inline
    assert read_one(wire, request, cache=cache).tensor("x").tolist() == [0, 1, 2, 3]
    seen = monitored(client, lambda: read_one(wire, request, cache=cache))
    assert not [c for c in seen if c["command"].startswith("MULTI")]


def test_sizes_are_checked_before_anything_is_fetched_even_without_the_script(
    client: Client, wire: Wire
) -> None:
    """A script Redis no longer has (a restart, SCRIPT FLUSH) aborts the fetch: the tensor data
    is never sent before its size was checked."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    tensor_io.write(client, "x", BIG)
    request = ModelExecute("m", ("x",), ("y",))
    cache = state.MetaCache()
    read_one(wire, request, cache=cache)  # the script is loaded; x is known to be large
    client.script_flush()
    sent = output_bytes(client)
    snapshot = read_one(wire, request, limits.Limits(max_tensor_bytes=1000), cache)
    with pytest.raises(LimitExceeded, match="600,000 bytes of data"):
        snapshot.tensor("x")
    assert output_bytes(client) - sent < 10_000, "the tensor itself never left Redis"


class MeddlingWire(Wire):
    """A real ``Wire`` whose guarded reads are sent in two halves with a concurrent write in
    between, right after the script checked the sizes and before the MULTI fetches them."""

    meddle: Callable[[], None] = staticmethod(lambda: None)

    def pipeline(
        self,
        commands: Sequence[Sequence[Any]],
        routes: Any = None,
        large: bool = False,
        retry: bool = True,
    ) -> list[Any]:
        split = next((n for n, c in enumerate(commands) if c[0] == "MULTI"), None)
        if split is None or self.meddle is None:
            return super().pipeline(commands, routes, large, retry)
        first = super().pipeline(commands[:split])
        meddle, self.meddle = self.meddle, None  # once
        meddle()
        return first + super().pipeline(commands[split:], large=large)


def test_a_tensor_replaced_after_its_check_is_not_fetched(client: Client) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    tensor_io.write(client, "x", np.arange(5000, dtype=np.float32))  # 20 KB: fetched plainly
    wire = MeddlingWire(client.connection_pool)
    wire.meddle = lambda: tensor_io.write(client, "x", BIG)  # grows past the limit meanwhile
    bounds = limits.Limits(max_tensor_bytes=100_000)
    sent = output_bytes(client)
    snapshot = read_one(wire, ModelExecute("m", ("x",), ("y",)), bounds)
    with pytest.raises(LimitExceeded, match="600,000 bytes of data"):
        snapshot.tensor("x")  # checked again: the version fetched is the version checked
    assert output_bytes(client) - sent < 10_000


def test_small_inputs_rewritten_meanwhile_do_not_fail_a_batch_read(client: Client) -> None:
    """A batch's small inputs beyond LUA_CALL_BYTES are fetched plainly, WATCHed; a client
    rewriting one of them at every attempt aborts that fetch, and the read then takes every small
    value from its script (atomic, nothing to abort): it succeeds, with the value as written."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    size = tensor_io.LUA_VALUE_BYTES // 2
    for n in range(6):
        tensor_io.write(client, f"rw{n}", np.full(size // 4, n, np.float32))
    requests = [ModelExecute("m", (f"rw{n}",), (f"rwo{n}",)) for n in range(6)]
    wire, cache = MeddlingWire(client.connection_pool), state.MetaCache()
    state.read(wire, requests, limits.Limits(), cache, Keys())  # sizes learnt: 4 fetched plainly
    writes = [0]

    def rewrite() -> None:  # every plain fetch, for as long as there are any
        writes[0] += 1
        tensor_io.write(client, "rw5", np.full(size // 4, 100 + writes[0], np.float32))
        wire.meddle = rewrite

    wire.meddle = rewrite
    snapshots = state.read(wire, requests, limits.Limits(), cache, Keys())
    assert writes[0] == 1, "one aborted fetch, then the script read them all"
    assert snapshots[5].tensor("rw5").tolist() == [101] * (size // 4)
    assert snapshots[0].tensor("rw0").tolist() == [0] * (size // 4)
    wire.close()


def test_refused_keys_leave_the_others_read(client: Client, wire: Wire) -> None:
    """A read refusing one tensor (too large) is sent again without it: the job's other inputs
    arrive, and its errors come in the order RedisAI reported them."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    tensor_io.write(client, "ok", np.arange(4, dtype=np.float32))
    tensor_io.write(client, "big", BIG)
    client.hset("fat", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1," * 2000 + "1"})
    bounds = limits.Limits(max_tensor_bytes=1000)
    snapshot = read_one(wire, ModelExecute("m", ("ok", "big", "fat"), ("y",)), bounds)
    assert snapshot.tensor("ok").tolist() == [0, 1, 2, 3]
    with pytest.raises(LimitExceeded):
        snapshot.tensor("big")
    with pytest.raises(AIError, match="invalid or negative value found in tensor shape"):
        snapshot.tensor("fat")


def test_a_key_named_many_times_is_read_and_decoded_once(client: Client, wire: Wire) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    tensor_io.write(client, "x", BIG)
    request = DagExecute(ops=(), load=("x",) * 200)
    seen = monitored(client, lambda: read_one(wire, request))
    assert len([c for c in seen if c["command"].startswith("HMGET x ")]) == 1
    snapshot = read_one(wire, ModelExecute("m", ("x",) * 200, ("y",)))
    arrays = snapshot.tensors(["x"] * 200)
    assert all(array is arrays[0] for array in arrays), "one array, however often it is named"


def test_a_script_given_one_key_many_times_gets_one_tensor(client: Client, worker: Worker) -> None:
    """The TORCH backend copies an input once per distinct array, not once per use (a job
    naming an 8 MB tensor 200 times made 200 copies)."""
    pytest.importorskip("torch")
    source = (  # a write through the first input shows in the last one if they are one tensor
        "def bump(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        "    tensors[0].add_(1)\n"
        "    return tensors[-1]\n"
    )
    client.scriptstore("s", "CPU", source, ["bump"])
    client.tensorset("x", np.arange(4, dtype=np.float32))
    client.tensorset("z", np.arange(4, dtype=np.float32))
    assert client.scriptexecute("s", "bump", inputs=["x"] * 200, outputs=["o"]) == "OK"
    assert client.tensorget("o").tolist() == [1, 2, 3, 4]
    assert client.tensorget("x").tolist() == [0, 1, 2, 3], "the stored tensor is untouched"
    assert client.scriptexecute("s", "bump", inputs=["x", "z"], outputs=["o"]) == "OK"
    assert client.tensorget("o").tolist() == [0, 1, 2, 3], "two keys: two tensors"


def test_leftover_flags_and_stages_expire(client: Client, settings: Settings) -> None:
    """What a read or completion cut short leaves behind (a flag key, a guard) expires."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    tensor_io.write(client, "x", BIG)
    w = Worker(settings.replace(threads_per_queue=1)).start()
    try:
        for reply in ("r1", "r2"):  # x is known large at the second
            client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE m INPUTS 1 x OUTPUTS 1 y", "reply": reply})
            assert client.blpop([reply], 10) is not None
            client.script_flush()  # the next read's script is missing: its flag is copied
    finally:
        w.stop(timeout=10)
    left = client.keys("aiworker:read:*")
    assert left and all(0 < client.pttl(key) <= state.FLAG_TTL_MS for key in left)


def test_a_staged_output_is_declared_and_named_but_not_sent_to_the_script() -> None:
    from aiworker.worker.complete import Writes, encode

    fields = {"kind": "tensor", "dtype": "FLOAT", "shape": "150000", "blob": BIG.tobytes()}
    writes = Writes("1-0", outputs=[("y", 0, fields)], stages={"y": "aiworker:tmp:{y}:1-0"})
    keys, body = encode(["q"], [writes])
    assert keys == ["q", "y", "aiworker:tmp:{y}:1-0"]
    # one entry: id, no reply, empty payload, no splice, 1 output, no stats, records or
    # versions; the output: key 2, no TTL, its stage key 3, no items
    assert body == [1, "1-0", 0, b"", 0, 1, 0, 0, 0, 2, 0, 3, 0]


def test_a_worker_keeps_its_read_flags_under_its_own_prefix(
    redis_server: Any, settings: Settings
) -> None:
    """A large input's guarded read names its flag keys with the worker's prefix (a worker user
    granted only ``~ns:*`` must be able to write them): nothing touches ``aiworker:`` keys."""
    client = Client.from_url(redis_server.url, prefix="ns:", reply_timeout=30)
    client.flushall()
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    client.tensorset("big", BIG)
    worker = Worker(settings.replace(prefix="ns:")).start()
    monitor = redis.Redis.from_url(redis_server.url).monitor()
    seen: list[str] = []
    with monitor as m:

        def watch() -> None:
            for event in m.listen():
                seen.append(str(event["command"]))
                if "done-watching" in str(event["command"]):
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            client.modelexecute("m", ["big"], ["out"])
            assert client.tensorget("out").shape == BIG.shape
        finally:
            client.get("done-watching")
            watcher.join(10)
            worker.stop(timeout=10)
            client.close()
    touched = [command for command in seen if "aiworker:" in command]
    assert touched == [], touched[:3]
    assert any("ns:" in command and "EVALSHA" in command for command in seen)


class RecordingWire(Wire):
    """A real ``Wire`` that notes the tensor bytes each round trip's fetch brought."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        super().__init__(pool)
        self.fetched: list[int] = []

    def pipeline(
        self,
        commands: Sequence[Sequence[Any]],
        routes: Any = None,
        large: bool = False,
        retry: bool = True,
    ) -> list[Any]:
        replies = super().pipeline(commands, routes, large, retry)
        fetch = replies[-1] if commands[-1][0] == "EXEC" and isinstance(replies[-1], list) else []
        self.fetched.append(sum(len(fields[3] or b"") for fields in fetch))
        return replies


def test_a_read_of_many_large_inputs_fetches_a_few_megabytes_a_round_trip(client: Client) -> None:
    """12 inputs of 600 KB (7.2 MB): two round trips of six, not one reply of them all (a reply
    of many megabytes costs Redis a third more per byte); every job is read, none deferred."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    inputs = [BIG + n for n in range(12)]
    for n, array in enumerate(inputs):
        tensor_io.write(client, f"in{n}", array)
    requests = [ModelExecute("m", (f"in{n}",), (f"out{n}",)) for n in range(12)]
    wire, cache = RecordingWire(client.connection_pool), state.MetaCache()
    for _ in range(2):  # the first read learns which inputs are large, the second knows
        wire.fetched.clear()
        snapshots = state.read(wire, requests, limits.Limits(), cache, Keys())
        assert not any(snapshot.deferred for snapshot in snapshots)
        for snapshot, array, n in zip(snapshots, inputs, range(12), strict=True):
            np.testing.assert_array_equal(snapshot.tensor(f"in{n}"), array)
        fetches = [nbytes for nbytes in wire.fetched if nbytes]
        assert fetches == [6 * BIG.nbytes, 6 * BIG.nbytes], wire.fetched
        assert max(fetches) <= state.READ_ROUND_BYTES
    assert len(wire.fetched) == 2, "known large: every round trip fetches"
    wire.close()


def test_a_round_trip_fetches_at_least_one_job_however_large(client: Client) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    huge = np.zeros(state.READ_ROUND_BYTES // 4 + 10, dtype=np.float32)  # over the round's bytes
    tensor_io.write(client, "a", huge)
    tensor_io.write(client, "b", huge)
    requests = [ModelExecute("m", (key,), ("y",)) for key in ("a", "b")]
    wire, cache = RecordingWire(client.connection_pool), state.MetaCache()
    state.read(wire, requests, limits.Limits(), cache, Keys())
    wire.fetched.clear()
    snapshots = state.read(wire, requests, limits.Limits(), cache, Keys())
    assert wire.fetched == [huge.nbytes, huge.nbytes]
    sizes = [snapshot.tensor(key).size for snapshot, key in zip(snapshots, "ab", strict=True)]
    assert sizes == [huge.size] * 2
    wire.close()
