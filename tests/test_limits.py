"""Size limits, the bounded model cache, completion guards, and nothing ever unpickled."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, wait_until
from faults import QUEUE, stub_model, tensor

from aiworker import Client, Settings, Worker
from aiworker.backends.base import LoadedModel
from aiworker.execution.limits import (
    check_entry,
    check_tensor_size,
    declared_nbytes,
    decode_tensor_reply,
)
from aiworker.execution.model_cache import ModelCache
from aiworker.protocol.errors import AIError, LimitExceeded


def run_raw(client: Client, fields: dict[str, object], reply: str = "r") -> dict[str, object]:
    client.xadd(QUEUE, {**fields, "reply": reply})  # type: ignore[dict-item]
    popped = client.blpop([reply], 10)
    assert popped is not None, "the worker answered"
    return json.loads(popped[1])  # type: ignore[no-any-return]


@pytest.fixture
def limited(client: Client, settings: Settings) -> Worker:
    stub_model(client, "m", op="identity")
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(max_tensor_bytes=64, max_model_bytes=200)).start()
    yield w
    w.stop(timeout=5)


def assert_next_good_job_succeeds(client: Client) -> None:
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 ok"}, "good")
    assert reply["status"] == "ok", reply
    assert client.tensorget("ok").tolist() == [1.0, 2.0]


def test_huge_declared_shapes_are_refused_before_allocating(
    client: Client, limited: Worker
) -> None:
    client.hset(
        "huge", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "100000,100000,100000"}
    )
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 huge OUTPUTS 1 o"})
    assert reply["status"] == "error"
    assert "tensor 'huge' would take 4,000,000,000,000,000 bytes" in str(reply["error"])
    assert "max_tensor_bytes (64)" in str(reply["error"])
    too_large = limited.metrics.failures.labels("m", "CPU", "too_large")
    wait_until(lambda: too_large._value.get() == 1)  # counted just after the reply
    assert_next_good_job_succeeds(client)


def test_outputs_beyond_the_limit_are_not_written(client: Client, limited: Worker) -> None:
    tensor(client, "big", [0.0] * 12)  # 48 bytes in, fine; the identity output too
    assert run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 big OUTPUTS 1 o"})["status"] == "ok"
    stub_model(client, "twice", op="add")
    tensor(client, "b16", [0.0] * 16)  # 64 bytes: at the limit
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE twice INPUTS 2 b16 b16 OUTPUTS 1 o2"})
    assert reply["status"] == "ok"
    client.hset("b17", mapping={"kind": "tensor", "dtype": "DOUBLE", "shape": "9"})  # 72 bytes
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 b17 OUTPUTS 1 o3"})
    assert "max_tensor_bytes" in str(reply["error"]) and not client.exists("o3")


def test_model_blobs_beyond_the_limit_are_not_fetched(client: Client, limited: Worker) -> None:
    stub_model(client, "fat", op="identity", padding="x" * 300)
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE fat INPUTS 1 a OUTPUTS 1 o"})
    assert "model 'fat' has" in str(reply["error"]) and "max_model_bytes (200)" in str(
        reply["error"]
    )
    assert_next_good_job_succeeds(client)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"chunks": "1000000000"}, "chunk count is not a whole number from 0 to 65,536"),
        ({"chunks": "2"}, "model blob is incomplete"),  # the size field is not trusted
        ({"chunk:0": b"\xff" * 18}, "STUB: model blob is not a JSON program"),
        ({"batchsize": "many"}, "internal error: ValueError"),
    ],
)
def test_corrupt_models_are_errors(
    client: Client, limited: Worker, fields: dict[str, object], message: str
) -> None:
    stub_model(client, "broken", op="identity")
    client.hset("broken", mapping=fields)  # type: ignore[arg-type]
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE broken INPUTS 1 a OUTPUTS 1 o"})
    assert reply["status"] == "error" and message in str(reply["error"]), reply
    assert_next_good_job_succeeds(client)


def test_values_text_far_longer_than_the_shape_is_refused(client: Client, limited: Worker) -> None:
    client.hset(
        "v", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "2", "values": "1 " * 5000}
    )
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 v OUTPUTS 1 o"})
    assert "10,000 bytes of data" in str(reply["error"]), "stored size checked before fetching"
    # Within the stored-size limit, a text far longer than the shape needs is not even split.
    reply = [b"ok", b"tensor", b"FLOAT", b"2", None, b"1 " * 5000]
    with pytest.raises(AIError, match="wrong number of values"):
        decode_tensor_reply("v", reply, 1 << 20)


def test_oversized_entries_are_refused(client: Client, limited: Worker) -> None:
    cmd = "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 o " + "x" * (2 << 20)
    reply = run_raw(client, {"cmd": cmd})
    assert "malformed job entry" in str(reply["error"]) and "1,048,576" in str(reply["error"])
    assert_next_good_job_succeeds(client)


def test_limit_helpers() -> None:
    assert declared_nbytes("FLOAT", (2, 3)) == 24
    assert declared_nbytes("STRING", (4,)) == 32
    check_tensor_size("t", "INT8", (10,), 10)
    with pytest.raises(LimitExceeded, match="max_tensor_bytes"):
        check_tensor_size("t", "INT8", (11,), 10)
    check_tensor_size("t", "DOUBLE", (10**9,), 0)  # 0: no limit
    with pytest.raises(AIError, match="malformed job entry"):
        check_entry({b"cmd": b"x" * (1 << 21)})


class FakeModel(LoadedModel):
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.closed = False

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(inputs)

    def close(self) -> None:
        self.closed = True


def get(cache: ModelCache, key: str, digest: str, load: Any) -> LoadedModel:
    with cache.use(key, digest, load) as model:
        return model


def test_the_model_cache_is_bounded_by_count_and_bytes() -> None:
    cache = ModelCache(max_models=3, max_bytes=250)
    models = {k: FakeModel(100) for k in "abcd"}
    for key in "ab":
        get(cache, key, "v1", lambda k=key: ("v1", models[k]))
    get(cache, "a", "v1", lambda: pytest.fail("cached"))  # a is now the most recently used
    get(cache, "c", "v1", lambda: ("v1", models["c"]))  # 300 bytes > 250: b (least recent) goes
    assert sorted(cache.keys()) == ["a", "c"] and models["b"].closed
    assert cache.nbytes == 200
    huge = FakeModel(1000)
    get(cache, "d", "v1", lambda: ("v1", huge))  # larger than the bound alone: kept, all go
    assert cache.keys() == ["d"] and models["a"].closed and models["c"].closed
    counted = ModelCache(max_models=2)
    for key in "abc":
        get(counted, key, "v1", lambda: ("v1", FakeModel(0)))
    assert counted.keys() == ["b", "c"]


def test_nothing_is_ever_unpickled() -> None:
    """Job entries are msgpack or text; models are framework formats loaded from bytes."""
    offenders = []
    for path in sorted((ROOT / "aiworker").rglob("*.py")):
        text = Path(path).read_text()
        for pattern in (r"\bimport pickle\b", r"\bpickle\.loads?\(", r"\bdill\b", r"torch\.load\("):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
        for call in re.findall(r"unpackb\(([^)]*)\)", text):
            if "ext_hook" in call or "object_hook" in call:
                offenders.append(f"{path.relative_to(ROOT)}: msgpack hooks")
    assert offenders == []
