"""A model or script stored again while workers serve it: every worker runs the stored version
from its next job on, and AI.INFO starts over, as RedisAI's stores created a new model."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
from conftest import at_once, torch_blob

from aiworker import Client, Worker
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store

SCRIPT = """
def f(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + 1

def g(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * 10
"""


def both_at_once(client: Client, key: str) -> list[Any]:
    """Two MODELEXECUTEs sent together (batch partners), their results."""
    return at_once(
        [partial(client.modelexecute, key, [f"a{n}", f"b{n}"], [f"c{n}"]) for n in range(2)]
    )


def test_the_same_blob_stored_without_batching_runs_at_once(client: Client, worker: Worker) -> None:
    """A worker that served the model with MINBATCHSIZE 2 (no timeout) must not hold a lone
    request for a partner once the model is stored again without batching (it did: the batch
    settings came from metadata it had cached, and the completion's version check never came)."""
    blob = torch_blob()
    for n in range(2):
        client.tensorset(f"a{n}", np.ones((1, 2), np.float32))
        client.tensorset(f"b{n}", np.ones((1, 2), np.float32))
    client.modelstore("m", "TORCH", "CPU", blob, batch=4, minbatch=2)
    assert both_at_once(client, "m") == ["OK", "OK"]
    client.modelstore("m", "TORCH", "CPU", blob)
    started = time.monotonic()
    assert client.modelexecute("m", ["a0", "b0"], ["c0"], timeout=10_000) == "OK"
    assert time.monotonic() - started < 5, "the lone request waited for a batch partner"


def test_a_different_blob_stored_over_a_batching_model_runs_at_once(
    client: Client, worker: Worker
) -> None:
    for n in range(2):
        client.tensorset(f"a{n}", np.ones((1, 2), np.float32))
        client.tensorset(f"b{n}", np.full((1, 2), 3, np.float32))
    client.modelstore("m", "TORCH", "CPU", torch_blob("add"), batch=4, minbatch=2)
    assert both_at_once(client, "m") == ["OK", "OK"]
    client.modelstore("m", "TORCH", "CPU", torch_blob("mul"))
    assert client.modelexecute("m", ["a0", "b0"], ["c0"]) == "OK"
    assert client.tensorget("c0").tolist() == [[3, 3]]


def test_a_store_resets_the_models_statistics(client: Client, worker: Worker) -> None:
    blob = torch_blob()
    client.tensorset("a0", np.ones((1, 2), np.float32))
    client.tensorset("b0", np.ones((1, 2), np.float32))
    client.modelstore("m", "TORCH", "CPU", blob)
    client.modelexecute("m", ["a0", "b0"], ["c0"])
    assert client.infoget("m")["calls"] == 1
    client.modelstore("m", "TORCH", "CPU", blob)
    info = client.infoget("m")
    assert (info["duration"], info["samples"], info["calls"], info["errors"]) == (0, 0, 0, 0)


def test_new_entry_points_of_the_same_source_are_callable(client: Client, worker: Worker) -> None:
    """The same source stored again with one more entry point: a worker that cached the first
    version's metadata must see the new list (the version covers it, not the source alone)."""
    client.tensorset("x", np.ones(2, np.float32))
    client.scriptstore("s", "CPU", SCRIPT, entry_points=["f"])
    client.scriptexecute("s", "f", inputs=["x"], outputs=["y"])
    client.scriptstore("s", "CPU", SCRIPT, entry_points=["f", "g"])
    client.scriptexecute("s", "g", inputs=["x"], outputs=["y"])
    assert client.tensorget("y").tolist() == [10, 10]


def test_versions_cover_the_definition_not_the_blob_alone() -> None:
    meta = model_store.ModelMeta("TORCH", "CPU")
    same = model_store.digest_of(b"blob", meta)
    assert model_store.digest_of(b"blob", model_store.ModelMeta("TORCH", "CPU")) == same
    for other in (
        model_store.ModelMeta("TORCH", "CPU", batchsize=4),
        model_store.ModelMeta("TORCH", "CPU", minbatchsize=2),
        model_store.ModelMeta("TORCH", "CPU", minbatchtimeout=5),
        model_store.ModelMeta("TORCH", "CPU", inputs=("a",)),
        model_store.ModelMeta("TORCH", "CPU", outputs=("b",)),
        model_store.ModelMeta("TORCH", "GPU"),
        model_store.ModelMeta("TORCH", "CPU", tag="v2"),
    ):
        assert model_store.digest_of(b"blob", other) != same, other
    assert model_store.digest_of(b"blob2", meta) != same
    script = script_store.digest_of("src", "CPU", ["f"], "")
    assert script_store.digest_of("src", "CPU", ["f", "g"], "") != script
    assert script_store.digest_of("src", "CPU:1", ["f"], "") != script
