"""Autobatching: the batcher's rules (pure, with a fake clock), batch runs, and a real worker."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, at_once, stub_blob, torch_blob, wait_until, worker_env

from aiworker import Client, Worker
from aiworker.backends.stub import StubModel
from aiworker.execution import batching
from aiworker.execution.batching import Batch, Batcher, Member, run_batch, signature_of
from aiworker.parser import parse_command
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.storage.model import ModelMeta

# pure: the batcher --------------------------------------------------------------------------


def meta(batch: int, minbatch: int = 0, timeout: int = 0, digest: str = "d1") -> ModelMeta:
    return ModelMeta(
        "STUB",
        "CPU",
        batchsize=batch,
        minbatchsize=minbatch,
        minbatchtimeout=timeout,
        digest=digest,
    )


def member(m: ModelMeta, rows: int = 1, cols: int = 2, at: float = 0.0, **kw: Any) -> Member:
    return Member("m", m, [np.zeros((rows, cols), np.float32)], arrived=at, **kw)


def test_minbatchsize_zero_dispatches_whatever_is_queued() -> None:
    b = Batcher()
    b.add(member(meta(4), at=0))
    b.add(member(meta(4), at=0))
    batch = b.take(now=0)
    assert batch is not None and batch.total == 2 and len(b) == 0


def test_batchsize_caps_a_batch_and_the_rest_waits_its_turn() -> None:
    b = Batcher()
    for _ in range(5):
        b.add(member(meta(2)))
    sizes = []
    while (batch := b.take(now=0)) is not None:
        sizes.append(batch.total)
        b.finished(batch)
    assert sizes == [2, 2, 1]


def test_partial_batch_waits_while_its_model_runs_but_a_full_one_starts() -> None:
    b = Batcher()
    b.add(member(meta(2)))
    running = b.take(now=0)
    assert running is not None
    b.add(member(meta(2)))
    assert b.take(now=0) is None  # partial: waits for the running batch
    b.add(member(meta(2)))
    full = b.take(now=0)
    assert full is not None and full.total == 2  # full: runs alongside
    b.add(member(meta(2)))
    b.finished(running)
    b.finished(full)
    assert b.take(now=0) is not None


def test_after_a_batch_is_answered_a_partial_one_waits_for_its_requesters() -> None:
    """For up to the hold, a partial batch of the model starts only once it holds the rows that
    were waiting plus those just answered (closed-loop clients come back); then it starts as is."""
    b = Batcher()
    m = meta(8)
    for _ in range(3):
        b.add(member(m))
    answered = b.take(now=0)
    assert answered is not None and answered.total == 3
    b.add(member(m, at=0.01))  # arrived while the batch ran
    b.finished(answered, now=1.0, hold_s=0.5)
    assert b.take(now=1.1) is None  # 1 row: the 3 answered are expected back
    assert b.next_wakeup() == pytest.approx(1.5)
    b.add(member(m, at=1.1))
    b.add(member(m, at=1.1))
    assert b.take(now=1.2) is None
    b.add(member(m, at=1.2))
    back = b.take(now=1.2)
    assert back is not None and back.total == 4  # 1 waiting + the 3 answered
    b.add(member(m, at=1.3))
    b.finished(back, now=2.0, hold_s=0.5)
    assert b.take(now=2.4) is None
    late = b.take(now=2.5)  # the hold is over: whatever waits runs
    assert late is not None and late.total == 1


def test_a_batch_as_full_as_it_can_get_does_not_wait() -> None:
    """Requests that no longer fit make the chosen ones a full batch: it starts while the model
    runs, and does not wait for a hold."""
    b = Batcher()
    m = meta(4)
    b.add(member(m))
    running = b.take(now=0)
    assert running is not None
    b.add(member(m, rows=3))
    b.add(member(m, rows=3))
    first = b.take(now=0)
    assert first is not None and first.total == 3  # the other 3 rows do not fit
    b.finished(running, now=1.0, hold_s=0.5)
    b.finished(first, now=1.0, hold_s=0.5)
    assert b.take(now=1.1) is None  # 3 rows waiting, 3 + 1 + 3 expected (capped at 4)
    b.add(member(m, rows=2))
    second = b.take(now=1.1)
    assert second is not None and second.total == 3  # 2 more rows would not fit beside it


def test_head_alone_may_exceed_batchsize() -> None:
    b = Batcher()
    b.add(member(meta(2, 2), rows=3))
    b.add(member(meta(2, 2), rows=1))
    first = b.take(now=0)
    assert first is not None and first.total == 3 and len(first.members) == 1
    assert b.take(now=0) is None  # the second waits for a partner (MINBATCHSIZE 2)


def test_a_request_that_does_not_fit_beside_a_waiting_one_is_not_held_by_it() -> None:
    """A lone request waiting for partners (MINBATCHSIZE, no MINBATCHTIMEOUT) must not hold a
    request behind it that is a full batch on its own: the group holds more than one batch
    takes, so its oldest batch runs as it is, then the next."""
    b = Batcher()
    b.add(member(meta(4, 4), rows=1))
    b.add(member(meta(4, 4), rows=4))
    first = b.take(now=0)
    assert first is not None and first.total == 1
    b.finished(first)
    second = b.take(now=0)
    assert second is not None and second.total == 4


def test_lone_request_waits_without_minbatchtimeout() -> None:
    b = Batcher()
    b.add(member(meta(4, 2), at=0, entry_id="1-0"))
    assert b.take(now=1000) is None
    assert b.next_wakeup() is None
    assert b.held_entry_ids() == ["1-0"]
    b.add(member(meta(4, 2), at=5))
    batch = b.take(now=5)
    assert batch is not None and batch.total == 2


def test_minbatchtimeout_releases_a_short_batch() -> None:
    b = Batcher()
    b.add(member(meta(4, 3, timeout=100), at=10.0))
    b.add(member(meta(4, 3, timeout=100), at=10.05))
    assert b.take(now=10.05) is None
    assert b.next_wakeup() == pytest.approx(10.1)
    batch = b.take(now=10.1)
    assert batch is not None and batch.total == 2


def test_incompatible_shapes_dtypes_and_versions_do_not_batch() -> None:
    b = Batcher()
    b.add(member(meta(4, 2), cols=2))
    b.add(member(meta(4, 2), cols=3))
    b.add(member(meta(4, 2, digest="d2"), cols=2))
    b.add(Member("m", meta(4, 2), [np.zeros((1, 2), np.int32)]))
    assert b.take(now=0) is None
    assert len(b) == 4
    b.add(member(meta(4, 2), cols=3))
    batch = b.take(now=0)
    assert batch is not None and [m.inputs[0].shape for m in batch.members] == [(1, 3), (1, 3)]


def test_a_group_of_a_version_no_longer_stored_runs_at_once() -> None:
    """No request can join a group once its model is stored anew or deleted. The batcher has the
    stored version read when a request of another version comes, or when a group has waited
    VERSION_CHECK_S (then as often while some wait); a group of another version runs as it is."""
    b, check_s = Batcher(), batching.VERSION_CHECK_S
    b.add(member(meta(8, 8), at=0, entry_id="1-0"))
    b.add(member(meta(8, 8), at=0.5, entry_id="2-0"))
    assert b.to_check(now=0.5) == []
    b.add(member(meta(8, 8, digest="d2"), at=0.6))  # read after the model was stored anew
    assert b.take(now=0.6) is None  # not known yet which version is stored
    assert b.to_check(now=0.6) == ["m"]
    b.stored("m", "d2")
    old = b.take(now=0.6)
    assert old is not None and [m.entry_id for m in old.members] == ["1-0", "2-0"]
    assert b.take(now=0.6) is None  # the stored version's request waits for its partners
    assert b.to_check(now=0.6 + check_s - 0.01) == []
    assert b.to_check(now=0.6 + check_s) == ["m"]
    b.stored("m", "")  # MODELDEL
    gone = b.take(now=2)
    assert gone is not None and gone.model == ("m", "d2") and not b
    assert b.to_check(now=100) == []  # nothing waits: nothing to read

    b.add(member(meta(8, 8, digest="d2"), at=200))
    assert b.to_check(now=200 + check_s - 0.01) == []
    assert b.to_check(now=200 + check_s) == ["m"]  # a lone request waited that long
    b.stored("m", "d2")  # still stored: it waits on
    assert b.take(now=300) is None


def test_zero_dim_inputs_run_alone() -> None:
    assert signature_of([np.float32(1.0) * np.ones(())]) is None
    b = Batcher()
    b.add(Member("m", meta(4, 2), [np.ones((), np.float32)]))
    batch = b.take(now=0)
    assert batch is not None and len(batch.members) == 1


def test_inputs_without_rows_run_alone() -> None:
    """RedisAI ran a request whose batch dimension is 0 alone: it waits for no partners."""
    assert signature_of([np.zeros((0, 2), np.float32)]) is None
    b = Batcher()
    b.add(Member("m", meta(4, 4), [np.zeros((0, 2), np.float32)]))
    batch = b.take(now=0)
    assert batch is not None and len(batch.members) == 1 and not batch.members[0].batching


def test_a_dag_op_without_rows_does_not_wait_for_partners(client: Client, worker: Worker) -> None:
    """A script in a DAG can hand a batching model a tensor of 0 rows (TENSORSET cannot)."""
    pytest.importorskip("torch")
    torch_script = (
        "def empty(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        "    return tensors[0][:0]\n"
    )
    store_batched(client, batch=4, minbatch=4)
    client.scriptstore("s", "CPU", torch_script, entry_points=["empty"])
    client.tensorset("a", np.ones((3, 2), np.float32))
    reply = submit(
        client,
        "AI.DAGEXECUTE LOAD 1 a TIMEOUT 5000 |> AI.SCRIPTEXECUTE s empty INPUTS 1 a OUTPUTS 1 e"
        " |> AI.MODELEXECUTE m INPUTS 1 e OUTPUTS 1 x |> AI.TENSORGET x META",
    )
    assert reply["status"] == "ok"
    assert reply["results"][2]["shape"] == [0, 2]


def test_expired_members_leave_the_batcher() -> None:
    b = Batcher()
    b.add(member(meta(4, 2), deadline=1.0, entry_id="1-0"))
    b.add(member(meta(4, 2), deadline=None))
    assert b.next_wakeup() == 1.0
    assert b.expired(now=0.5) == []
    gone = b.expired(now=1.5)
    assert [m.entry_id for m in gone] == ["1-0"] and len(b) == 1


def test_force_dispatches_waiting_groups() -> None:
    b = Batcher()
    b.add(member(meta(4, 2)))
    assert b.take(now=0) is None
    assert b.take(now=0, force=True) is not None


# pure: running a batch ----------------------------------------------------------------------


class StubExecutor:
    """Stands in for ``Models``: hands out one stub model (the backend is the real STUB)."""

    def __init__(self, op: str) -> None:
        self.stub = StubModel({"op": op})

    @contextlib.contextmanager
    def model(self, key: str, meta: ModelMeta) -> Iterator[StubModel]:
        yield self.stub


def test_run_batch_concatenates_and_splits_by_size() -> None:
    members = [Member("m", meta(8), [np.full((n, 2), n, np.float32)]) for n in (1, 3, 2)]
    results = run_batch(StubExecutor("identity"), Batch(members))
    for m, r in zip(members, results, strict=True):
        assert r.outputs is not None
        np.testing.assert_array_equal(r.outputs[0], m.inputs[0])
    assert len({r.duration_us for r in results}) == 1  # every member counts the batch duration


def test_run_batch_string_tensors() -> None:
    def strings(*values: bytes) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    members = [Member("m", meta(4), [strings(b"a")]), Member("m", meta(4), [strings(b"b", b"c")])]
    results = run_batch(StubExecutor("identity"), Batch(members))
    assert [list(r.outputs[0]) for r in results if r.outputs] == [[b"a"], [b"b", b"c"]]


def test_run_batch_wrong_output_batch_size_fails_every_member() -> None:
    members = [member(meta(4)), member(meta(4))]
    results = run_batch(StubExecutor("first_row"), Batch(members))
    assert [r.error for r in results] == ["Model did not generate the expected batch size"] * 2
    # a lone request is not checked (RedisAI checked only real batches)
    (alone,) = run_batch(StubExecutor("first_row"), Batch([member(meta(4), rows=2)]))
    assert alone.outputs is not None and alone.outputs[0].shape == (1, 2)


def test_a_member_whose_input_fails_the_model_fails_alone() -> None:
    """One requester's input makes the model fail (a negative value here, an index out of
    range in an embedding): the batch is run again in halves, down to that member, and only it
    gets the error. A model that fails whatever its input fails every member."""
    rows = [1.0, -1.0, 2.0, 3.0, 4.0]
    members = [Member("m", meta(8), [np.full((1, 2), v, np.float32)]) for v in rows]
    stub = StubExecutor("nonnegative")
    results = run_batch(stub, Batch(members))
    assert [r.error for r in results] == ["", "STUB: negative input", "", "", ""]
    for value, result in zip(rows, results, strict=True):
        if result.outputs is not None:
            np.testing.assert_array_equal(result.outputs[0], np.full((1, 2), value))
    assert stub.stub.rows[0] == 5 and len(stub.stub.rows) < 2 * len(rows)
    # each says the run it got its result from: [1, -1] failed, then ran apart; [2, 3, 4] passed
    assert [r.ran_in for r in results] == [(1, 1), (1, 1), (3, 3), (3, 3), (3, 3)]
    failing = run_batch(StubExecutor("fail"), Batch(members))
    assert [r.error for r in failing] == ["stub failure"] * 5
    assert all(r.counted for r in failing)


# with Redis and a worker --------------------------------------------------------------------


def submit(client: Client, command: str) -> dict[str, Any]:
    """Queue a RedisAI command and return the worker's whole reply."""
    return client.submit_reply("CPU", parse_command(command)).to_map()


def store_batched(client: Client, op: str = "identity", **batching: int) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob(op), **batching)


CLIENT_PROCESS = """
import json, sys
import numpy as np
from aiworker import Client
from aiworker.parser import parse_command
c = Client.from_url(sys.argv[1], reply_timeout=30)
c.tensorset(sys.argv[2], np.array([[float(sys.argv[3]), 1.0]], dtype=np.float32))
cmd = f"AI.MODELEXECUTE m INPUTS 1 {sys.argv[2]} OUTPUTS 1 out_{sys.argv[2]}"
print(json.dumps(c.submit_reply("CPU", parse_command(cmd)).to_map()))
"""


def test_two_client_processes_are_served_in_one_batch(
    client: Client, worker: Worker, redis_server: Any
) -> None:
    store_batched(client, batch=2, minbatch=2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT_PROCESS, redis_server.url, name, value],
            env=worker_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, value in (("a", "3"), ("b", "5"))
    ]
    replies = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        replies.append(json.loads(out))
    assert [r["status"] for r in replies] == ["ok", "ok"]
    assert [r["batch"] for r in replies] == [{"size": 2, "requests": 2}] * 2
    np.testing.assert_array_equal(client.tensorget("out_a"), [[3, 1]])
    np.testing.assert_array_equal(client.tensorget("out_b"), [[5, 1]])
    info = client.infoget("m")
    # one batch: both requests count the same run's duration; samples are their own rows
    batch_us = round(replies[0]["compute_ms"] * 1000)
    assert replies[0]["compute_ms"] == replies[1]["compute_ms"]
    assert (info["calls"], info["samples"], info["errors"]) == (2, 2, 0)
    assert abs(info["duration"] - 2 * batch_us) <= 2


def test_lone_request_waits_for_a_partner(client: Client, worker: Worker) -> None:
    store_batched(client, batch=2, minbatch=2)
    client.tensorset("a", np.ones((1, 2), np.float32))
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 x"))
    )
    thread.start()
    wait_until(lambda: worker.held_entry_ids(), timeout=10)
    queue = client.keyspace.queue("CPU")
    assert client.xpending(queue, CONSUMER_GROUP)["pending"] == 1
    time.sleep(0.3)
    assert not result  # still waiting: no MINBATCHTIMEOUT
    other = submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 y")
    thread.join(10)
    assert result["status"] == other["status"] == "ok"
    assert result["batch"] == other["batch"] == {"size": 2, "requests": 2}
    wait_until(lambda: worker.held_entry_ids() == [], timeout=10)  # released after the reply


def test_minbatchtimeout_completes_a_lone_request(client: Client, worker: Worker) -> None:
    store_batched(client, batch=4, minbatch=2, minbatchtimeout=100)
    client.tensorset("a", np.ones((1, 2), np.float32))
    reply = submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 x")
    assert reply["status"] == "ok"
    assert reply["batch"] == {"size": 1, "requests": 1}


def test_a_full_request_is_not_held_behind_a_lone_one(client: Client, worker: Worker) -> None:
    store_batched(client, batch=4, minbatch=4)
    client.tensorset("a", np.ones((1, 2), np.float32))
    client.tensorset("b", np.ones((4, 2), np.float32))
    lone: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: lone.update(submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 x"))
    )
    thread.start()
    wait_until(lambda: worker.held_entry_ids(), timeout=10)
    full = submit(client, "AI.MODELEXECUTE m INPUTS 1 b OUTPUTS 1 y TIMEOUT 5000")
    thread.join(10)
    assert full["status"] == lone["status"] == "ok"
    assert full["batch"] == {"size": 4, "requests": 1}
    np.testing.assert_array_equal(client.tensorget("y"), np.ones((4, 2)))


def test_waiting_request_times_out(client: Client, worker: Worker) -> None:
    store_batched(client, batch=2, minbatch=2)
    client.tensorset("a", np.ones((1, 2), np.float32))
    reply = submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 x TIMEOUT 150")
    assert reply["status"] == "timedout"
    assert not client.exists("x")


@pytest.mark.parametrize("change", ["restore", "unbatched", "delete"])
def test_requests_waiting_for_partners_are_answered_once_their_model_changes(
    client: Client, worker: Worker, redis_server: Any, change: str
) -> None:
    """Requests waiting for partners that can no longer come (the model was stored anew, or
    deleted) run as they are instead of waiting forever: on the stored version, or, the model
    gone, failing as a request for a missing model does."""
    store_batched(client, "add", batch=8, minbatch=8)
    a = np.ones((1, 2), np.float32)
    waiter = Client.from_url(redis_server.url, reply_timeout=10)
    replies: list[Any] = []

    def run() -> None:
        try:
            replies.append(waiter.run("m", {"a": a, "b": a}, ["o"])["o"].tolist())
        except Exception as exc:
            replies.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(worker.held_entry_ids()) == 2, timeout=10)
    if change == "delete":
        client.modeldel("m")
    elif change == "restore":  # a new version that needs no partners
        store_batched(client, "add", batch=8, minbatch=1)
    else:  # one that does not batch: its requests never meet the waiting ones
        store_batched(client, "add")
    if change != "delete":
        assert client.run("m", {"a": a, "b": a}, ["o"])["o"].tolist() == [[2, 2]]
    for thread in threads:
        thread.join(15)
    waiter.close()
    answer = "model key is empty" if change == "delete" else [[2, 2]]
    assert replies == [answer] * 2
    wait_until(lambda: worker.held_entry_ids() == [], timeout=10)
    assert client.xpending(client.keyspace.queue("CPU"), CONSUMER_GROUP)["pending"] == 0


def test_batch_size_mismatch_is_every_members_error(client: Client, worker: Worker) -> None:
    store_batched(client, "first_row", batch=2, minbatch=2)
    client.tensorset("a", np.ones((1, 2), np.float32))
    replies: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=lambda n=n: replies.append(
                submit(client, f"AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 x{n}")
            )
        )
        for n in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r["error"] for r in replies] == ["Model did not generate the expected batch size"] * 2
    info = client.infoget("m")
    assert (info["calls"], info["errors"]) == (2, 2)


def test_string_tensors_batch_through_the_worker(client: Client, worker: Worker) -> None:
    store_batched(client, batch=2, minbatch=2)
    client.tensorset("s1", ["x"], shape=[1], dtype="STRING")
    client.tensorset("s2", ["y"], shape=[1], dtype="STRING")
    replies: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=lambda k=k: replies.append(
                submit(client, f"AI.MODELEXECUTE m INPUTS 1 {k} OUTPUTS 1 out_{k}")
            )
        )
        for k in ("s1", "s2")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r["batch"]["requests"] == 2 for r in replies)
    assert client.tensorget("out_s1", as_numpy=False)["values"] == ["x"]
    assert client.tensorget("out_s2", as_numpy=False)["values"] == ["y"]


def test_torchscript_batched_numerics_match_unbatched(client: Client, worker: Worker) -> None:
    client.modelstore("m", "TORCH", "CPU", torch_blob("mul"), batch=4, minbatch=4)
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((n, 3)).astype(np.float32) for n in (1, 2, 1)]
    for i, a in enumerate(rows):
        client.tensorset(f"a{i}", a)
    replies: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=lambda i=i: replies.append(
                submit(client, f"AI.MODELEXECUTE m INPUTS 2 a{i} a{i} OUTPUTS 1 y{i}")
            )
        )
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r["batch"] for r in replies] == [{"size": 4, "requests": 3}] * 3
    for i, a in enumerate(rows):
        np.testing.assert_allclose(client.tensorget(f"y{i}"), a * a, rtol=1e-6)
    assert client.infoget("m")["samples"] == 4


def test_a_request_that_fails_a_batched_torch_model_fails_alone(
    client: Client, worker: Worker
) -> None:
    """An embedding looked up at an index out of range fails the run; batched with a good
    request (MINBATCHSIZE 2 makes them wait for each other), it failed that one too."""
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 3).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(embedding), buffer)
    client.modelstore("emb", "TORCH", "CPU", buffer.getvalue(), batch=4, minbatch=2)
    client.tensorset("good", np.array([[1, 2]], np.int64))
    client.tensorset("bad", np.array([[1, 99]], np.int64))

    def run(key: str) -> dict[str, Any]:
        return submit(client, f"AI.MODELEXECUTE emb INPUTS 1 {key} OUTPUTS 1 out_{key}")

    good, bad = at_once([lambda: run("good"), lambda: run("bad")])
    assert good is not None and bad is not None
    # the batch of both failed; each reply says the run it got its result from: its own
    assert good["status"] == "ok" and good["batch"] == {"size": 1, "requests": 1}, good
    assert bad["status"] == "error" and "index out of range" in bad["error"]
    assert bad["batch"] == {"size": 1, "requests": 1}
    assert client.infoget("emb")["calls"] == 2
    expected = embedding(torch.tensor([[1, 2]])).detach().numpy()
    np.testing.assert_allclose(client.tensorget("out_good"), expected, rtol=1e-6)
    assert not client.exists("out_bad")


def test_dag_op_batches_with_a_stream_request(client: Client, worker: Worker) -> None:
    store_batched(client, batch=2, minbatch=2)
    client.tensorset("a", np.array([[1, 2]], np.float32))
    client.tensorset("b", np.array([[3, 4]], np.float32))
    out: dict[str, Any] = {}
    dag = client.dag(load=["a"]).modelexecute("m", ["a"], ["y"]).tensorget("y")
    thread = threading.Thread(target=lambda: out.update(result=dag.execute()))
    thread.start()
    reply = submit(client, "AI.MODELEXECUTE m INPUTS 1 b OUTPUTS 1 z")
    thread.join(30)
    assert reply["batch"] == {"size": 2, "requests": 2}
    assert out["result"][0] == "OK"
    np.testing.assert_array_equal(out["result"][1], [[1, 2]])
    np.testing.assert_array_equal(client.tensorget("z"), [[3, 4]])
    assert client.infoget("m")["calls"] == 2


def test_stop_runs_what_waits_in_the_batcher(client: Client, settings: Any) -> None:
    store_batched(client, batch=2, minbatch=2)
    client.tensorset("a", np.ones((1, 2), np.float32))
    w = Worker(settings).start()
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(submit(client, "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 x"))
    )
    thread.start()
    wait_until(lambda: w.held_entry_ids(), timeout=10)
    w.stop(timeout=10)
    thread.join(10)
    assert result["status"] == "ok"
