"""A client test suite's habit: FLUSHALL before every test (redisai-py's own suite does), with the
same workers serving CPU and CPU:1 throughout. A flush takes the queues, consumer groups and
heartbeats with everything else: the workers must recreate what they need at once and beat
again, and a client must not say "no live worker" before a worker had the chance to beat once
since the flush. Every test here must pass run after run, with no ``NoLiveWorker`` and no error
in the workers' log.

The worker's side: a consumer that finds its stream gone (NOGROUP, UNBLOCKED) recreates its group
and the worker publishes its heartbeat at once (``Heartbeat.beat_now``); the client's: a Redis
without any worker registry gets a heartbeat's time before "no live worker" is said
(``client.wait_plan.REGISTRY_GRACE_S``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import stub_blob, torch_blob

from aiworker import Client, Settings, Worker
from aiworker.embedded import RedisServer

torch = pytest.importorskip("torch")

SCRIPT = "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0] + tensors[1]\n"


class Errors(logging.Handler):
    """Collects what the workers log at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def workers(redis_server: RedisServer) -> Iterator[Errors]:
    """Workers for CPU and CPU:1, started once for the whole module."""
    errors = Errors()
    logging.getLogger("aiworker").addHandler(errors)
    settings = Settings(redis_url=redis_server.url, devices=("CPU", "CPU:1"), block_ms=100)
    w = Worker(settings.replace(threads_per_queue=2)).start()
    yield errors
    w.stop(timeout=10)
    logging.getLogger("aiworker").removeHandler(errors)


@pytest.fixture
def con(redis_server: RedisServer, workers: Errors) -> Iterator[Client]:
    c = Client.from_url(redis_server.url, reply_timeout=20)
    c.flushall()  # as redisai-py's setUp does, the workers running
    workers.records.clear()
    yield c
    c.close()
    assert [r.getMessage() for r in workers.records] == [], "the workers logged errors"


def test_tensors(con: Client) -> None:
    con.tensorset("x", (2, 3, 4, 5), dtype="float")
    assert con.tensorget("x", as_numpy=False)["values"] == [2, 3, 4, 5]


@pytest.mark.parametrize("device", ["CPU", "CPU:1"])
def test_modelstore_and_modelexecute(con: Client, device: str) -> None:
    con.modelstore("m", "TORCH", device, torch_blob("add"), tag="v1")
    con.tensorset("a", np.array([2, 3], np.float32))
    con.tensorset("b", np.array([4, 5], np.float32))
    assert con.modelexecute("m", ["a", "b"], ["c"]) == "OK"
    assert con.tensorget("c").tolist() == [6, 8]


def test_run_right_after_the_flush(con: Client) -> None:
    con.modelstore("m", "STUB", "CPU:1", stub_blob("mul"))
    x = np.array([2.0, 3.0], np.float32)
    assert con.run("m", {"a": x, "b": x}, ["y"])["y"].tolist() == [4, 9]


def test_modelscan_lists_the_last_stored_first(con: Client) -> None:
    con.modelstore("m", "STUB", "CPU", stub_blob("add"), tag="v1.2")
    con.modelstore("pt_model", "TORCH", "CPU", torch_blob("add"))
    with pytest.warns(UserWarning):
        assert con.modelscan() == [["pt_model", ""], ["m", "v1.2"]]  # as redisai-py's suite


def test_scripts(con: Client) -> None:
    con.scriptstore("ket", "CPU:1", SCRIPT, ["bar"])
    con.tensorset("a", np.array([2, 3], np.float32))
    con.tensorset("b", np.array([2, 3], np.float32))
    assert con.scriptexecute("ket", "bar", inputs=["a", "b"], outputs=["c"]) == "OK"
    assert con.tensorget("c", as_numpy=False)["values"] == [4, 6]


def test_dag(con: Client) -> None:
    con.modelstore("m", "TORCH", "CPU", torch_blob("mul"))
    con.tensorset("a", np.array([2, 3], np.float32))
    dag = con.dag(load="a", persist="out")
    dag.tensorset("b", np.array([4, 5], np.float32)).modelexecute("m", ["a", "b"], ["out"])
    result = dag.tensorget("out").execute()
    assert result[:2] == ["OK", "OK"] and result[2].tolist() == [8, 15]
    assert con.tensorget("out").tolist() == [8, 15]


def test_info_and_config(con: Client) -> None:
    con.modelstore("m", "STUB", "CPU", stub_blob("add"))
    con.tensorset("a", np.array([1], np.float32))
    con.modelexecute("m", ["a", "a"], ["c"])
    con.modelexecute("m", ["a", "a"], ["c"])
    assert con.infoget("m")["calls"] == 2
    con.inforeset("m")
    assert con.infoget("m")["calls"] == 0
    assert con.config("non-existing") is None
    assert con.config("MODEL_CHUNK_SIZE", 4096) == "OK"
    assert con.config("MODEL_CHUNK_SIZE") == 4096
