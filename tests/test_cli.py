"""The ``aiworker`` command line, driven through click's runner against a real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT, heartbeat_of, stub_blob, torch_blob, wait_until, worker_env

from aiworker import Client, Worker
from aiworker.cli import main
from aiworker.embedded import RedisServer
from aiworker.protocol.errors import NoLiveWorker
from aiworker.protocol.keys import Keys
from aiworker.storage import health


def invoke(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, list(args), env={"AIWORKER_REDIS_URL": url}, catch_exceptions=False
    )
    return result.exit_code, result.output


def test_tensor_set_and_get(client: Client, redis_server: RedisServer) -> None:
    code, out = invoke(redis_server.url, "tensor", "set", "t", "INT32", "2,2", "1", "2", "3", "4")
    assert (code, out.strip()) == (0, "OK")
    assert client.tensorget("t").tolist() == [[1, 2], [3, 4]]
    code, out = invoke(redis_server.url, "tensor", "get", "t")
    assert json.loads(out) == {"dtype": "INT32", "shape": [2, 2], "values": [1, 2, 3, 4]}
    code, out = invoke(redis_server.url, "tensor", "get", "t", "--meta")
    assert json.loads(out) == {"dtype": "INT32", "shape": [2, 2]}


def test_tensor_errors_exit_non_zero_with_redisai_messages(
    client: Client, redis_server: RedisServer
) -> None:
    code, out = invoke(redis_server.url, "tensor", "set", "t", "FLOAT16", "2", "1", "2")
    assert code == 1 and "invalid data type" in out
    code, out = invoke(redis_server.url, "tensor", "get", "missing")
    assert code == 1 and "tensor key is empty or in a different shard" in out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["model", "store", "m", "NOPE", "CPU", "{blob}"], "Backend not allowed"),
        (["model", "store", "m", "STUB", "TPU", "{blob}"], "Device not allowed"),
        (["model", "store", "m", "TF", "CPU", "{blob}"], "Require keyword arguments inputs"),
        (["model", "store", "m", "STUB", "CPU", "{blob}", "--inputs", "a"], "should not be"),
        (["script", "store", "s", "TPU", "{blob}", "-e", "bar"], "Device not allowed"),
        (["tensor", "set", "t", "FLOAT", "a,b", "1"], "dimensions separated by commas"),
    ],
)
def test_a_bad_argument_is_a_usage_error(
    client: Client, redis_server: RedisServer, tmp_path: Path, args: list[str], said: str
) -> None:
    """README: a bad argument is click's usage error, exit 2. redisai-py's argument checks
    (ValueError) printed a Python traceback and exited 1."""
    blob = tmp_path / "blob"
    blob.write_bytes(stub_blob("add"))
    code, out = invoke(redis_server.url, *(arg.replace("{blob}", str(blob)) for arg in args))
    assert code == 2 and said in out, out
    assert client.keys("*") == []


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["NOPE", "CPU"], 2, "Backend not allowed"),
        (["STUB", "CPU", "--inputs", "a"], 2, "should not be"),
        (["STUB", "CPU", "--minbatch", "2"], 2, "Minbatch is not allowed without batch"),
        (["STUB", "GPU:x"], 1, "Invalid DEVICE"),
        (["TFLITE", "CPU", "--batch", "2"], 1, "Auto-batching not supported by the TFLITE"),
    ],
)
def test_a_model_store_refused_by_its_arguments_reads_no_file(
    client: Client, redis_server: RedisServer, tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    """The arguments are checked before the model file is read and sent: a mistyped backend
    read and uploaded a file of gigabytes before it was refused."""
    blob = tmp_path / "blob"
    blob.write_bytes(stub_blob("add"))
    got, out = invoke(redis_server.url, "model", "store", "m", *args[:2], str(blob), *args[2:])
    assert got == code and said in out, out
    assert "reading" not in out and "uploading" not in out, out
    assert client.keys("*") == []


def test_model_store_get_list_del(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(torch_blob("add"))
    code, out = invoke(
        redis_server.url, "model", "store", "m", "TORCH", "CPU", str(path), "--tag", "v2"
    )
    assert code == 0 and "OK" in out
    assert client.modelget("m")["blob"] == path.read_bytes()
    code, out = invoke(redis_server.url, "model", "get", "m", "-o", str(tmp_path / "back.pt"))
    meta = json.loads(out)
    assert (meta["backend"], meta["device"], meta["tag"]) == ("TORCH", "CPU", "v2")
    assert (tmp_path / "back.pt").read_bytes() == path.read_bytes()
    code, out = invoke(redis_server.url, "model", "list")
    assert out.strip() == "m\tv2"
    code, out = invoke(redis_server.url, "model", "del", "m")
    assert code == 0 and client.modelscan() == []
    code, out = invoke(redis_server.url, "model", "del", "m")
    assert code == 1 and "model key is empty" in out


def test_run_info_status_and_check(
    client: Client, redis_server: RedisServer, worker: Worker
) -> None:
    url = redis_server.url
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.array([1, 2], dtype=np.float32))
    client.tensorset("b", np.array([3, 4], dtype=np.float32))
    code, out = invoke(url, "run", "m", "-i", "a,b", "-o", "c")
    assert code == 0
    assert json.loads(out.splitlines()[1].split(": ", 1)[1])["values"] == [4.0, 6.0]
    code, out = invoke(url, "info", "m")
    assert json.loads(out)["calls"] == 1
    assert invoke(url, "info", "m", "--reset")[1].strip() == "OK"
    assert json.loads(invoke(url, "info", "m")[1])["calls"] == 0

    wait_until(lambda: invoke(url, "check")[0] == 0)
    code, out = invoke(url, "check", "--device", "GPU:3")
    assert code == 1 and "no live worker serves GPU:3" in out
    code, out = invoke(url, "status")
    assert f"worker {worker.name}" in out
    assert "queue aiworker:queue:CPU" in out and "pending=0" in out
    # the next heartbeat (every 2 s) lists the backend the job loaded
    wait_until(lambda: "STUB" in json.loads(invoke(url, "info", "--backends")[1]), timeout=10)


FORGED_HEARTBEATS = [
    "not json",
    "[1, 2]",
    '{"time": "x"}',
    '{"name": "evil", "time": 1e300}',  # no devices, queues, ...
    json.dumps(  # all there, but its queues name a key that is no queue
        heartbeat_of(Keys(), "evil", queues={"CPU": ["victim{u}"]}, time=1e300)
    ),
]


@pytest.mark.parametrize("forged", FORGED_HEARTBEATS)
def test_a_forged_heartbeat_is_ignored(
    client: Client, redis_server: RedisServer, worker: Worker, forged: str
) -> None:
    """Whoever may write Redis may write a heartbeat: ``check`` said "Redis unreachable" for
    every healthy worker, ``status`` crashed, a client's wait raised JSONDecodeError and left its
    job queued, and on a cluster clients sent jobs to whatever key one named as a queue."""
    keys = client.keyspace
    client.zadd(keys.workers, {"evil": 1e12})
    client.set(keys.worker("evil"), forged)
    url = redis_server.url
    wait_until(lambda: invoke(url, "check")[0] == 0)
    code, out = invoke(url, "status")
    assert code == 0 and f"worker {worker.name}" in out and "evil" not in out
    assert [s["name"] for s in health.live_workers(client, keys)] == [worker.name]
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.array([1, 2], dtype=np.float32))
    client.modelexecute("m", ["a", "a"], ["c"])
    assert client.tensorget("c").tolist() == [2.0, 4.0]
    client.modelstore("g", "STUB", "GPU:7", stub_blob("add"))
    with pytest.raises(NoLiveWorker):
        client.modelexecute("g", ["a", "a"], ["c"])
    assert client.xlen(keys.queue("GPU:7")) == 0, "its job taken back"


def test_check_fails_when_redis_is_down() -> None:
    code, out = invoke("redis://127.0.0.1:1/0", "check")
    assert code == 1 and "Redis unreachable" in out


def test_check_of_a_device_no_worker_takes_is_a_usage_error(redis_server: RedisServer) -> None:
    """``check --device TPU`` said "unhealthy: no live worker serves TPU", as if one could."""
    code, out = invoke(redis_server.url, "check", "--device", "TPU")
    assert code == 2 and "invalid device 'TPU'" in out


def test_config_reads_and_sets_shared_settings(client: Client, redis_server: RedisServer) -> None:
    assert invoke(redis_server.url, "config", "MODEL_CHUNK_SIZE")[1].strip() == "535822336"
    assert invoke(redis_server.url, "config", "MODEL_CHUNK_SIZE", "1024")[1].strip() == "OK"
    assert client.config("MODEL_CHUNK_SIZE") == 1024
    code, out = invoke(redis_server.url, "config", "MODEL_CHUNK_SIZE", "0")
    assert code == 1 and "MODEL_CHUNK_SIZE: invalid chunk size" in out


def test_worker_command_reads_env_and_stored_config(
    client: Client, redis_server: RedisServer
) -> None:
    """`aiworker worker` takes AIWORKER_* variables, applies AI.CONFIG values, stops on SIGTERM."""
    client.config("THREADS_PER_QUEUE", 3)
    env = worker_env(AIWORKER_REDIS_URL=redis_server.url, AIWORKER_DEVICES="CPU GPU:7")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiworker", "worker"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: client.zcard(client.keyspace.workers) == 1, timeout=60)
        (name,) = client.zrange(client.keyspace.workers, 0, -1)
        status = json.loads(client.get(client.keyspace.worker(name.decode())))  # type: ignore[arg-type]
        assert status["devices"] == ["CPU", "GPU:7"]
        assert status["threads_per_queue"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert client.zcard(client.keyspace.workers) == 0, "a stopped worker deregisters"


@pytest.mark.slow
def test_up_starts_redis_and_a_worker() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiworker", "up", "--gateway-port", "0"],
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("aiworker up: redis://127.0.0.1:")
        url = line.split()[2]
        client = Client.from_url(url, reply_timeout=30)
        wait_until(lambda: client.zcard(client.keyspace.workers) == 1, timeout=60)
        client.modelstore("m", "STUB", "CPU", stub_blob("mul"))
        client.tensorset("a", [2, 3], dtype="FLOAT")
        client.modelexecute("m", ["a", "a"], ["b"])
        assert client.tensorget("b").tolist() == [4.0, 9.0]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        if proc.stdout:
            proc.stdout.close()
    assert os.environ.get("AIWORKER_REDIS_URL") != url
