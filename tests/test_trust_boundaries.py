"""Trust boundaries: what a model hash, a contended tensor key and the shared config hash may make
a worker do. Fields written by whoever can write to Redis are sized, bounded and checked."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from conftest import stub_blob, wait_until
from faults import WorkerProcess, stub_model, tensor, wait_for_workers

from aiworker import Client, JobFailed, Settings, Worker
from aiworker.protocol.errors import AIError, ConfigError, LimitExceeded
from aiworker.protocol.keys import Keys
from aiworker.settings import REDIS_CONFIG, settings_from_redis_config
from aiworker.storage import model as model_store
from aiworker.storage import tensor_io
from aiworker.storage.tensor_io import LUA_VALUE_BYTES

BIG = 4 << 20  # a chunk far larger than the hash's own ``size`` field claims


def output_bytes(r: redis.Redis) -> int:
    """Bytes Redis has sent to all clients so far (what a read really transferred)."""
    return int(r.info("stats")["total_net_output_bytes"])


def lying_model(r: redis.Redis, key: str = "liar") -> None:
    """A STUB model hash whose ``size`` says 2 bytes while its one chunk holds 4 MB."""
    stub_model(r, key, op="identity")
    r.hset(key, mapping={"size": "2", "chunk:0": b"x" * BIG})


class MeddlingPipeline(redis.client.Pipeline):
    """A real pipeline; after each immediate ``trigger`` command (sent while WATCHing, i.e.
    between a check and its MULTI/EXEC) it runs ``meddle`` on another connection, as a
    concurrent client would, while ``budget`` lasts."""

    trigger = ""
    budget = 0
    meddle: Callable[[], None] = staticmethod(lambda: None)

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        result = super().immediate_execute_command(*args, **options)
        if str(args[0]).upper() == self.trigger and type(self).budget > 0:
            type(self).budget -= 1
            type(self).meddle()
        return result


def meddling_client(url: str, trigger: str, budget: int, meddle: Callable[[], None]) -> redis.Redis:
    class Pipe(MeddlingPipeline):
        pass

    Pipe.trigger, Pipe.budget, Pipe.meddle = trigger, budget, staticmethod(meddle)

    class Meddled(redis.Redis):
        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            return Pipe(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    return Meddled.from_url(url)


# --- model size from the chunks, not from the hash's own ``size`` field ------------------------


def test_read_model_sizes_the_blob_from_its_chunks_before_fetching(client: Client) -> None:
    lying_model(client)
    before = output_bytes(client)
    with pytest.raises(LimitExceeded) as info:
        model_store.read_model(client, "liar", max_bytes=1000)
    assert str(info.value) == (
        f"model 'liar' has {BIG:,} bytes, more than this worker's max_model_bytes (1,000)"
    )
    assert output_bytes(client) - before < 64 << 10, "the 4 MB chunk was never sent"


def test_read_model_within_the_limit_returns_one_version(client: Client) -> None:
    blob = stub_blob("identity", pad="y" * 300)
    model_store.store_model(
        client, Keys(), "m", model_store.ModelMeta("STUB", "CPU"), blob, chunk_size=64
    )
    meta, got = model_store.read_model(client, "m", max_bytes=len(blob))
    assert got == blob and meta.size == len(blob) and meta.chunks == -(-len(blob) // 64)
    assert model_store.read_model(client, "m") == (meta, got), "callers without a limit too"
    with pytest.raises(LimitExceeded, match=r"max_model_bytes \(100\)"):
        model_store.read_model(client, "m", max_bytes=100)


@pytest.mark.parametrize("chunks", ["1000000000", "-3"])
def test_read_model_refuses_implausible_chunk_counts(client: Client, chunks: str) -> None:
    stub_model(client, "m", op="identity")
    client.hset("m", "chunks", chunks)
    for limit in (None, 1 << 30):
        with pytest.raises(AIError, match="'m' is corrupt: its chunk count is not a whole"):
            model_store.read_model(client, "m", max_bytes=limit)


def test_a_model_replaced_after_it_was_sized_is_sized_again(
    client: Client, redis_server: Any
) -> None:
    """WATCH: the blob fetched is the one that was sized, even when a bigger one replaces it
    between the two round trips."""
    stub_model(client, "m", op="identity")

    def swap() -> None:
        client.hset("m", "chunk:0", b"z" * BIG)  # same chunk count, 4 MB

    meddled = meddling_client(redis_server.url, "EVALSHA", 1, swap)
    before = output_bytes(client)
    with pytest.raises(LimitExceeded, match=f"has {BIG:,} bytes"):
        model_store.read_model(meddled, "m", max_bytes=1000)
    assert output_bytes(client) - before < 64 << 10


def test_a_worker_never_fetches_a_blob_past_max_model_bytes(
    client: Client, settings: Settings
) -> None:
    lying_model(client)
    tensor(client, "a", [1, 2])
    worker = Worker(settings.replace(max_model_bytes=1000)).start()
    try:
        before = output_bytes(client)
        with pytest.raises(JobFailed, match=r"max_model_bytes \(1,000\)"):
            client.modelexecute("liar", ["a"], ["o"])
        assert output_bytes(client) - before < 64 << 10
    finally:
        worker.stop(timeout=10)


# --- model and script metadata: each field sized before it is fetched --------------------------

HUGE = model_store.MAX_METADATA_FIELD_BYTES + 1
SCRIPT = (
    "def double(tensors: List[Tensor], keys: List[str], args: List[str]):\n"
    "    return tensors[0] * 2\n"
)


@pytest.mark.parametrize("field", ["tag", "inputs", "listed_outputs", "digest"])
def test_a_worker_never_fetches_an_oversized_model_field(
    client: Client, worker: Worker, field: str
) -> None:
    """A model hash written by hand with a field of 1 MiB and more: the job fails naming it, and
    the field never leaves Redis (neither in the job's read nor in the model's load)."""
    stub_model(client, "m", op="identity")
    tensor(client, "a", [1, 2])
    client.modelexecute("m", ["a"], ["o"])  # read, loaded and cached once
    client.hset("m", mapping={"digest": "a version of its own", field: "x" * HUGE})
    for _ in range(2):
        before = output_bytes(client)
        with pytest.raises(JobFailed, match=f"model 'm' has a '{field}' field of {HUGE:,} bytes"):
            client.modelexecute("m", ["a"], ["o"])
        assert output_bytes(client) - before < 64 << 10
    if field in model_store.META_FIELDS:  # what a load reads (not the reported names)
        with pytest.raises(LimitExceeded, match=f"'{field}' field of {HUGE:,} bytes"):
            model_store.read_model(client, "m", max_bytes=1 << 30)
        assert output_bytes(client) - before < 64 << 10


def test_the_model_a_worker_loads_is_the_one_whose_fields_it_sized(
    client: Client, redis_server: Any
) -> None:
    """WATCH: a tag grown between the sizing and the fetch makes the read size it again."""
    stub_model(client, "m", op="identity")

    def grow() -> None:
        client.hset("m", "tag", "x" * HUGE)

    meddled = meddling_client(redis_server.url, "EVALSHA", 1, grow)
    before = output_bytes(client)
    with pytest.raises(LimitExceeded, match="'tag' field"):
        model_store.read_model(meddled, "m", max_bytes=1 << 30)
    assert output_bytes(client) - before < 64 << 10


def test_a_worker_never_fetches_an_oversized_script_field_or_source(
    client: Client, settings: Settings
) -> None:
    client.scriptstore("s", "CPU", SCRIPT, ["double"])
    tensor(client, "a", [1, 2])
    worker = Worker(settings.replace(max_model_bytes=4096)).start()
    try:
        client.scriptexecute("s", "double", inputs=["a"], outputs=["o"])
        np.testing.assert_array_equal(client.tensorget("o"), [2, 4])
        client.hset("s", mapping={"digest": "a version of its own", "tag": "x" * HUGE})
        before = output_bytes(client)
        with pytest.raises(JobFailed, match=f"script 's' has a 'tag' field of {HUGE:,} bytes"):
            client.scriptexecute("s", "double", inputs=["a"], outputs=["o"])
        # a new version (a worker loads its source again) with a source past max_model_bytes
        client.hset("s", mapping={"digest": "v3", "tag": "", "source": SCRIPT + "#" * (1 << 20)})
        with pytest.raises(JobFailed, match=r"'source' field of [0-9,]+ bytes, .* \(4,096\)"):
            client.scriptexecute("s", "double", inputs=["a"], outputs=["o"])
        assert output_bytes(client) - before < 64 << 10
    finally:
        worker.stop(timeout=10)


def test_a_dag_never_fetches_an_oversized_kind_of_a_key_it_persists_to(
    client: Client, worker: Worker
) -> None:
    tensor(client, "a", [1, 2])
    client.hset("out", "kind", "x" * HUGE)
    before = output_bytes(client)
    dag = client.dag(load=["a"], persist=["out"])
    dag.tensorget("a")
    with pytest.raises(AIError, match="WRONGTYPE"):
        dag.tensorset("out", [1.0], dtype="float").execute()
    assert output_bytes(client) - before < 64 << 10
    assert client.hstrlen("out", "kind") == HUGE, "left as it was"


def test_no_job_runs_a_model_or_script_under_aiworkers_prefix(
    client: Client, worker: Worker
) -> None:
    """No store puts a model or script under the prefix, and requesters may write hashes there
    (``aiworker:tmp:``, ``aiworker:reply:``): a hash found there is no owner's code."""
    stub_model(client, "m", op="mul")
    client.scriptstore("s", "CPU", SCRIPT, ["double"])
    tensor(client, "a", [1, 2])
    for kind, key in (("model", "m"), ("script", "s")):
        client.hset(f"aiworker:tmp:{kind}", mapping=client.hgetall(key))
    refused = "one of aiworker's own keys .*no model or script is stored there"
    with pytest.raises(AIError, match=refused):
        client.modelexecute("aiworker:tmp:model", ["a", "a"], ["o"])
    with pytest.raises(AIError, match=refused):
        client.scriptexecute("aiworker:tmp:script", "double", inputs=["a"], outputs=["o"])
    dag = client.dag(load=["a"])
    dag.modelexecute("aiworker:reply:x", ["a", "a"], ["o"])
    with pytest.raises(AIError, match=refused):
        dag.tensorget("o").execute()
    assert not client.exists("o")


def test_a_store_refuses_metadata_a_worker_would_not_read(client: Client) -> None:
    with pytest.raises(LimitExceeded, match="the model's tag take"):
        client.modelstore("m", "STUB", "CPU", stub_blob("identity"), tag="x" * HUGE)
    with pytest.raises(LimitExceeded, match="the script's tag take"):
        client.scriptstore("s", "CPU", SCRIPT, ["double"], tag="x" * HUGE)
    assert not client.exists("m", "s")


@pytest.mark.parametrize("entry_points", ["not json", '{"a": 1}', "[1]"])
def test_a_script_whose_entry_points_are_not_names_is_corrupt(
    client: Client, worker: Worker, entry_points: str
) -> None:
    client.scriptstore("s", "CPU", SCRIPT, ["double"])
    tensor(client, "a", [1, 2])
    client.hset("s", "entry_points", entry_points)
    with pytest.raises(JobFailed, match="script is corrupt"):
        client.scriptexecute("s", "double", inputs=["a"], outputs=["o"])


# --- large tensor writes: no retry loop at all ------------------------------------------------


def test_a_large_tensor_write_never_retries_however_contended(client: Client) -> None:
    """A large tensor is written to a temporary key and moved onto its key by one script that
    checks the type: nothing to retry, so another client rewriting the key cannot make a writer
    spin. The move still refuses a key that became something else meanwhile."""
    big = np.arange(LUA_VALUE_BYTES // 4 + 10, dtype=np.float32)
    tensor_io.write(client, "t", big)  # the move script is loaded now (its first call loads it)
    tensor_io.write(client, "t", np.zeros(2, np.float32))
    before = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    tensor_io.write(client, "t", big)
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] - before == 1
    assert np.array_equal(tensor_io.read(client, "t"), big)
    client.delete("t")
    client.rpush("t", "someone else's")
    with pytest.raises(AIError, match="WRONGTYPE"):
        tensor_io.write(client, "t", big)
    assert client.lrange("t", 0, -1) == [b"someone else's"]
    assert not list(client.scan_iter(Keys().prefix + "tmp:*")), "no temporary copy left"


def test_a_large_tensor_write_is_one_round_trip_and_survives_a_script_flush(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large tensor is staged and moved in one MULTI (one round trip, the value never a Lua
    argument); after SCRIPT FLUSH the staged copy is moved once the script is loaded again, and
    no temporary key is left either way."""
    big = np.arange(LUA_VALUE_BYTES // 4 + 10, dtype=np.float32)
    client.tensorset("t", big)  # the move script is loaded now
    sent: list[Any] = []
    send = client._send
    monkeypatch.setattr(client, "_send", lambda commands: sent.append(commands) or send(commands))
    client.tensorset("t", big + 1)
    assert len(sent) == 1 and sent[0].transaction
    np.testing.assert_array_equal(client.tensorget("t"), big + 1)
    client.script_flush()
    sent.clear()
    client.tensorset("t", big + 2)
    assert len(sent) == 2, "the staged write, then the script loaded and run"
    np.testing.assert_array_equal(client.tensorget("t"), big + 2)
    assert client.ttl("t") == -1, "the staged copy's expiry does not follow it"
    assert not list(client.scan_iter(Keys().prefix + "tmp:*")), "no temporary copy left"


# --- the shared config hash --------------------------------------------------------------------

HOSTILE = {
    "max_tensor_bytes": "0",
    "max_model_bytes": "0",
    "max_deliveries": "1000000",
    "reply_ttl": "1",
    "visibility_timeout": "notanumber",
    "redis_url": "redis://127.0.0.1:1/0",
    "prefix": "evil:",
    "allow_file_ops": "true",
    "BACKENDSPATH": "/tmp/evil",
    "INTRA_OP_PARALLELISM": "many",
    "THREADS_PER_QUEUE": "3",
}


def test_only_checked_ai_config_names_are_read_from_redis() -> None:
    values, warnings = settings_from_redis_config(
        {k.encode(): v.encode() for k, v in HOSTILE.items()}
    )
    assert values == {"threads_per_queue": 3}
    ignored = [name for name in HOSTILE if name != "THREADS_PER_QUEUE"]
    assert [w.split(" ")[1] for w in warnings] == [repr(name) for name in ignored]
    assert any("'BACKENDSPATH'" in w and "no path is loaded" in w for w in warnings)
    assert Settings.load(env={}, base=values).threads_per_queue == 3


@pytest.mark.parametrize(
    ("name", "value", "adopted"),
    [
        ("THREADS_PER_QUEUE", "0", None),
        ("threads_per_queue", "8", 8),
        ("THREADS_PER_QUEUE", "257", None),
        ("THREADS_PER_QUEUE", "1e3", None),
        ("MODEL_CHUNK_SIZE", "1024", 1024),
        ("MODEL_CHUNK_SIZE", str(1 << 40), None),
        ("MODEL_EXECUTION_TIMEOUT", "-1", None),
        ("MODEL_EXECUTION_TIMEOUT", " 500 ", 500),
        ("INTER_OP_PARALLELISM", "4", 4),
        ("BACKEND_MEMORY_LIMIT", "4096", 4096),
        ("BACKEND_MEMORY_LIMIT", "9" * 30, None),
    ],
)
def test_redis_config_values_are_bounded(name: str, value: str, adopted: int | None) -> None:
    values, warnings = settings_from_redis_config({name: value})
    field = REDIS_CONFIG[name.upper()][0]
    if adopted is None:
        assert values == {} and len(warnings) == 1
        assert warnings[0].startswith(f"ignoring {name!r} = {value.strip()!r}")
    else:
        assert values == {field: adopted} and warnings == []


def test_allow_file_ops_is_a_boolean_setting() -> None:
    assert Settings().allow_file_ops is False
    assert Settings.load(env={"AIWORKER_ALLOW_FILE_OPS": "true"}).allow_file_ops is True
    assert Settings.load(env={"AIWORKER_ALLOW_FILE_OPS": "0"}).allow_file_ops is False
    with pytest.raises(ConfigError, match="allow_file_ops"):
        Settings.load(env={"AIWORKER_ALLOW_FILE_OPS": "maybe"})
    assert Settings().max_model_extract_bytes == 4 << 30


def test_a_hostile_config_hash_changes_no_limit_or_connection_setting(
    client: Client, redis_server: Any, tmp_path: Path
) -> None:
    client.hset(client.keyspace.config, mapping=HOSTILE)
    stub_model(client, "m", op="identity")
    tensor(client, "small", [1.0, 2.0])
    tensor(client, "large", [0.0] * 100)  # 400 bytes, over the operator's 64
    proc = WorkerProcess(redis_server.url, tmp_path / "worker.log", max_tensor_bytes=64)
    try:
        wait_for_workers(client, [proc])
        (name,) = client.zrange(client.keyspace.workers, 0, -1)
        status = json.loads(client.get(client.keyspace.worker(name.decode())))  # type: ignore[arg-type]
        assert status["threads_per_queue"] == 3, "a valid AI.CONFIG value is still adopted"
        with pytest.raises(JobFailed, match=r"max_tensor_bytes \(64\)"):
            client.modelexecute("m", ["large"], ["out"], timeout=20_000)
        assert client.modelexecute("m", ["small"], ["out"], timeout=20_000) == "OK"
        assert client.tensorget("out").tolist() == [1.0, 2.0]
        assert proc.proc.poll() is None, "the worker is still running"
    finally:
        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, proc.log()[-3000:]
    log = proc.log()
    for field in ("max_tensor_bytes", "visibility_timeout", "redis_url", "prefix", "BACKENDSPATH"):
        assert f"ignoring {field!r} from the shared config hash" in log, field


def test_a_config_key_of_another_type_does_not_stop_a_worker(
    client: Client, redis_server: Any, tmp_path: Path
) -> None:
    client.set(client.keyspace.config, "not a hash")
    proc = WorkerProcess(redis_server.url, tmp_path / "worker.log")
    try:
        wait_for_workers(client, [proc])
        wait_until(lambda: "ignoring the shared config" in proc.log(), timeout=10)
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
