"""Worker hooks (``aiworker.worker.hooks``) with real workers: what they see of each job, that a
broken hook changes nothing, batches, results another delivery completed, and ``--hook``."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, stub_blob, wait_until, worker_env

from aiworker import AIError, Client, Settings, Worker
from aiworker.execution.outcome import Outcome
from aiworker.parser.entry import decode_entry
from aiworker.protocol.errors import ConfigError
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.protocol.requests import ModelExecute
from aiworker.worker.complete import Finished
from aiworker.worker.consume import ensure_group
from aiworker.worker.hooks import JobEvent, load_hook


class Recorder:
    """Every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, JobEvent]] = []
        self._lock = threading.Lock()

    def _add(self, name: str, event: JobEvent) -> None:
        with self._lock:
            self.events.append((name, event))

    def job_started(self, event: JobEvent) -> None:
        self._add("started", event)

    def job_finished(self, event: JobEvent) -> None:
        self._add("finished", event)

    def job_failed(self, event: JobEvent) -> None:
        self._add("failed", event)

    def job_skipped(self, event: JobEvent) -> None:
        self._add("skipped", event)

    def of(self, name: str) -> list[JobEvent]:
        with self._lock:
            return [event for found, event in self.events if found == name]


class Broken:
    """A hook with a bug."""

    def job_started(self, event: JobEvent) -> None:
        raise RuntimeError("hook bug")

    def job_finished(self, event: JobEvent) -> None:
        raise RuntimeError("hook bug")


def test_hooks_see_jobs_start_finish_and_fail(client: Client, settings: Settings) -> None:
    recorder = Recorder()
    w = Worker(settings, hooks=[Broken(), recorder]).start()
    try:
        client.modelstore("m", "STUB", "CPU", stub_blob("add", sleep_ms=30))
        client.tensorset("a", np.array([1, 2], dtype=np.float32))
        assert client.modelexecute("m", ["a", "a"], ["o"]) == "OK"  # the broken hook is ignored
        np.testing.assert_array_equal(client.tensorget("o"), [2, 4])
        with pytest.raises(AIError):
            client.modelexecute("m", ["a", "nosuch"], ["o2"])
        wait_until(lambda: recorder.of("failed"), timeout=5)
    finally:
        w.stop(timeout=10)
    [finished] = recorder.of("finished")
    assert (finished.model, finished.device, finished.op) == ("m", "CPU", "MODELEXECUTE")
    assert finished.status == "ok" and finished.queue == w.keys.queue("CPU")
    assert finished.compute_s >= 0.02 and finished.batch == 1 and finished.stats == 1
    assert finished.queue_s is not None and finished.total_s is not None
    assert finished.total_s >= finished.compute_s
    assert finished.reply_key and not finished.reply_dropped
    started = {event.job_id: event for event in recorder.of("started")}
    assert started[finished.job_id].started == finished.started
    assert started[finished.job_id].status == ""
    [failed] = recorder.of("failed")
    assert failed.model == "m" and failed.status == "error" and failed.reason == "error"
    assert "nosuch" in failed.error or "empty" in failed.error
    assert failed.job_id not in started, "it failed before it could start"
    assert w.completer.jobs_done == 2 and w.completer.jobs_failed == 1
    metrics = w.metrics.render().decode()  # the metrics are a hook of their own, still fed
    assert 'aiworker_request_success_total{device="CPU",model="m"} 1.0' in metrics
    assert 'aiworker_request_failure_total{device="CPU",model="m",reason="error"} 1.0' in metrics


def test_a_batch_starts_each_of_its_jobs(client: Client, settings: Settings) -> None:
    recorder = Recorder()
    w = Worker(settings, hooks=[recorder]).start()
    try:
        client.modelstore(
            "bm", "STUB", "CPU", stub_blob("add"), batch=4, minbatch=2, minbatchtimeout=5000
        )
        client.tensorset("a", np.array([[1.0]], dtype=np.float32))
        threads = [
            threading.Thread(target=client.modelexecute, args=("bm", ["a", "a"], [f"o{n}"]))
            for n in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        wait_until(lambda: len(recorder.of("finished")) == 2, timeout=5)
    finally:
        w.stop(timeout=10)
    assert len(recorder.of("started")) == 2
    assert [event.batch for event in recorder.of("finished")] == [2, 2]


def test_a_result_another_delivery_completed_is_skipped(client: Client, settings: Settings) -> None:
    recorder = Recorder()
    w = Worker(settings, hooks=[recorder])  # not started: its completer only
    queue = w.keys.queue("CPU")
    ensure_group(client, queue)
    entry_id = client.xadd(queue, {"cmd": "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 o"}).decode()
    [(_stream, [(_id, fields)])] = client.xreadgroup(CONSUMER_GROUP, "c", {queue: ">"}, count=1)
    job = decode_entry(entry_id, fields)
    assert isinstance(job.request, ModelExecute)
    item = Finished(entry_id, Outcome("ok"), job, fields=fields)
    [first] = w.completer.complete(w.wires.get(), queue, [item])
    [second] = w.completer.complete(w.wires.get(), queue, [item])
    assert first.applied and second.duplicate
    assert [name for name, _event in recorder.events] == ["finished", "skipped"]
    assert recorder.of("skipped")[0].job_id == entry_id
    w.wires.close()


def test_hook_option_of_the_worker_command(client: Client, redis_server: Any) -> None:
    """``aiworker worker --hook module:object``: the class is instantiated and called."""
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.array([1, 2], dtype=np.float32))
    tests = str(Path(__file__).resolve().parent)
    env = worker_env(
        PYTHONPATH=f"{ROOT}:{tests}", HOOKED_REDIS_URL=redis_server.url, AIWORKER_BLOCK_MS="100"
    )
    args = ["worker", "--redis-url", redis_server.url, "--hook", "hooked:RedisLog"]
    proc = subprocess.Popen([sys.executable, "-m", "aiworker", *args], env=env)
    try:
        wait_until(lambda: client.zcard(client.keyspace.workers) > 0, timeout=30)
        assert client.modelexecute("m", ["a", "a"], ["o"]) == "OK"
        wait_until(lambda: client.llen("hooked") >= 2, timeout=10)
    finally:
        proc.terminate()
        proc.wait(30)
    started, finished = (line.decode().split() for line in client.lrange("hooked", 0, -1))
    assert started[:2] == ["started", "m"] and finished[0] == "finished"
    assert finished[1:] == ["m", started[2], "ok"]


def test_bad_hooks_are_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="module:object"):
        load_hook("hooked")
    with pytest.raises(ConfigError, match="No module named"):
        load_hook("no_such_module_here:Hook")
    with pytest.raises(ConfigError, match="has none of"):
        load_hook("json:JSONDecoder")
    done = subprocess.run(
        [sys.executable, "-m", "aiworker", "worker", "--redis-url", "redis://127.0.0.1:1/0",
         "--hook", "json:nothing"],
        env=worker_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "--hook" in done.stderr
