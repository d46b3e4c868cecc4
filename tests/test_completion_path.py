"""One Lua caller and one completion path: how a script call is made (KEYS, the keys-as-arguments
re-run), grouping by hash slot, and a single Redis as the one-slot case of the cluster path."""

from __future__ import annotations

import numpy as np
from conftest import stub_blob

from aiworker import Client, Worker
from aiworker.protocol.keys import key_slot
from aiworker.storage import lua
from aiworker.storage.plans import by_slot, one_slot
from aiworker.storage.wire import Wire


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

    def calls(name: str) -> int:
        found = client.info("commandstats").get(f"cmdstat_{name}", {})
        return int(found.get("calls", 0))

    before = {name: calls(name) for name in ("evalsha", "xpending")}
    assert client.modelexecute("m", ["a", "a"], ["o{x}"]) == "OK"
    after = {name: calls(name) for name in before}
    assert after["evalsha"] - before["evalsha"] == 2, "one read, one completion"
    assert after["xpending"] == before["xpending"]
    assert not list(client.scan_iter(match=f"{client.keyspace.prefix}done:*"))
    assert client.infoget("m")["calls"] == 2
