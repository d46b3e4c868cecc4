"""Pure pieces of the hardening modules, without Redis."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import redis
from conftest import heartbeat_of

from aiworker.execution.outcome import Outcome, StatsRecord
from aiworker.logs import JsonFormatter
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, BareMessage, message_of
from aiworker.protocol.keys import Keys
from aiworker.protocol.replies import (
    JSON,
    MSGPACK,
    NA,
    OK,
    Reply,
    Status,
    build_reply,
    decode_reply,
    error_field,
)
from aiworker.protocol.resp import error_reply_of, wire_error
from aiworker.settings import Settings
from aiworker.storage.redis_options import block_ms_for, worker_kwargs
from aiworker.storage.server import too_old
from aiworker.worker.complete import Completer, Finished
from aiworker.worker.leases import HeldEntries
from aiworker.worker.metrics import WorkerMetrics, failure_reason


def completer() -> Completer:
    return Completer(Keys(), "w1", 60, HeldEntries())


def test_completion_declares_every_key_once_and_refers_to_them_by_index() -> None:
    array = np.arange(2, dtype=np.float32)
    ok = Outcome("ok", writes={"o": array}, stats=[StatsRecord("m", 5, 2)])
    items = [
        Finished("1-0", ok, reply="r", started=None),
        Finished("2-0", Outcome.failed("boom", [StatsRecord("m", errors=1)]), reply="r"),
    ]
    keys, body = completer()._arguments("q", items)
    stats = Keys().stats("m")
    assert keys == ["q", "r", "o", stats, "m"]
    fields = codec.encode_fields(array)
    assert body[:9] == [2, "1-0", 2, body[3], 0, 1, 1, 0, 0]
    assert decode_reply(body[3]) == Reply(Status.OK, "q", "1-0", extra={"worker": "w1"})
    # the output: key 3, no TTL, no stage key (its fields follow), 8 items
    assert body[9:13] == [3, 0, 0, 8] and body[13:21] == [x for kv in fields.items() for x in kv]
    # the statistics: key 4, counted for the model (key 5) while it is stored
    assert body[21:27] == [4, 5, 5, 2, 1, 0]
    assert body[27:35] == ["2-0", 2, body[29], 0, 0, 1, 0, 0]
    failed = decode_reply(body[29])
    assert failed is not None and failed.error == "boom" and failed.answers("q", "2-0")
    assert body[35:] == [4, 5, 0, 0, 1, 1]


def test_a_forward_is_a_stream_record_of_the_request_and_a_notice() -> None:
    """Only the request, its reply key and format travel on (an entry with thousands of other
    fields is forwarded small); the requester is told where it went, the new id written in by
    the completion script where the payload says."""
    cmd = b"AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b"
    fields = {b"cmd": cmd, b"reply": b"r", **{f"x{n}".encode(): b"junk" for n in range(5000)}}
    item = Finished("1-0", Outcome.forward("GPU"), reply="r", fields=fields)
    keys, body = completer()._arguments("q", [item])
    assert keys == ["q", "r", "aiworker:queue:GPU"]
    notice, splice = body[3], body[4]
    assert body[:3] == [1, "1-0", 2] and body[5:] == [
        0,
        0,
        1,
        0,
        3,
        0,
        4,
        "cmd",
        cmd,
        "reply",
        b"r",
    ]
    assert decode_reply(notice[:splice] + b"7-1" + notice[splice:]) == Reply(
        Status.FORWARDED, "q", "1-0", to=("aiworker:queue:GPU", "7-1")
    )


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


def test_slots_of_long_keys_are_computed_not_remembered() -> None:
    """A key a client or a job names is hostile: however many long ones come, the slot and tag
    caches hold none of them (each could be megabytes), while short keys are remembered."""
    from aiworker.protocol import keys as keyspace

    long_key = "k" * (keyspace.REMEMBERED_KEY_LENGTH + 1)
    slots, tags = keyspace._remembered_slot, keyspace._remembered_tag
    slots.cache_clear()  # the tests before may have filled them (a full one does not grow)
    tags.cache_clear()
    before = slots.cache_info().currsize, tags.cache_info().currsize
    for n in range(50):
        key = f"{n}{long_key}"
        assert keyspace.key_slot(key) == keyspace._crc_slot(key)
        assert keyspace.slot_tag(key) == key
    assert (slots.cache_info().currsize, tags.cache_info().currsize) == before
    keyspace.key_slot("a-short-key-never-asked-before")
    keyspace.slot_tag("a-short-key-never-asked-before")
    assert slots.cache_info().currsize == before[0] + 1
    assert tags.cache_info().currsize == before[1] + 1
    assert keyspace.key_slot("{user1000}.following") == keyspace.key_slot("user1000")


def test_a_key_that_needs_a_tag_search_costs_no_search_per_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply key with ``}`` and no hash tag needs a tag found for its slot: that search was
    remembered for 4,096 slots only, so a requester naming a new slot each time cost a worker
    15 ms per job. Every slot's tag is found once, in one pass."""
    from aiworker.protocol import keys as keyspace

    keyspace.tag_for_slot(0)  # the table, once per process
    tries = []
    crc = keyspace._crc_slot
    monkeypatch.setattr(keyspace, "_crc_slot", lambda key: tries.append(key) or crc(key))
    for slot in range(keyspace.SLOTS):
        assert crc(keyspace.tag_for_slot(slot)) == slot
    assert tries == []


def test_a_frameworks_message_stays_bare_through_a_reply() -> None:
    """RedisAI sent a framework's own message without an error code: the reply flags it
    (``bare``), in both formats and for a DAG op, and every reader gets it back as one."""
    framework = BareMessage("No graph was found in the protobuf.")
    for fmt in (JSON, MSGPACK):
        reply = decode_reply(build_reply("q", "1-0", "w", "error", framework).encode(fmt))
        assert reply is not None and isinstance(reply.error, BareMessage)
        assert message_of(reply_error(reply)) == framework
        assert wire_error(message_of(reply_error(reply))) == framework  # no "ERR "
        ours = decode_reply(build_reply("q", "1-0", "w", "error", "Invalid DEVICE").encode(fmt))
        assert ours is not None and not isinstance(ours.error, BareMessage)
        assert wire_error(message_of(reply_error(ours))) == "ERR Invalid DEVICE"
        results = [OK, error_field(framework), NA]
        dag = build_reply("q", "1-0", "w", "error", framework, extra={"results": results})
        decoded = decode_reply(dag.encode(fmt))
        assert decoded is not None
        failed = decoded.op_results()[1]
        assert isinstance(failed, AIError) and str(failed) == framework
        assert error_reply_of(failed) == framework and wire_error(error_reply_of(failed)) == (
            framework
        )
    # what a reader sees from JSON: the text, and a flag a redis-cli user may ignore
    assert json.loads(build_reply("q", "1-0", "w", "error", framework).encode(JSON))["bare"] is True
    # an exception keeps it; a message built on it is ours again
    assert message_of(AIError(framework)) is framework
    assert not isinstance(message_of(AIError(f"ONNX: {framework}")), BareMessage)


def reply_error(reply: Reply) -> AIError:
    try:
        reply.raise_for_status()
    except AIError as exc:
        return exc
    raise AssertionError("the reply did not fail")


def test_a_heartbeats_queues_are_its_devices_own_streams() -> None:
    """Clients on a cluster XADD jobs to the streams heartbeats list: only a device's own queue
    streams (``Keys.queues``: the plain queue, its partitions) make a heartbeat valid."""
    from aiworker.storage import health

    keys = Keys()
    beat = heartbeat_of(keys, "h:1", queues={"CPU": keys.queues("CPU", 3)}, time=1.0)
    assert health.heartbeat(json.dumps(beat), keys) == beat
    for streams in (["victim{u}"], [keys.queue("GPU:0")], [keys.queue("CPU") + ":{a}b}"]):
        assert health.heartbeat(json.dumps({**beat, "queues": {"CPU": streams}}), keys) is None
    assert health.heartbeat(json.dumps({**beat, "time": float("nan")}), keys) is None
    assert health.heartbeat(b"\xff", keys) is None


def test_a_server_older_than_redis_7_is_named() -> None:
    """Workers refuse Redis < 7.0 (their scripts use script flags, recovery XAUTOCLAIM): checked
    on INFO server as Redis 6.0, 7.0, Valkey (which says 7.2.4) and a cluster's nodes give it."""
    assert too_old({"redis_version": "6.0.16"}) == "6.0.16"
    assert too_old({"redis_version": "6.2.14", "redis_mode": "standalone"}) == "6.2.14"
    assert too_old({"redis_version": "7.0.15"}) is None
    assert too_old({"redis_version": "7.2.4", "server_name": "valkey"}) is None
    assert too_old({"redis_version": "8.0.2"}) is None
    nodes = {
        "127.0.0.1:7000": {"redis_version": "7.0.0"},
        "127.0.0.1:7001": {"redis_version": "6.2.0"},
    }
    assert too_old(nodes) == "6.2.0"
