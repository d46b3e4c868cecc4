"""Who may make a cluster completion skip or repeat its writes: the done markers are named by the
queue and the id Redis gave the entry (not by anything a requester chose), and a worker that
stalled until another one completed its entry writes nothing, even once the markers expired.
Against the 3 masters + 3 replicas cluster fixture."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from cluster import WireWrapper
from conftest import stub_blob, wait_until

from aiworker import Worker
from aiworker.execution.outcome import Outcome, StatsRecord
from aiworker.parser.entry import decode_entry
from aiworker.protocol.keys import CONSUMER_GROUP, Keys, key_slot
from aiworker.protocol.requests import ModelExecute
from aiworker.worker.complete import Completer, Finished
from aiworker.worker.consume import ensure_group
from aiworker.worker.leases import HeldEntries

KEYS = Keys()
QUEUE = KEYS.queue("CPU")


def test_a_reused_request_id_does_not_skip_another_request(
    cluster_client: Any, cluster_worker: Worker
) -> None:
    """An entry carrying the request id of another one (``rid``: anyone may write any field)
    used to pre-set that request's done markers, so its outputs and reply were silently skipped.
    Markers are the queue's and the entry id's now: both requests complete."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.array([1, 2], dtype=np.float32))
    assert key_slot("theirs{v}") != key_slot(QUEUE)  # a completion in steps
    command = "AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 {}"
    first_id = c.xadd(QUEUE, {"cmd": command.format("mine{v}"), "reply": "r1{v}", "rid": "same"})
    wait_until(lambda: c.llen("r1{v}"), timeout=20)
    assert json.loads(c.lpop("r1{v}"))["status"] == "ok"
    assert _marker_keys(c, first_id.decode()), "markers named by the id Redis gave the entry"
    c.xadd(QUEUE, {"cmd": command.format("theirs{v}"), "reply": "r2{v}", "rid": "same"})
    wait_until(lambda: c.llen("r2{v}") or not c.xlen(QUEUE), timeout=20)
    time.sleep(0.2)  # the reply, if any, is pushed before the entry is deleted
    second = c.lpop("r2{v}")
    assert second is not None, "the second request was answered"
    assert json.loads(second)["status"] == "ok"
    assert c.tensorget("theirs{v}").tolist() == [2.0, 4.0]
    assert c.infoget("m")["calls"] == 2


def _taken(
    c: Any, w: Worker, consumer: str, output: str, queue: str = QUEUE
) -> tuple[str, Finished]:
    """An entry ``consumer`` read from ``queue`` (the plain queue), and its finished job writing
    [5] to ``output``."""
    ensure_group(c, queue)
    request = ModelExecute("m", ("a",), (output,))
    reply_key, fields = c._jobs.private_entry(request)
    entry_id = c.xadd(queue, fields).decode()
    [(_stream, [(read_id, read)])] = c.xreadgroup(CONSUMER_GROUP, consumer, {queue: ">"}, count=1)
    assert read_id.decode() == entry_id
    job = decode_entry(entry_id, read)
    outcome = Outcome(
        "ok", writes={output: np.array([5.0], np.float32)}, stats=[StatsRecord("m", 5, 1)]
    )
    return entry_id, Finished(entry_id, outcome, job, reply_key, job.fmt, None, read, queue=queue)


def _marker_keys(c: Any, entry_id: str = "") -> list[str]:
    """Done markers (of ``entry_id``, else all)."""
    return list(c.scan_iter(match=f"{KEYS.prefix}done:*{entry_id}"))


def test_a_worker_stalled_past_the_marker_ttl_writes_nothing(
    cluster_client: Any, cluster_settings: Any
) -> None:
    """Worker A takes an entry and stalls; B reclaims and completes it; a newer job writes the
    same output; the done markers expire. A wakes up and completes: it must not write its stale
    output over the newer one, reply twice, or count a third call for two jobs."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    a = Worker(cluster_settings.replace(queue_partitions=1, visibility_timeout=0.4))
    consumer = f"{a.name}:CPU:0"
    entry_id, stale = _taken(c, a, consumer, "out{t}")
    a.held.add(QUEUE, entry_id, consumer)
    time.sleep(0.5)  # A stalls past its visibility timeout

    b_held = HeldEntries()
    b = Completer(KEYS, "otherhost:7", 300, b_held, lease_s=0.4, marker_ttl=1)
    c.xclaim(QUEUE, CONSUMER_GROUP, "otherhost:7:CPU:reclaim", 300, [entry_id])
    b_held.add(QUEUE, entry_id, "otherhost:7:CPU:reclaim")
    fresh = Finished(**{**stale.__dict__, "outcome": Outcome(
        "ok", writes={"out{t}": np.array([7.0], np.float32)}, stats=[StatsRecord("m", 5, 1)]
    )})  # fmt: skip
    [done] = b.complete(a.wires.get(), QUEUE, [fresh])
    assert done.applied and c.tensorget("out{t}").tolist() == [7.0]
    assert _marker_keys(c)
    c.tensorset("out{t}", np.array([9.0], np.float32))  # a newer job's output
    wait_until(lambda: not _marker_keys(c), timeout=5)  # the markers expired

    [late] = a.completer.complete(a.wires.get(), QUEUE, [stale])
    assert not late.applied and late.duplicate
    assert c.tensorget("out{t}").tolist() == [9.0], "the newer output stands"
    assert c.llen(stale.reply or "") == 1, "one reply"
    assert c.infoget("m")["calls"] == 1, "one call counted for one run that completed"
    a.wires.close()


def _xpending_calls(c: Any) -> int:
    node = c.get_node_from_key(QUEUE)
    stats = c.info("commandstats", target_nodes=node)
    return int(stats.get("cmdstat_xpending", {}).get("calls", 0))


@pytest.mark.parametrize("slow", [False, True], ids=["fresh-lease", "slow-job"])
def test_the_ownership_check_runs_only_when_the_lease_may_have_lapsed(
    cluster_client: Any, cluster_settings: Any, slow: bool
) -> None:
    """A completion within half a visibility timeout of taking its entry needs no check (no
    round trip); a slower one checks that the entry is still its own, renews its lease, and is
    applied."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    w = Worker(cluster_settings.replace(queue_partitions=1, visibility_timeout=0.6))
    consumer = f"{w.name}:CPU:0"
    entry_id, finished = _taken(c, w, consumer, "out{s}")
    w.held.add(QUEUE, entry_id, consumer)
    if slow:
        time.sleep(0.4)
    before = _xpending_calls(c)
    [result] = w.completer.complete(w.wires.get(), QUEUE, [finished])
    assert result.applied
    assert _xpending_calls(c) - before == (1 if slow else 0)
    assert c.tensorget("out{s}").tolist() == [5.0] and c.llen(finished.reply or "") == 1
    assert c.xpending(QUEUE, CONSUMER_GROUP)["pending"] == 0
    w.wires.close()


def test_a_large_output_is_staged_in_its_own_slot(
    cluster_client: Any, cluster_worker: Worker
) -> None:
    """An output too large to pass through Lua is written to a stage key by a plain HSET and
    renamed into place, in one MULTI with its completion step on the output's master; no stage
    key is left."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    big = np.arange(50_000, dtype=np.float32)  # 200 KB
    c.tensorset("big", big)
    assert key_slot("copy{z}") != key_slot(QUEUE)
    node = c.get_node_from_key("copy{z}")

    def renames() -> int:
        stats = c.info("commandstats", target_nodes=node)
        return int(stats.get("cmdstat_rename", {}).get("calls", 0))

    before = renames()
    assert c.modelexecute("m", ["big"], ["copy{z}"]) == "OK"
    np.testing.assert_array_equal(c.tensorget("copy{z}"), big)
    assert renames() - before == 1, "renamed into place from its stage key"
    assert not list(c.scan_iter(match=f"{KEYS.prefix}tmp:*"))


class _ScriptRounds(WireWrapper):
    """A worker thread's connection that counts its round trips of scripts (not those that
    load a script a node did not have and run it again)."""

    rounds = 0

    def pipeline(
        self, commands: Any, routes: Any = None, large: bool = False, retry: bool = True
    ) -> Any:
        names = {command[0] for command in commands}
        self.rounds += "EVALSHA" in names and "SCRIPT" not in names
        return self.wire.pipeline(commands, routes, large, retry)


def test_a_split_completion_of_several_streams_is_one_round_trip(
    cluster_client: Any, cluster_settings: Any
) -> None:
    """Entries of two streams (queue partitions on different masters), each with its outputs,
    reply and statistics in other slots than its stream, complete in one round trip of scripts:
    statistics, outputs and replies, acknowledgements (the statistics step took a round trip of
    its own, and each stream its own rounds)."""
    c = cluster_client
    c.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    w = Worker(cluster_settings.replace(queue_partitions=1))
    other = KEYS.queue("CPU:1")
    assert len(masters := {c.get_node_from_key(q).name for q in (QUEUE, other)}) == 2, masters
    consumer = f"{w.name}:CPU:0"
    items = []
    for queue, output in ((QUEUE, "out{a}"), (other, "out{b}")):
        entry_id, finished = _taken(c, w, consumer, output, queue)
        assert len({key_slot(k) for k in (queue, output, KEYS.stats("m"))}) == 3
        w.held.add(queue, entry_id, consumer)
        items.append(finished)
    wire = _ScriptRounds(w.wires.get())
    results = w.completer.complete(wire, QUEUE, items)
    assert [r.applied for r in results] == [True, True]
    assert wire.rounds == 1
    for queue, item in zip((QUEUE, other), items, strict=True):
        assert c.llen(item.reply or "") == 1
        assert c.xpending(queue, CONSUMER_GROUP)["pending"] == 0
    assert c.tensorget("out{a}").tolist() == c.tensorget("out{b}").tolist() == [5.0]
    assert c.infoget("m")["calls"] == 2
    w.wires.close()
