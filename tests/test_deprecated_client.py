"""redisai-py's deprecated client methods warn and run their replacements."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from aiworker import Client, Worker
from aiworker.jobs import ScriptExecute
from tests.conftest import stub_blob


def test_modelset_and_modelrun(client: Client, worker: Worker) -> None:
    with pytest.deprecated_call(match="modelset is deprecated"):
        assert client.modelset("m", "STUB", "CPU", stub_blob("add"), batch=2, tag="t") == "OK"
    assert client.modelget("m", meta_only=True)["batchsize"] == 2
    client.tensorset("a", np.array([1, 2], np.float32))
    with pytest.deprecated_call(match="modelrun is deprecated"):
        assert client.modelrun("m", ["a", "a"], "b") == "OK"
    np.testing.assert_array_equal(client.tensorget("b"), [2, 4])


def test_scriptrun_queues_a_scriptrun_request(client: Client, monkeypatch: Any) -> None:
    sent: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        client, "submit", lambda queue, request: sent.append((queue, request)) or "OK"
    )
    client.hset("s", mapping={"kind": "script", "device": "cpu:1"})
    with pytest.deprecated_call(match="scriptrun is deprecated"):
        assert client.scriptrun("s", "fn", ["a", "b"], "c") == "OK"
    assert sent == [("CPU:1", ScriptExecute("s", "fn", inputs=("a", "b"), outputs=("c",)))]


def test_scriptset_calls_scriptstore(client: Client, monkeypatch: Any) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(
        client,
        "scriptstore",
        lambda *args, **kwargs: calls.append((args, kwargs)) or "OK",
        raising=False,
    )
    with pytest.deprecated_call(match="scriptset is deprecated"):
        assert client.scriptset("s", "CPU", "def f(a): return a", tag="t") == "OK"
    assert calls == [(("s", "CPU", "def f(a): return a"), {"entry_points": None, "tag": "t"})]
