"""The per-process model cache: versions by digest, LRU bound, cached load failures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from aiworker import Client, JobFailed, Worker
from aiworker.backends.base import LoadedModel
from aiworker.execution.model_cache import LoadFailed, ModelCache
from aiworker.parser.entry import decode_entry
from aiworker.protocol.entries import encode_entry
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import ModelExecute
from aiworker.protocol.tensor import parse_shape


def get(cache: ModelCache, key: str, digest: str, load: Any) -> LoadedModel:
    """A model from the cache, used and released at once."""
    with cache.use(key, digest, load) as model:
        return model


class Dummy(LoadedModel):
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(inputs)

    def close(self) -> None:
        self.closed = True


def test_a_newer_version_loaded_mid_job_is_cached_under_its_own_digest() -> None:
    cache = ModelCache()
    loads: list[str] = []

    def load_v2() -> tuple[str, LoadedModel]:
        loads.append("v2")
        return "digest-2", Dummy("v2")

    # The job read digest-1, but the model was replaced before the worker fetched the blob.
    model = get(cache, "m", "digest-1", load_v2)
    assert model.name == "v2"  # type: ignore[attr-defined]
    again = get(cache, "m", "digest-2", lambda: pytest.fail("digest-2 is cached"))
    assert again is model
    assert loads == ["v2"]


def test_replacing_a_version_closes_the_old_one_and_lru_evicts() -> None:
    cache = ModelCache(max_models=2)
    first = get(cache, "a", "1", lambda: ("1", Dummy("a1")))
    get(cache, "a", "2", lambda: ("2", Dummy("a2")))
    assert first.closed  # type: ignore[attr-defined]
    get(cache, "b", "1", lambda: ("1", Dummy("b")))
    get(cache, "c", "1", lambda: ("1", Dummy("c")))
    assert cache.keys() == ["b", "c"]


def test_load_failures_are_cached_per_digest() -> None:
    cache = ModelCache()
    calls = []

    def broken() -> tuple[str, LoadedModel]:
        calls.append(1)
        raise LoadFailed("bad", AIError("corrupt blob"))

    for _ in range(3):
        with pytest.raises(AIError, match="corrupt blob"):
            get(cache, "m", "bad", broken)
    assert len(calls) == 1
    assert get(cache, "m", "good", lambda: ("good", Dummy("ok"))).name == "ok"  # type: ignore[attr-defined]


def test_a_failure_to_read_a_version_is_not_cached() -> None:
    """Redis busy (BUSY), refusing (NOPERM, READONLY) or a version replaced as it was read:
    that job's error; the next job reads again (it was cached: the model failed on that worker
    until it restarted)."""
    cache = ModelCache()
    outcomes: list[Any] = [AIError("BUSY Redis is busy running a script"), ("v1", Dummy("v1"))]

    def load() -> tuple[str, LoadedModel]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    with pytest.raises(AIError, match="BUSY"):
        get(cache, "m", "v1", load)
    assert get(cache, "m", "v1", load).name == "v1"  # type: ignore[attr-defined]


def test_a_load_failure_is_cached_under_the_version_that_failed() -> None:
    """A job read v1, v2 was stored before the load and failed: the failure is v2's, and a
    rollback to v1 loads v1 (it was cached under v1's digest: v1 failed for good)."""
    cache = ModelCache()

    def load_v2() -> tuple[str, LoadedModel]:
        raise LoadFailed("v2", AIError("too large for this worker"))

    with pytest.raises(AIError, match="too large"):
        get(cache, "m", "v1", load_v2)
    with pytest.raises(AIError, match="too large"):  # v2's failure, cached
        get(cache, "m", "v2", lambda: pytest.fail("v2's failure is cached"))
    assert get(cache, "m", "v1", lambda: ("v1", Dummy("v1"))).name == "v1"  # type: ignore[attr-defined]


def test_forwarded_entries_keep_their_first_enqueue_time() -> None:
    fields = encode_entry(ModelExecute("m", ("a",), ("b",), timeout_ms=100), "r")
    job = decode_entry("2000-0", {**fields, "enqueued": "1000"})
    assert job.enqueued_ms == 1000
    assert job.deadline_ms == 1101  # more than its 100 ms for certain: the id's ms began before
    with pytest.raises(AIError, match="enqueued"):
        decode_entry("2000-0", {**fields, "enqueued": "soon"})
    # anyone may write the field: a time after the entry's, or older than any forward, is not
    # believed (-1e20 reached the queue-time metrics and hooks)
    now = 1_800_000_000_000
    for forged in ("-100000000000000000000", str(now + 61_000), str(now - 25 * 3600 * 1000)):
        assert decode_entry(f"{now}-0", {**fields, "enqueued": forged}).enqueued_ms == now
    skewed = decode_entry(f"{now}-0", {**fields, "enqueued": str(now + 500)})  # node clocks
    assert skewed.enqueued_ms == now + 500


def test_a_model_in_use_is_closed_only_when_its_last_job_ends() -> None:
    """Eviction, a newer version and clear() never close a model under a running job."""
    cache = ModelCache(max_models=1)
    v1 = Dummy("v1")
    with cache.use("m", "1", lambda: ("1", v1)) as running:
        get(cache, "other", "1", lambda: ("1", Dummy("other")))  # evicts m while it runs
        assert running is v1 and not v1.closed
        get(cache, "m", "2", lambda: ("2", Dummy("v2")))  # a newer version replaces it
        assert not v1.closed
        cache.clear()  # the worker stops
        assert not v1.closed
    assert v1.closed, "closed once the job that used it ended"
    with cache.use("m", "3", lambda: ("3", Dummy("v3"))) as idle:
        pass
    cache.clear()
    assert idle.closed  # type: ignore[attr-defined]


def test_the_per_key_load_locks_do_not_pile_up() -> None:
    cache = ModelCache(max_models=2)
    for n in range(100):
        get(cache, f"k{n}", "1", lambda: ("1", Dummy("x")))
    assert cache._loading == {}


@pytest.mark.parametrize("dims", [[True], [1.5], [2, 0], [-1]])
def test_shapes_must_be_positive_integers(dims: list[object]) -> None:
    with pytest.raises(AIError, match="invalid or negative value found in tensor shape"):
        parse_shape(dims)  # type: ignore[arg-type]


def test_a_model_that_could_not_be_read_runs_once_it_can(client: Client, worker: Worker) -> None:
    """A worker that could not read a model (here a chunk missing; Redis busy or refusing
    reads the same way) tries again for the next job: a failure to read is not the version's
    (it was cached under the version's digest: the model failed on that worker for good)."""
    from conftest import stub_blob

    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.ones(2, np.float32))
    chunk = client.hget("m", "chunk:0")
    client.hdel("m", "chunk:0")
    with pytest.raises(JobFailed, match="incomplete"):
        client.modelexecute("m", ["a", "a"], ["b"])
    client.hset("m", "chunk:0", chunk)  # the same version again
    assert client.modelexecute("m", ["a", "a"], ["b"]) == "OK"
    assert client.tensorget("b").tolist() == [2, 2]
