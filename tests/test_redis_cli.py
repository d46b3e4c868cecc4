"""The redis-cli path of the contract: plain HSET/XADD/BLPOP, no aiworker code on that side."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import stub_blob

from aiworker import Client, Worker
from aiworker.embedded import RedisServer, cli_program

REDIS_CLI = cli_program()
pytestmark = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")


def cli(server: RedisServer, *args: str, timeout: float = 20) -> str:
    """Run one redis-cli command (argv form, so no shell quoting) and return its raw output."""
    assert REDIS_CLI is not None
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(server.port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    assert done.stderr == ""
    return done.stdout


def blpop_reply(server: RedisServer, key: str) -> dict[str, object]:
    lines = cli(server, "BLPOP", key, "10").splitlines()
    assert lines[0] == key, lines
    return json.loads(lines[1])  # type: ignore[no-any-return]


def test_redis_cli_job_end_to_end(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    assert cli(redis_server, "HSET", "a", "kind", "tensor", "dtype", "FLOAT", "shape", "2",
               "values", "2 3").strip() == "4"  # fmt: skip
    cli(redis_server, "HSET", "b", "kind", "tensor", "dtype", "FLOAT", "shape", "2",
        "values", "10 20")  # fmt: skip
    entry_id = cli(redis_server, "XADD", "aiworker:queue:CPU", "*",
                   "cmd", "AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c", "reply", "r1").strip()  # fmt: skip
    reply = blpop_reply(redis_server, "r1")
    assert reply["status"] == "ok"
    assert reply["id"] == entry_id
    out = client.tensorget("c")
    assert out.dtype == np.float32 and out.tolist() == [12.0, 23.0]
    assert cli(redis_server, "HGET", "c", "dtype").strip() == "FLOAT"
    assert cli(redis_server, "HGET", "c", "shape").strip() == "2"
    assert cli(redis_server, "XLEN", "aiworker:queue:CPU").strip() == "0"


def test_redis_cli_error_reply_is_readable(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    cli(redis_server, "HSET", "a", "kind", "tensor", "dtype", "INT32", "shape", "2,2",
        "values", "1 2 3 4")  # fmt: skip
    assert client.tensorget("a").tolist() == [[1, 2], [3, 4]]
    cli(redis_server, "XADD", "aiworker:queue:CPU", "*",
        "cmd", "AI.MODELEXECUTE nope INPUTS 1 a OUTPUTS 1 c", "reply", "r2")  # fmt: skip
    reply = blpop_reply(redis_server, "r2")
    assert reply["status"] == "error"
    assert reply["error"] == "model key is empty"
    assert not client.exists("c")


def test_redis_cli_quoted_command_with_timeout(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    client.modelstore("my model", "STUB", "CPU", stub_blob("mul"))
    client.tensorset("x", np.array([3], dtype=np.int64))
    cli(redis_server, "XADD", "aiworker:queue:CPU", "*",
        "cmd", "AI.MODELEXECUTE 'my model' INPUTS 2 x x OUTPUTS 1 \"y y\" TIMEOUT 10000",
        "reply", "r3")  # fmt: skip
    assert blpop_reply(redis_server, "r3")["status"] == "ok"
    assert client.tensorget("y y").tolist() == [9]
