"""``aiworker exec "AI.…"``: RedisAI syntax through the client, replies printed like redis-cli."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from builders import onnx_mul
from click.testing import CliRunner
from conftest import ROOT, worker_env

from aiworker import Client, Worker
from aiworker.cli import main
from aiworker.cli.resp_format import ErrorReply, Status, format_reply
from aiworker.embedded import cli_program


def redis_cli(port: int, *args: str) -> str:
    cli = cli_program()
    if cli is None:
        pytest.skip("redis-cli not installed")
    done = subprocess.run(
        [cli, "-p", str(port), "--no-raw", *args], capture_output=True, text=True, timeout=30
    )
    return done.stdout.rstrip("\n")


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        ("return redis.status_reply('OK')", Status("OK")),
        ("return 'a \"q\"\\n\\t\\1'", b'a "q"\n\t\x01'),
        ("return 42", 42),
        ("return nil", None),
        ("return {}", []),
        ("return redis.error_reply('ERR invalid data type')", ErrorReply("invalid data type")),
        (
            "return {'dtype', 'FLOAT', 'shape', {2, 3}, 'values', {'1', {}, {7, {'x'}}}}",
            [b"dtype", b"FLOAT", b"shape", [2, 3], b"values", [b"1", [], [7, [b"x"]]]],
        ),
        (
            "local t = {} for i = 1, 12 do t[i] = {i, 'v'} end return t",
            [[i, b"v"] for i in range(1, 13)],
        ),
    ],
    ids=["status", "bulk", "int", "nil", "empty", "error", "nested", "wide"],
)
def test_format_reply_matches_redis_cli(
    client: Client, redis_server: Any, script: str, reply: Any
) -> None:
    assert format_reply(reply) == redis_cli(redis_server.port, "EVAL", script, "0")


@pytest.fixture
def run(client: Client, redis_server: Any) -> Any:
    runner = CliRunner()

    def invoke(*command: str, code: int = 0) -> str:
        result = runner.invoke(main, ["exec", "--redis-url", redis_server.url, *command])
        assert result.exit_code == code, result.output
        return result.output.rstrip("\n")

    return invoke


def test_tensors(run: Any) -> None:
    assert run("AI.TENSORSET a FLOAT 2 VALUES 2 3") == "OK"
    assert run("AI.TENSORGET a VALUES") == '1) "2"\n2) "3"'
    assert (
        run("AI.TENSORGET", "a", "META") == '1) "dtype"\n2) "FLOAT"\n3) "shape"\n4) 1) (integer) 2'
    )
    assert run("AI.TENSORGET a BLOB") == '"\\x00\\x00\\x00@\\x00\\x00@@"'
    assert run("AI.TENSORSET i INT8 2 2 VALUES 1 2 3 4") == "OK"
    assert run("AI.TENSORGET i META VALUES") == "\n".join(
        [
            '1) "dtype"',
            '2) "INT8"',
            '3) "shape"',
            "4) 1) (integer) 2",
            "   2) (integer) 2",
            '5) "values"',
            "6) 1) (integer) 1",
            "   2) (integer) 2",
            "   3) (integer) 3",
            "   4) (integer) 4",
        ]
    )
    assert run("AI.TENSORSET f FLOAT 1 VALUES 0.1") == "OK"
    assert run("AI.TENSORGET f VALUES") == '1) "0.10000000149011612"'


def test_errors_print_like_redis_cli(run: Any, client: Client) -> None:
    assert run("AI.TENSORSET a BAD 1", code=1) == "(error) ERR invalid data type"
    assert (
        run("AI.TENSORGET nope", code=1)
        == "(error) ERR tensor key is empty or in a different shard"
    )
    client.set("s", "x")
    assert run("AI.TENSORGET s", code=1) == (
        "(error) WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    assert run("AI.FOO", code=1) == "(error) ERR unknown command 'AI.FOO'"
    # the key before the arguments after it, as RedisAI read them
    assert run("AI.TENSORSET s INT32 2 x", code=1) == (
        "(error) WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    assert run("AI.TENSORGET nope x", code=1) == (
        "(error) ERR tensor key is empty or in a different shard"
    )


def test_models_info_config_and_execution(run: Any, worker: Worker) -> None:
    assert run("""AI.MODELSTORE m STUB CPU TAG v1 BLOB '{"op": "add"}'""") == "OK"
    meta = run("AI.MODELGET m META").splitlines()
    assert meta[:6] == [
        ' 1) "backend"',
        ' 2) "STUB"',
        ' 3) "device"',
        ' 4) "CPU"',
        ' 5) "tag"',
        ' 6) "v1"',
    ]
    assert meta[-2:] == ['15) "minbatchtimeout"', "16) (integer) 0"]
    assert run("AI.MODELGET m BLOB") == '"{\\"op\\": \\"add\\"}"'
    assert run("AI._MODELSCAN") == '1) 1) "m"\n   2) "v1"'
    assert run("AI.TENSORSET a FLOAT 2 VALUES 2 3") == "OK"
    assert run("AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 b") == "OK"
    assert run("AI.TENSORGET b VALUES") == '1) "4"\n2) "6"'
    info = run("AI.INFO m").splitlines()
    assert info[:4] == [' 1) "key"', ' 2) "m"', ' 3) "type"', ' 4) "MODEL"']
    assert info[-4:] == ['15) "calls"', "16) (integer) 1", '17) "errors"', "18) (integer) 0"]
    assert run("AI.INFO m RESETSTAT") == "OK"
    assert run("AI.CONFIG GET MODEL_CHUNK_SIZE") == "(integer) 535822336"
    assert run("AI.CONFIG MODEL_CHUNK_SIZE 1024") == "OK"
    assert run("AI.CONFIG GET MODEL_CHUNK_SIZE") == "(integer) 1024"
    assert run("AI.CONFIG GET BACKENDSPATH") == "(nil)"
    assert run("AI.CONFIG LOADBACKEND TORCH libtorch.so") == "OK"
    assert run("AI.MODELRUN m INPUTS a b OUTPUTS c") == "OK"
    assert run("AI.MODELDEL m") == "OK"
    assert run("AI.MODELGET m", code=1) == "(error) ERR model key is empty"


def test_dags(run: Any, worker: Worker) -> None:
    assert run("""AI.MODELSTORE m STUB CPU BLOB '{"op": "add"}'""") == "OK"
    assert run("""AI.MODELSTORE f STUB CPU BLOB '{"op": "fail", "message": "boom"}'""") == "OK"
    assert run("AI.TENSORSET a FLOAT 2 VALUES 2 3") == "OK"
    out = run(
        "AI.DAGEXECUTE LOAD 1 a PERSIST 1 c |> AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 c "
        "|> AI.TENSORGET c VALUES |> AI.TENSORGET c META"
    )
    assert out == "\n".join(
        [
            "1) OK",
            '2) 1) "4"',
            '   2) "6"',
            '3) 1) "dtype"',
            '   2) "FLOAT"',
            '   3) "shape"',
            "   4) 1) (integer) 2",
        ]
    )
    assert run("AI.TENSORGET c VALUES") == '1) "4"\n2) "6"'
    failed = run(
        "AI.DAGEXECUTE_RO LOAD 1 a |> AI.MODELEXECUTE f INPUTS 1 a OUTPUTS 1 x |> AI.TENSORGET x"
    )
    assert failed == "1) (error) ERR boom\n2) NA"
    assert run("AI.DAGRUN |> AI.TENSORSET t INT32 2 VALUES 1 2 |> AI.TENSORGET t VALUES") == (
        "1) OK\n2) 1) (integer) 1\n   2) (integer) 2"
    )
    assert run("AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET zz", code=1) == (
        "(error) ERR INPUT key cannot be found in DAG"
    )


def test_exec_from_the_installed_entry_point(client: Client, redis_server: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aiworker", "exec", "--redis-url", redis_server.url,
         "AI.TENSORSET z UINT8 2 VALUES 7 8"],
        capture_output=True, text=True, env=worker_env(), cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "OK"), done.stderr
    assert client.tensorget("z").tolist() == [7, 8]


def test_a_frameworks_message_is_printed_without_an_error_code(
    run: Any, client: Client, worker: Worker
) -> None:
    """RedisAI sent onnxruntime's messages bare, and redis-cli printed them so."""
    client.modelstore("m", "ONNX", "CPU", onnx_mul())
    assert run("AI.TENSORSET d DOUBLE 1 VALUES 1") == "OK"
    assert run("AI.MODELEXECUTE m INPUTS 2 d d OUTPUTS 1 c", code=1) == (
        "(error) Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))"
    )
    assert run("AI.MODELEXECUTE m INPUTS 1 d OUTPUTS 1 c", code=1) == (
        "(error) Number of keys given as INPUTS here does not match model definition"
    )
    assert run("AI.MODELEXECUTE nope INPUTS 1 d OUTPUTS 1 c", code=1) == (
        "(error) ERR model key is empty"
    )
