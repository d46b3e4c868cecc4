"""Pure pieces of the hardening modules, without Redis."""

from __future__ import annotations

import json
import logging

import redis

from aiworker.logs import JsonFormatter
from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.settings import Settings
from aiworker.storage.redis_options import block_ms_for, worker_kwargs
from aiworker.worker.complete import Commands, script_args
from aiworker.worker.metrics import WorkerMetrics, failure_reason
from aiworker.worker.recovery import HeldEntries


def test_completion_declares_every_key_once_and_refers_to_them_by_index() -> None:
    done = Commands().delete("o").hset("o", mapping={"kind": "tensor"}).lpush("r", "x")
    done.expire("r", 5).hincrby("s", "calls", 1)
    other = Commands().lpush("r", "y")
    keys, argv = script_args("q", [("1-0", done), ("2-0", other)])
    assert keys == ["q", "o", "r", "s"]
    assert argv == [
        CONSUMER_GROUP, 0, 2,
        "1-0", 5,
        0, "DEL", 2,
        2, "HSET", 2, "kind", "tensor",
        1, "LPUSH", 3, "x",
        1, "EXPIRE", 3, "5",
        2, "HINCRBY", 4, "calls", "1",
        "2-0", 1,
        1, "LPUSH", 3, "y",
    ]  # fmt: skip
    keys, argv = script_args("q", [("1-0", done)], declare=False)
    assert keys == ["q"] and argv[:6] == [CONSUMER_GROUP, 3, "o", "r", "s", 1]


def test_completion_xadd_with_cap() -> None:
    done = Commands().xadd("dl", {"a": b"1"}, maxlen=10)
    assert done.commands == [("XADD", "dl", ["MAXLEN", "~", "10", "*", "a", b"1"])]


def test_failure_reasons() -> None:
    assert failure_reason("error", "x", malformed=True) == "malformed"
    assert failure_reason("timedout", "") == "timedout"
    assert failure_reason("error", "NOPERM this worker cannot DEL key 'k'") == "denied"
    assert failure_reason("error", "... max_tensor_bytes (64)") == "too_large"
    assert failure_reason("error", "internal error: ValueError: x") == "internal"
    assert failure_reason("error", "STUB: boom") == "error"


def test_metric_names_follow_triton() -> None:
    m = WorkerMetrics()
    m.success("m", "CPU", 0.01)
    m.failure("m", "CPU", "error")
    text = m.render().decode()
    for name in (
        'aiworker_request_success_total{device="CPU",model="m"} 1.0',
        'aiworker_request_failure_total{device="CPU",model="m",reason="error"} 1.0',
        "aiworker_compute_duration_seconds_bucket",
        "aiworker_batch_size_bucket",
    ):
        assert name in text


def test_held_entries() -> None:
    held = HeldEntries()
    held.add("q", "1-0", "c1")
    held.add("q", "2-0", "c1")
    held.add("q2", "3-0", "c2")
    assert len(held) == 3 and ("q", "1-0") in held
    assert held.by_owner() == {("q", "c1"): ["1-0", "2-0"], ("q2", "c2"): ["3-0"]}
    held.discard("q", "1-0")
    held.discard("q", "missing")
    assert sorted(held.pairs()) == [("q", "2-0"), ("q2", "3-0")]


def test_block_ms_stays_below_socket_timeouts() -> None:
    def client(timeout: float | None) -> redis.Redis:
        return redis.Redis(socket_timeout=timeout)

    assert block_ms_for(client(None), 1000) == 1000
    assert block_ms_for(client(0.5), 1000) == 400
    assert block_ms_for(client(30), 1000) == 1000
    kwargs = worker_kwargs(Settings(block_ms=2000))
    assert kwargs["socket_timeout"] > 2.0 and kwargs["retry"].get_retries() > 0


def test_json_log_lines_carry_extras() -> None:
    record = logging.LogRecord(
        "aiworker.worker.process", logging.WARNING, "", 0, "job %s x", ("1-0",), None
    )
    record.job_id = "1-0"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job 1-0 x" and line["job_id"] == "1-0" and line["level"] == "warning"
