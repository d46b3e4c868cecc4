"""Size limits, the bounded model cache, completion guards, and nothing ever unpickled."""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, wait_until
from faults import QUEUE, stub_model, tensor

from aiworker import Client, Settings, Worker
from aiworker.backends.base import LoadedModel
from aiworker.execution.limits import (
    STRING_ITEM_BYTES,
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
        # fields no MODELSTORE would store: RedisAI's message for that argument
        ({"batchsize": "many"}, "Invalid argument for BATCHSIZE"),
        ({"minbatchsize": "1_0"}, "Invalid argument for MINBATCHSIZE"),
        ({"minbatchtimeout": "\u0661"}, "Invalid argument for MINBATCHTIMEOUT"),
        ({"inputs": b"\xff\xfe"}, "Invalid argument for input_count"),
        ({"outputs": '{"a": 1}'}, "Invalid argument for output_count"),
        ({"chunks": "two"}, "chunk count is not a whole number"),
        ({"backend": b"ST\xffUB"}, "unsupported backend"),
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
    assert declared_nbytes("STRING", (4,)) == 4 * STRING_ITEM_BYTES
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


@pytest.mark.parametrize("width", [2, 100])
def test_a_string_tensor_counts_what_decoding_it_holds(width: int) -> None:
    """A STRING element is a Python object: counted at 8 bytes, 8 million two-character
    elements (24 MB in Redis) within a 64 MiB limit made a worker hold over 600 MiB."""
    n = 50_000
    blob = (b"x" * width + b"\0") * n
    reply = [b"ok", b"tensor", b"STRING", str(n).encode(), blob, None]
    counted = declared_nbytes("STRING", (n,)) + len(blob)
    tracemalloc.start()
    array = decode_tensor_reply("s", reply, counted)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert array.shape == (n,) and array[-1] == b"x" * width
    assert peak <= counted, f"decoding held {peak:,} bytes, {counted:,} counted"
    with pytest.raises(LimitExceeded, match=r"max_tensor_bytes"):
        decode_tensor_reply("s", reply, counted - 1)


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


# Fields, key counts and values beyond what Redis or a worker should carry ---------------------


def output_bytes(r: Client) -> int:
    """Bytes Redis has sent to its clients so far."""
    return int(r.info("stats")["total_net_output_bytes"])


def test_an_oversized_shape_field_is_refused_before_it_is_fetched(
    client: Client, limited: Worker
) -> None:
    """An 8 MB shape field raised a worker's RSS by 120 MB; it never leaves Redis now."""
    client.hset("fat", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "1," * (4 << 20)})
    client.hset("odd", mapping={"kind": "tensor", "dtype": "FLOAT" * 1000, "shape": "2"})
    sent = output_bytes(client)
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 fat OUTPUTS 1 o"})
    assert reply["error"] == "invalid or negative value found in tensor shape", reply
    assert output_bytes(client) - sent < 100_000, "the field itself never left Redis"
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 odd OUTPUTS 1 o"})
    assert reply["error"] == "invalid data type", reply
    assert_next_good_job_succeeds(client)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dtype": b"FL\xffAT"}, "invalid data type"),
        ({"shape": b"\xff"}, "invalid or negative value found in tensor shape"),
        ({"shape": "1_0"}, "invalid or negative value found in tensor shape"),
        ({"shape": "\u0661"}, "invalid or negative value found in tensor shape"),
        ({"values": b"1 \xff"}, "invalid value"),
    ],
)
def test_garbled_tensor_fields_get_redisai_errors(
    client: Client, limited: Worker, fields: dict[str, object], message: str
) -> None:
    client.hset("g", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "2", **fields})  # type: ignore[arg-type]
    reply = run_raw(client, {"cmd": "AI.MODELEXECUTE m INPUTS 1 g OUTPUTS 1 o"})
    assert reply["error"] == message, reply


def test_an_entry_naming_too_many_keys_is_refused(client: Client, limited: Worker) -> None:
    inputs = " ".join(f"k{n}" for n in range(2000))
    reply = run_raw(client, {"cmd": f"AI.MODELEXECUTE m INPUTS 2000 {inputs} OUTPUTS 1 o"})
    assert reply["error"] == (
        "the job names 2,002 keys, more than this worker's max_job_keys (1,024)"
    ), reply
    assert_next_good_job_succeeds(client)


def test_reads_of_many_keys_are_split_so_no_script_runs_long(client: Client) -> None:
    """Jobs taken in one stream read that name many keys are read by several script calls,
    none checking more than READ_KEYS_PER_CALL keys (each costs Redis microseconds)."""
    from aiworker.execution import limits as job_limits
    from aiworker.execution import state
    from aiworker.protocol.requests import ModelExecute
    from aiworker.storage.wire import Wire

    stub_model(client, "m", op="identity")
    for n in range(900):
        tensor(client, f"k{n}", [n])
    jobs = [ModelExecute("m", tuple(f"k{n}" for n in range(j, 900, 3)), ("o",)) for j in range(3)]
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    try:
        snapshots = state.read(
            Wire(client.connection_pool), jobs, job_limits.Limits(), None, client.keyspace
        )
        log = client.slowlog_get(100_000)
    finally:
        client.config_set("slowlog-log-slower-than", 10_000)
    assert [s.tensor("k5").tolist() for s in snapshots[2:]] == [[5.0]]
    numkeys = [int(e["command"].split()[2]) for e in log if e["command"].startswith(b"EVALSHA")]
    assert len(numkeys) == 3, "three jobs of 301 keys each: one call each"
    assert max(numkeys) <= state.READ_KEYS_PER_CALL + 1, "its keys, and the read's flag"


def test_outputs_larger_than_redis_accepts_are_refused_with_the_real_cause(
    tmp_path: Path,
) -> None:
    """Redis takes no value above its proto-max-bulk-len: such an output was re-run until
    dead-lettered as if its workers died. The worker reads the limit at start and says so."""
    pytest.importorskip("torch")
    from aiworker.embedded import RedisServer

    source = (
        "def grow(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
        "    return torch.cat([tensors[0], tensors[0]])\n"
    )
    with RedisServer(extra_args=["--proto-max-bulk-len", "1mb"]) as server:
        c = Client.from_url(server.url, reply_timeout=20)
        c.scriptstore("s", "CPU", source, ["grow"])
        c.hset("z", mapping={"kind": "tensor", "dtype": "FLOAT", "shape": "200000"})  # 800 KB
        w = Worker(Settings(redis_url=server.url, block_ms=100)).start()
        try:
            assert w.limits.max_tensor_bytes == 1 << 20
            with pytest.raises(AIError) as info:
                c.scriptexecute("s", "grow", inputs=["z"], outputs=["o"])
        finally:
            w.stop(timeout=10)
        assert "1,600,000 bytes" in str(info.value) and "proto-max-bulk-len" in str(info.value)
        assert not c.exists("o") and c.xlen(c.keyspace.dead_letters("CPU")) == 0
        c.close()


def test_a_worker_that_may_not_read_config_assumes_redis_default(client: Client) -> None:
    from aiworker.storage import tensor_io

    assert tensor_io.max_value_bytes(client) == 512 << 20  # the test server's own setting
    client.execute_command("ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "+@all", "-config")
    try:
        port = client.connection_pool.connection_kwargs["port"]
        user = Client(port=port, username="noconfig", password="pw")
        assert tensor_io.max_value_bytes(user) == tensor_io.REDIS_MAX_VALUE_BYTES
        user.close()
    finally:
        client.execute_command("ACL", "DELUSER", "noconfig")


@pytest.fixture
def job_limited(client: Client, settings: Settings) -> Iterator[Worker]:
    """A worker holding each job to 2 MiB of tensors, each tensor to 1 MiB."""
    stub_model(client, "echo", op="identity")
    w = Worker(settings.replace(max_tensor_bytes=1 << 20, max_job_bytes=2 << 20)).start()
    yield w
    w.stop(timeout=10)


def test_a_dags_tensorsets_count_against_max_job_bytes(client: Client, job_limited: Worker) -> None:
    """Zero-filled TENSORSETs cost a few bytes of entry each: 40 of 1 MiB, each within
    max_tensor_bytes, are refused as a job of 40 MiB before any is made or written."""
    ops = " |> ".join(
        f"AI.TENSORSET t{i} UINT8 {1 << 20} |> AI.TENSORGET t{i} BLOB" for i in range(40)
    )
    names = " ".join(f"t{i}" for i in range(40))
    reply = run_raw(client, {"cmd": f"AI.DAGEXECUTE PERSIST 40 {names} |> {ops}"})
    assert reply["status"] == "error"
    assert "would take 3,145,728 bytes, more than this worker's max_job_bytes (2,097,152)" in str(
        reply["error"]
    ), "refused at the third, before the run"
    assert not client.exists(*names.split()) and not client.keys(
        client.keyspace.prefix + "dagout:*"
    )
    ok = run_raw(client, {"cmd": f"AI.DAGEXECUTE PERSIST 1 t0 |> AI.TENSORSET t0 UINT8 {1 << 20}"})
    assert ok["status"] == "ok" and client.hget("t0", "dtype") == b"UINT8"


def test_what_a_dags_models_make_counts_against_max_job_bytes(
    client: Client, job_limited: Worker
) -> None:
    """Each copy a model makes is within max_tensor_bytes; the job holding four is not."""
    client.tensorset("big", np.zeros(150_000, np.float32))  # 600 KB
    chain = " |> ".join(f"AI.MODELEXECUTE echo INPUTS 1 big OUTPUTS 1 c{i}" for i in range(3))
    reply = run_raw(client, {"cmd": f"AI.DAGEXECUTE LOAD 1 big PERSIST 1 c2 |> {chain}"})
    assert reply["status"] == "error" and "max_job_bytes (2,097,152)" in str(reply["error"])
    assert not client.exists("c2")
    chain = " |> ".join(f"AI.MODELEXECUTE echo INPUTS 1 big OUTPUTS 1 c{i}" for i in range(2))
    reply = run_raw(client, {"cmd": f"AI.DAGEXECUTE LOAD 1 big PERSIST 1 c1 |> {chain}"})
    assert reply["status"] == "ok" and client.exists("c1"), "three tensors of 600 KB fit"


def test_a_reply_larger_than_redis_accepts_fails_at_once_with_the_real_cause() -> None:
    """A msgpack reply carries its TENSORGETs inline: two tensors of 600 KB, each within the
    limits, make a reply Redis would refuse (its proto-max-bulk-len 1 MB here). It was run again
    until dead-lettered as if its workers had died; now it fails once, nothing written."""
    from aiworker.embedded import RedisServer
    from aiworker.protocol import replies

    with RedisServer(extra_args=["--proto-max-bulk-len", "1mb"]) as server:
        c = Client.from_url(server.url, reply_timeout=20)
        w = Worker(Settings(redis_url=server.url, block_ms=100)).start()
        try:
            ops = " |> ".join(
                f"AI.TENSORSET t{i} UINT8 600000 |> AI.TENSORGET t{i} BLOB" for i in (1, 2)
            )
            c.xadd(
                QUEUE,
                {"cmd": f"AI.DAGEXECUTE PERSIST 1 t1 |> {ops}", "reply": "r", "fmt": "msgpack"},
            )
            popped = c.blpop(["r"], 8)
            assert popped is not None, "answered at once, not run again and again"
            reply = replies.decode_reply(popped[1])
            assert reply is not None and reply.status == "error"
            assert (
                "the reply would take 1,200," in reply.error and "proto-max-bulk-len" in reply.error
            )
            assert not c.exists("t1") and c.xlen(c.keyspace.dead_letters("CPU")) == 0
            one = (
                "AI.DAGEXECUTE PERSIST 1 t1 |> AI.TENSORSET t1 UINT8 600000 |> AI.TENSORGET t1 BLOB"
            )
            c.xadd(QUEUE, {"cmd": one, "reply": "r", "fmt": "msgpack"})
            popped = c.blpop(["r"], 8)
            assert popped is not None and replies.decode_reply(popped[1]).status == "ok"  # type: ignore[union-attr]
            assert c.exists("t1"), "the same worker goes on"
        finally:
            w.stop(timeout=10)
            c.close()
