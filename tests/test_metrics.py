"""Observability: Prometheus endpoint, exact stats, heartbeats, status/check, structured logs."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

import pytest
import redis
from click.testing import CliRunner
from conftest import heartbeat_of, wait_until
from faults import KEYS, QUEUE, enqueue, job_entry, stub_model, tensor
from prometheus_client.parser import text_string_to_metric_families

from aiworker import Client, Settings, Worker
from aiworker.cli import main
from aiworker.client import waiting
from aiworker.embedded import free_port
from aiworker.logs import JsonFormatter
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.storage import health, plans
from aiworker.worker.health import Heartbeat
from aiworker.worker.metrics import WorkerMetrics
from aiworker.worker.process import ensure_group


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_the_metrics_endpoint_counts_requests_by_outcome(
    client: Client, settings: Settings
) -> None:
    port = free_port()
    stub_model(client, "m", sleep_ms=5)
    stub_model(client, "bad", op="fail", message="boom")
    tensor(client, "a", [1, 2])
    tensor(client, "b", [3, 4])
    ensure_group(client, QUEUE)
    # Enqueued (by its id) in 1970 with a 1 ms TIMEOUT: answered TIMEDOUT, never run.
    client.xadd(
        QUEUE,
        {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c TIMEOUT 1", "reply": "r2"},
        id="1-0",
    )
    w = Worker(settings.replace(metrics_port=port, metrics_addr="127.0.0.1")).start()
    try:
        for i in range(5):
            client.modelexecute("m", ["a", "b"], [f"c{i}"])
        for _ in range(2):
            with pytest.raises(Exception, match="boom"):
                client.modelexecute("bad", ["a", "b"], ["c"])
        client.xadd(QUEUE, {"cmd": "AI.MODELEXECUTE", "reply": "r1"})  # malformed
        wait_until(lambda: client.llen("r1") and client.llen("r2"), timeout=10)
        metrics = scrape(port)
    finally:
        w.stop(timeout=5)

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("aiworker_request_success_total", model="m", device="CPU") == 5
    assert value("aiworker_request_failure_total", model="bad", device="CPU", reason="error") == 2
    assert value("aiworker_request_failure_total", model="", device="CPU", reason="malformed") == 1
    compute = value("aiworker_compute_duration_seconds_count", model="m", device="CPU")
    assert compute == 5
    assert value("aiworker_compute_duration_seconds_sum", model="m", device="CPU") >= 5 * 0.005
    assert value("aiworker_queue_duration_seconds_count", model="m", device="CPU") == 5
    assert value("aiworker_batch_size_count", model="m", device="CPU") == 5
    assert value("aiworker_batch_size_sum", model="m", device="CPU") == 5
    assert value("aiworker_inflight_requests", device="CPU") == 0
    # answered before any request found model m: its name was never shown to be a model's
    timedout = dict(model="<other>", device="CPU", reason="timedout")
    assert value("aiworker_request_failure_total", **timedout) == 1
    assert json.loads(client.lpop("r2") or b"{}")["status"] == "timedout"


def test_a_dag_counts_the_time_its_ops_spent_in_the_backend(
    client: Client, settings: Settings
) -> None:
    """A DAG counts under ``model=""``, and its compute duration is its model and script ops'
    time in the backend: a DAG that ran a model for 30 ms observed 0.0, as did ``Client.run``."""
    port = free_port()
    stub_model(client, "m", sleep_ms=30)
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(metrics_port=port, metrics_addr="127.0.0.1")).start()
    try:
        command = "AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 c"
        client.xadd(QUEUE, {"cmd": command, "reply": "r"})
        a = client.tensorget("a")
        client.run("m", {"x": a, "y": a}, ["c"])
        count = ("aiworker_compute_duration_seconds_count", (("device", "CPU"), ("model", "")))
        wait_until(lambda: scrape(port).get(count) == 2)
        metrics = scrape(port)
    finally:
        w.stop(timeout=5)
    total = ("aiworker_compute_duration_seconds_sum", (("device", "CPU"), ("model", "")))
    assert metrics[total] >= 2 * 0.030
    reply = json.loads(client.lpop("r") or b"{}")
    assert reply["status"] == "ok" and reply["compute_ms"] >= 30


def test_model_names_requesters_choose_do_not_grow_the_metrics(
    client: Client, settings: Settings
) -> None:
    """Every ``model`` label is kept for good: 3,000 failed jobs naming unique models made 6,000
    more lines, 200 naming 900 KB ones a 361 MB scrape. Names of no model, and names over 200
    characters, count under ``model="<other>"``."""
    port = free_port()
    long_name = "m" * 300
    stub_model(client, long_name)
    tensor(client, "a", [1, 2])
    w = Worker(settings.replace(metrics_port=port, metrics_addr="127.0.0.1")).start()
    try:
        for n in range(40):  # as redis-cli XADDs them (a client would look the model up first)
            name = f"nothing-{n}-" + "x" * 1000
            command = f"AI.MODELEXECUTE {name} INPUTS 2 a a OUTPUTS 1 c"
            client.xadd(QUEUE, {"cmd": command, "reply": "r"})
        wait_until(lambda: client.llen("r") == 40, timeout=20)
        client.modelexecute(long_name, ["a", "a"], ["c"])
        failed = ("aiworker_request_failure_total", (("device", "CPU"), ("model", "<other>"),
                                                     ("reason", "error")))  # fmt: skip
        succeeded = ("aiworker_request_success_total", (("device", "CPU"), ("model", "<other>")))
        # the hooks count a job once its reply is out: the scrape may come first
        wait_until(lambda: scrape(port).get(succeeded) == 1 and scrape(port).get(failed) == 40)
        metrics = scrape(port)
    finally:
        w.stop(timeout=5)
    models = {dict(labels).get("model") for _name, labels in metrics}
    assert models <= {None, "<other>"}, "no label for a name of no model, nor for a long one"


def test_statistics_stay_exact_under_concurrency(client: Client, settings: Settings) -> None:
    stub_model(client, "m")
    stub_model(client, "bad", op="fail")
    tensor(client, "a", [1, 2, 3])
    tensor(client, "b", [1, 2, 3])
    w = Worker(settings.replace(threads_per_queue=4)).start()
    errors = []

    def submit(n: int) -> None:
        c = Client.from_url(settings.redis_url, reply_timeout=30)
        for i in range(40):
            try:
                c.modelexecute("bad" if i % 4 == 0 else "m", ["a", "b"], [f"o{n}.{i}"])
            except Exception as exc:
                errors.append(exc)
        c.close()

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        w.stop(timeout=5)
    assert len(errors) == 40
    assert client.infoget("m")["calls"] == 120 and client.infoget("m")["errors"] == 0
    assert client.infoget("m")["samples"] == 120 * 3
    assert client.infoget("bad")["calls"] == 40 and client.infoget("bad")["errors"] == 40
    assert w.jobs_done == 160


def test_heartbeat_status_and_check(client: Client, settings: Settings) -> None:
    runner = CliRunner()
    url = ["--redis-url", settings.redis_url]
    result = runner.invoke(main, ["check", *url])
    assert result.exit_code == 1 and "no live worker" in result.output

    stub_model(client, "m")
    tensor(client, "a", [1])
    tensor(client, "b", [2])
    ensure_group(client, QUEUE)
    w = Worker(settings).start()
    try:
        client.modelexecute("m", ["a", "b"], ["c"])
        # A GPU queue nobody serves: one entry taken by a consumer elsewhere, one waiting.
        gpu = KEYS.queue("GPU")
        ensure_group(client, gpu)
        client.xadd(gpu, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 d"})
        client.xreadgroup(CONSUMER_GROUP, "elsewhere:1:GPU:0", {gpu: ">"}, count=1)
        client.xadd(gpu, {"cmd": "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 e"})
        client.xadd(KEYS.dead_letters("GPU"), {"dead_letter_error": "x"})

        def beat() -> dict:
            raw = client.get(KEYS.worker(w.name))
            return json.loads(raw) if raw else {}

        wait_until(lambda: beat().get("jobs_done", 0) >= 1, timeout=10)
        status = beat()
        assert status["devices"] == ["CPU"] and status["threads_per_queue"] == 2
        assert status["models"] == ["m"] and status["healthy"] is True

        result = runner.invoke(main, ["check", *url, "--this-host"])
        assert result.exit_code == 0, result.output
        assert "healthy" in result.output
        assert runner.invoke(main, ["check", *url, "--device", "GPU"]).exit_code == 1
        assert runner.invoke(main, ["check", *url, "--worker", "nobody:1"]).exit_code == 1

        result = runner.invoke(main, ["status", *url])
        assert result.exit_code == 0, result.output
        assert f"worker {w.name}: healthy devices=CPU threads=2" in result.output
        assert "queue aiworker:queue:CPU: length=0 pending=0 lag=0" in result.output
        assert (
            "queue aiworker:queue:GPU: length=2 pending=1 lag=1 consumers=1 dead_letters=1"
            in result.output
        )
        data = json.loads(runner.invoke(main, ["status", *url, "--json"]).output)
        assert [q["device"] for q in data["queues"]] == ["CPU", "GPU"]

        # A worker whose thread died reports itself unhealthy; check exits 1.
        w._threads.append(threading.Thread(target=lambda: None, name="aiworker-CPU-9"))
        w._threads[-1].start()
        w._threads[-1].join()
        wait_until(lambda: beat().get("healthy") is False, timeout=10)
        result = runner.invoke(main, ["check", *url])
        assert result.exit_code == 1 and "aiworker-CPU-9 died" in result.output
    finally:
        w.stop(timeout=5)
    assert runner.invoke(main, ["check", "--redis-url", "redis://127.0.0.1:1/0"]).exit_code == 1


def test_heartbeats_reach_readers_and_workers_of_the_earlier_status_key(
    client: Client, settings: Settings
) -> None:
    """A worker's status now shares the registry's hash slot; a rolling upgrade mixes versions,
    so a worker also writes the status key of before (``legacy_worker``), for readers of before,
    and readers take a name's status from there when it has no other (a worker of before)."""
    earlier = "earlier:1"  # a worker of before: only the old key
    client.set(KEYS.legacy_worker(earlier), json.dumps(heartbeat_of(KEYS, earlier)), ex=30)
    client.zadd(KEYS.workers, {earlier: time.time()})
    assert [s["name"] for s in health.live_workers(client, KEYS)] == [earlier]

    w = Worker(settings).start()
    try:
        wait_until(lambda: client.exists(KEYS.worker(w.name), KEYS.legacy_worker(w.name)) == 2)
        old, new = client.mget(KEYS.legacy_worker(w.name), KEYS.worker(w.name))
        assert old is not None and new is not None
        assert health.heartbeat(old, KEYS) is not None  # what a reader of before parses
        assert sorted(s["name"] for s in health.live_workers(client, KEYS)) == sorted(
            [earlier, w.name]
        )
        statuses, registered = plans.run(client, health.liveness_plan(KEYS, health.LIVE_FOR_S))
        assert registered and waiting.serves(statuses, "CPU")
    finally:
        w.stop(timeout=5)
    assert client.exists(KEYS.worker(w.name), KEYS.legacy_worker(w.name)) == 0


def test_a_failing_periodic_check_does_not_stop_the_heartbeat(client: Client) -> None:
    """The checks run at heartbeat pace read Redis too (every worker's status): their failure
    (a Redis Cluster master lost for good) must not keep the worker from beating, or every
    client takes it for dead."""

    def failing() -> None:
        raise redis.ConnectionError("a master lost")

    beat = Heartbeat(client, KEYS, "beating:1", lambda: heartbeat_of(KEYS, "beating:1"),
                     WorkerMetrics(), on_beat=failing)  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=beat.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: client.exists(KEYS.worker("beating:1")) == 1, timeout=5)
        assert client.zscore(KEYS.workers, "beating:1") is not None
    finally:
        stop.set()
        thread.join(5)


def test_failed_jobs_are_logged_with_their_job_id(
    client: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    stub_model(client, "bad", op="fail", message="boom")
    tensor(client, "a", [1])
    w = Worker(settings).start()
    try:
        with caplog.at_level(logging.INFO, logger="aiworker"):
            [entry_id] = enqueue(client, [job_entry("bad", ["a", "a"], ["c"], "r1")])
            assert client.blpop(["r1"], 10) is not None
            wait_until(lambda: any(getattr(r, "job_id", "") == entry_id for r in caplog.records))
    finally:
        w.stop(timeout=5)
    [record] = [r for r in caplog.records if getattr(r, "job_id", "") == entry_id]
    line = json.loads(JsonFormatter().format(record))
    assert line["job_id"] == entry_id and line["reason"] == "error" and "boom" in line["message"]
    assert line["level"] == "info" and line["logger"] == "aiworker.worker"


def test_status_lag_counts_only_entries_still_in_the_stream(
    client: Client, settings: Settings
) -> None:
    """Redis 7.0's lag still counts entries deleted before any consumer read them (jobs taken
    back with NoLiveWorker): status showed lag=2 on an empty queue."""
    ensure_group(client, QUEUE)
    first = client.xadd(QUEUE, {"f": "0"})
    client.xreadgroup(CONSUMER_GROUP, "c", {QUEUE: ">"})
    client.xack(QUEUE, CONSUMER_GROUP, first)
    client.xdel(QUEUE, first, client.xadd(QUEUE, {"f": "1"}), client.xadd(QUEUE, {"f": "2"}))
    result = CliRunner().invoke(main, ["status", "--redis-url", settings.redis_url])
    assert "queue aiworker:queue:CPU: length=0 pending=0 lag=0" in result.output, result.output
