"""Hypothesis throws malformed entries at a live worker process; it answers each and stays up."""

from __future__ import annotations

import functools
import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import torch_blob, wait_until
from faults import (
    KEYS,
    QUEUE,
    WorkerProcess,
    content,
    live_pids,
    pending_ids,
    stub_model,
    tensor,
    wait_for_workers,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.protocol.tensor import DTYPE_NAMES
from aiworker.storage import model as model_store

MODEL_KINDS = (
    "good", "batched", "missing", "string", "list", "tensor", "stub_garbage", "stub_unknown_op",
    "torch_garbage", "torch_truncated", "torch_flipped", "unknown_backend", "huge_chunks",
    "wrong_size", "missing_chunk",
)  # fmt: skip
# Mostly valid inputs, so that the model's own faults are reached too.
# A few flipped bytes may leave a TorchScript archive loadable and correct: it may run. A model's
# own ``size`` field is not trusted (its chunks' real lengths are), so a wrong one runs too.
MAY_RUN = ("good", "batched", "torch_flipped", "wrong_size")
# Output keys: missing or a tensor may be written; anything else never (RedisAI's WRONGTYPE rule),
# nor aiworker's own keys - the job queue itself included - nor a name that is not UTF-8.
OUT_KINDS = ("missing", "good", "string", "list", "model", "queue", "own", "non_utf8")
WRITABLE_OUTPUTS = ("missing", "good")
KEY_KINDS = ("good", "good", "good", "missing", "string", "list", "model", "hash")
SHAPES = st.one_of(
    st.lists(st.integers(1, 4), max_size=3).map(lambda dims: ",".join(map(str, dims))),
    st.sampled_from(["100000,100000,100000", "99999999999999999999", "-1", "0", "1e3", "2,,2"]),
    st.text(max_size=10),
)
TENSOR_FIELDS = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["tensor", "tensor", "tensor", "model", "other"]),
        "dtype": st.one_of(st.sampled_from(DTYPE_NAMES), st.text(max_size=6)),
        "shape": SHAPES,
    },
    optional={"blob": st.binary(max_size=80), "values": st.text(max_size=40)},
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=8),
)
JOB_MAPS = st.dictionaries(
    st.sampled_from(["op", "key", "inputs", "outputs", "timeout_ms", "function", "args", "x"]),
    st.one_of(
        SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=3), SCALARS)
    ),
    max_size=6,
)
TOKENS = st.lists(
    st.one_of(
        st.sampled_from(["INPUTS", "OUTPUTS", "TIMEOUT", "KEYS", "ARGS", "0", "1", "2", "-1", "m"]),
        st.text(max_size=6),
    ),
    max_size=10,
)


@dataclass
class Case:
    """One fuzzed entry and the keys to create before it is enqueued."""

    entry: dict[str, Any]
    keys: dict[str, Any] = field(default_factory=dict)
    may_succeed: bool = False
    reply: bool = True


@st.composite
def scenario(draw: st.DrawFn) -> Case:
    """A well-formed MODELEXECUTE whose model, inputs or reply key are broken."""
    model_kind = draw(st.sampled_from(MODEL_KINDS))
    input_kinds = draw(st.lists(st.sampled_from(KEY_KINDS), min_size=1, max_size=2))
    keys: dict[str, Any] = {"model": ("model", model_kind)}
    inputs = []
    for n, kind in enumerate(input_kinds):
        inputs.append(f"in{n}")
        keys[f"in{n}"] = (kind, draw(TENSOR_FIELDS) if kind == "hash" else None)
    if draw(st.integers(0, 9)) == 0:  # one name many times: memory must not multiply
        inputs = [inputs[0]] * draw(st.integers(2, 300))
    out_kind = draw(st.sampled_from(OUT_KINDS))
    keys["out"] = (out_kind, None)
    text = draw(st.booleans()) or out_kind == "non_utf8"  # msgpack text is UTF-8 by definition
    cmd = f"AI.MODELEXECUTE model INPUTS {len(inputs)} {' '.join(inputs)} OUTPUTS 1 out"
    if draw(st.booleans()):
        cmd += f" TIMEOUT {draw(st.integers(1, 100_000))}"
    entry: dict[str, Any] = (
        {"cmd": cmd}
        if text
        else {
            "job": msgpack.packb(
                {"op": "MODELEXECUTE", "key": "model", "inputs": inputs, "outputs": ["out"]}
            )
        }
    )
    broken_reply = (
        draw(st.sampled_from(["list"] * 9 + ["string"])) == "string"
    )  # reply key unusable
    if broken_reply:
        keys["reply"] = ("string", None)
    may_succeed = model_kind in MAY_RUN and out_kind in WRITABLE_OUTPUTS
    return Case(entry, keys, may_succeed=may_succeed, reply=not broken_reply)


def _pinned(model_kind: str, input_kind: str, **fields: Any) -> Case:
    """A scenario chosen by hand: one input of ``input_kind`` (``huge``: a declared shape of
    4 PB with no blob), the model of ``model_kind``, one output."""
    if input_kind == "huge":
        spec: tuple[str, Any] = (
            "hash",
            {"kind": "tensor", "dtype": "FLOAT", "shape": "100000,100000,100000"},
        )
    elif fields:
        spec = ("hash", {"kind": "tensor", **fields})
    else:
        spec = (input_kind, None)
    keys = {"model": ("model", model_kind), "in0": spec, "out": ("missing", None)}
    cmd = "AI.MODELEXECUTE model INPUTS 1 in0 OUTPUTS 1 out"
    return Case({"cmd": cmd}, keys, may_succeed=model_kind in MAY_RUN and input_kind == "good")


CASES = st.one_of(
    st.dictionaries(
        st.sampled_from(["foo", "cmdx", "jobs", "REPLY"]), st.binary(max_size=16), max_size=3
    ).map(lambda fields: Case(dict(fields))),
    st.one_of(st.text(max_size=80), TOKENS.map(lambda t: " ".join(["AI.MODELEXECUTE", *t]))).map(
        lambda cmd: Case({"cmd": cmd})
    ),
    st.one_of(st.binary(max_size=40), JOB_MAPS.map(msgpack.packb)).map(
        lambda job: Case({"job": job})
    ),
    scenario(),
)

_ids = itertools.count()


@functools.cache
def _torch() -> bytes:
    return torch_blob("add")  # imports torch: only when a case needs it


def _model(r: Client, key: str, kind: str, rng: random.Random) -> None:
    def store(backend: str, blob: bytes) -> None:
        model_store.store_model(r, KEYS, key, model_store.ModelMeta(backend, "CPU"), blob)

    if kind == "good":
        stub_model(r, key, op="identity")
    elif kind == "batched":  # through the autobatcher
        stub_model(r, key, batch=(4, 0, 0), op="identity")
    elif kind == "string":
        r.set(key, "x")
    elif kind == "list":
        r.rpush(key, "x")
    elif kind == "tensor":
        tensor(r, key, [1.0])
    elif kind == "stub_garbage":
        store("STUB", bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    elif kind == "stub_unknown_op":
        store("STUB", json.dumps({"op": "explode"}).encode())
    elif kind == "torch_garbage":
        store("TORCH", bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))))
    elif kind == "torch_truncated":
        store("TORCH", _torch()[: rng.randint(1, len(_torch()) - 1)])
    elif kind == "torch_flipped":
        blob = bytearray(_torch())
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        store("TORCH", bytes(blob))
    elif kind == "unknown_backend":
        stub_model(r, key, op="identity")
        r.hset(key, "backend", "NOPE")
    elif kind == "huge_chunks":
        stub_model(r, key, op="identity")
        r.hset(key, "chunks", str(10**12))
    elif kind == "wrong_size":
        stub_model(r, key, op="identity")
        r.hset(key, "size", "3")
    elif kind == "missing_chunk":
        stub_model(r, key, op="identity")
        r.hset(key, "chunks", "2")


def _create(r: Client, key: str, spec: tuple[str, Any], rng: random.Random) -> None:
    kind, data = spec
    if kind in ("queue", "own", "non_utf8", "missing"):
        return  # the queue and the config hash exist already
    if kind == "model":
        _model(r, key, data or "good", rng)
    elif kind == "string":
        r.set(key, "x")
    elif kind == "list":
        r.rpush(key, "x")
    elif kind == "hash":
        r.hset(key, mapping=data)
    elif kind == "good":
        tensor(r, key, [1.0, 2.0])


def _out_name(case: Case, n: int) -> str:
    kind = case.keys.get("out", ("missing", None))[0]
    if kind == "queue":
        return QUEUE
    if kind == "own":
        return KEYS.config
    return f"f{n}:out"


def _renamed(case: Case, n: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The case with its keys made unique to this example (prefix ``f<n>:``)."""
    names = {k: f"f{n}:{k}" for k in ("model", "in0", "in1", "out", "reply")}
    names["out"] = _out_name(case, n)
    entry = {}
    for name, value in case.entry.items():
        if name == "cmd":
            value = " ".join(names.get(t, t) for t in value.split(" "))
            if case.keys.get("out", ("",))[0] == "non_utf8":
                value = value.encode().replace(b"f%d:out" % n, b"f%d:\xffout" % n)
        elif name == "job" and case.keys:
            data = msgpack.unpackb(value)
            data = {
                k: ([names[i] for i in v] if isinstance(v, list) else names.get(v, v))
                for k, v in data.items()
            }
            value = msgpack.packb(data)
        entry[name] = value
    return entry, names


def pop(client: Client, key: str, timeout: float) -> Any:
    """BLPOP in slices below the client's socket timeout (a first TORCH job imports torch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popped = client.blpop([key], 2)
        if popped is not None:
            return popped
    return None


@pytest.fixture
def live_worker(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> Iterator[WorkerProcess]:
    stub_model(client, "good", op="add")
    tensor(client, "ga", [1, 2])
    tensor(client, "gb", [10, 20])
    proc = WorkerProcess(
        redis_server.url,
        tmp_path / "worker.log",
        threads_per_queue=1,
        max_tensor_bytes=1 << 20,
        max_job_bytes=4 << 20,
        visibility_timeout=5,
    )
    wait_for_workers(client, [proc])
    yield proc
    proc.stop()


@pytest.mark.slow
def test_malformed_entries_never_take_a_worker_down(
    client: Client, live_worker: WorkerProcess
) -> None:
    answered = []

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=CASES, seed=st.integers(0, 2**32))
    @example(case=_pinned("good", "huge"), seed=0)
    @example(case=_pinned("batched", "huge"), seed=0)
    @example(case=_pinned("batched", "good", dtype="INT8", shape="2,2", blob=b"\x01" * 3), seed=0)
    @example(case=_pinned("good", "good", dtype="FLOAT", shape="3", blob=b"\x00" * 5), seed=0)
    @example(case=_pinned("missing", "good"), seed=0)
    @example(case=_pinned("stub_garbage", "good"), seed=1)
    @example(case=_pinned("stub_unknown_op", "good"), seed=0)
    @example(case=_pinned("torch_garbage", "good"), seed=2)
    @example(case=_pinned("torch_truncated", "good"), seed=3)
    @example(case=_pinned("torch_flipped", "good"), seed=4)
    @example(case=_pinned("unknown_backend", "good"), seed=0)
    @example(case=_pinned("huge_chunks", "good"), seed=0)
    @example(case=_pinned("wrong_size", "good"), seed=0)
    @example(case=_pinned("missing_chunk", "good"), seed=0)
    @example(case=_pinned("list", "good"), seed=0)
    @example(case=_pinned("good", "string"), seed=0)
    @example(case=_pinned("good", "model"), seed=0)
    def run(case: Case, seed: int) -> None:
        n = next(_ids)
        rng = random.Random(seed)
        entry, names = _renamed(case, n)
        for key, spec in case.keys.items():
            _create(client, names[key], spec, rng)
        reply_key = names["reply"]
        # What the job does not own must come out unchanged.
        owned = {names[k] for k in case.keys if k != "reply"} - {QUEUE}
        before = {key: content(client, key) for key in owned | {KEYS.config}}
        client.xadd(QUEUE, {**entry, "reply": reply_key})
        status = ""
        if case.reply:
            popped = pop(client, reply_key, 30)
            assert popped is not None, f"no reply to {entry!r}"
            reply = json.loads(popped[1])
            status = reply["status"]
            assert status in ("ok", "error", "timedout"), reply
            if not case.may_succeed:
                assert status != "ok", (entry, reply)
            answered.append(reply.get("error", reply["status"]))
        else:
            wait_until(lambda: client.xlen(QUEUE) == 0, timeout=20)
        for key, dumped in before.items():
            unanswered = not case.reply and case.may_succeed  # it may have run, unheard
            if key == names["out"] and (status == "ok" or unanswered):
                if content(client, key) != dumped:  # the job's output: only ever a tensor
                    assert client.hget(key, "kind") == b"tensor", key
                continue
            assert content(client, key) == dumped, f"{key} changed by {entry!r}"
        assert client.type(QUEUE) == b"stream" and client.xinfo_groups(QUEUE), "queue intact"
        # ... and the next good job succeeds.
        client.xadd(
            QUEUE, {"cmd": f"AI.MODELEXECUTE good INPUTS 2 ga gb OUTPUTS 1 g{n}", "reply": f"gr{n}"}
        )
        popped = pop(client, f"gr{n}", 30)
        assert popped is not None and json.loads(popped[1])["status"] == "ok", popped
        assert client.tensorget(f"g{n}").tolist() == [11.0, 22.0]
        if case.reply:
            assert client.llen(reply_key) == 0, "answered once"

    run()
    assert live_worker.proc.poll() is None, live_worker.log()[-3000:]
    wait_until(lambda: live_worker.proc.pid in live_pids(client), timeout=10)
    beats = [json.loads(client.get(k) or "{}") for k in client.scan_iter(KEYS.worker("*"))]
    assert all(b.get("healthy") for b in beats), beats
    assert client.xlen(QUEUE) == 0 and pending_ids(client) == []
    assert len(answered) >= 200 and len(set(answered)) >= 20, sorted(set(answered))
    assert "Traceback" not in live_worker.log(), live_worker.log()[-3000:]
    # 4 PB declared shapes and one tensor named 300 times never made the worker allocate them.
    status = Path(f"/proc/{live_worker.proc.pid}/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    assert peak_kb < 1_500_000, f"worker peak RSS {peak_kb / 1024:.0f} MiB"
