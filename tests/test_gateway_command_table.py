"""RedisAI's commands in the command table the gateway's clients see (COMMAND and its
subcommands), so cluster clients that look a command's keys up there send AI.* commands: redis-py's
``RedisCluster`` in RESP2 and RESP3 against ``--emulate-cluster``."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from conftest import stub_blob
from redis.cluster import RedisCluster
from test_gateway import connect, raw_socket, read_replies, running_gateway

from aiworker import Client, Settings, Worker
from aiworker.gateway.command_table import AI_COMMANDS, getkeys, with_ai_commands
from aiworker.gateway.resp import encode
from aiworker.parser import parse


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_cluster_client(
    client: Client, settings: Settings, worker: Worker, protocol: int
) -> None:
    """It refused every AI.* command ("AI.TENSORSET command doesn't exist in Redis commands");
    jobs and DAGs have movable keys, found with COMMAND GETKEYS."""
    with running_gateway(settings, emulate_cluster=True) as gw:
        host, port = gw.address()
        rc = RedisCluster(host=host, port=port, protocol=protocol)
        try:
            values = [1.0, 2.0] if protocol == 3 else [b"1", b"2"]
            assert rc.execute_command("AI.TENSORSET", "{a}t", "FLOAT", 2, "VALUES", 1, 2) == b"OK"
            assert rc.execute_command("AI.TENSORGET", "{a}t", "VALUES") == values
            stored = rc.execute_command("AI.MODELSTORE", "{a}m", "STUB", "CPU", "BLOB",
                                        stub_blob("add"))  # fmt: skip
            assert stored == b"OK"
            job = ("AI.MODELEXECUTE", "{a}m", "INPUTS", 2, "{a}t", "{a}t", "OUTPUTS", 1, "{b}o")
            assert rc.execute_command(*job) == b"OK"  # the model and its inputs in any slot
            assert client.tensorget("{b}o").tolist() == [2, 4]
            dag = ("AI.DAGEXECUTE", "LOAD", 1, "{a}t", "|>", "AI.TENSORGET", "{a}t", "META")
            assert rc.execute_command(*dag) == [[b"dtype", b"FLOAT", b"shape", [2]]]
        finally:
            rc.close()


def test_command_table_replies(client: Client, settings: Settings, redis_server: Any) -> None:
    direct = redis.Redis(port=redis_server.port, protocol=2)
    with running_gateway(settings) as gw:
        con = connect(gw)
        assert con.command_count() == direct.command_count() + len(AI_COMMANDS)
        assert set(con.command_list()) == {*direct.command_list(), *AI_COMMANDS}
        keys = con.command_getkeys("AI.MODELEXECUTE", "m", "INPUTS", 1, "a", "OUTPUTS", 1, "b")
        assert keys == ["b"]  # redis-py decodes them
        assert con.command_getkeys("AI.TENSORSET", "t", "FLOAT", 1) == ["t"]
        with pytest.raises(redis.ResponseError, match="Invalid arguments specified"):
            con.command_getkeys("AI.MODELEXECUTE", "m")
        table = con.command()
        assert table["ai.modelexecute"]["flags"] == ["write", "denyoom", "movablekeys", "module"]
        assert table["get"] == direct.command()["get"]  # Redis' own entries as they were
        sock = raw_socket(gw)  # COMMAND INFO: RedisAI's entry where Redis knew none
        sock.sendall(b"COMMAND INFO AI.TENSORGET NOPE GET\r\nHELLO 3\r\nCOMMAND INFO AI.INFO\r\n")
        info = read_replies(sock, 3)
        assert info.startswith(b"*3\r\n" + encode(_entry(b"ai.tensorget")) + b"$-1\r\n*")
        assert info.endswith(b"*1\r\n" + encode(_entry(b"ai.info"), resp3=True))


def _entry(name: bytes) -> list[Any]:
    flags, first, last, step = AI_COMMANDS[name]
    return [name, -1, [*flags, b"module"], first, last, step, [b"@module"], [], [], []]


def test_other_replies_pass_unchanged() -> None:
    for args, data in [
        ([b"COMMAND", b"DOCS", b"GET"], b"*0\r\n"),
        ([b"COMMAND", b"LIST", b"FILTERBY", b"MODULE", b"x"], b"*0\r\n"),
        ([b"COMMAND"], b"-NOPERM this user has no permissions\r\n"),
    ]:
        assert with_ai_commands(args, data, resp3=False) == data


def test_getkeys_names_what_a_cluster_must_keep_together() -> None:
    assert getkeys(parse("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 2 b c")) == ["b", "c"]
    assert getkeys(parse("AI.SCRIPTEXECUTE s f KEYS 1 k INPUTS 1 a OUTPUTS 1 o")) == ["o"]
    assert getkeys(parse("AI.DAGEXECUTE PERSIST 1 p |> AI.TENSORSET p FLOAT 1")) == ["p"]
    assert getkeys(parse("AI.DAGEXECUTE_RO ROUTING r |> AI.TENSORSET x FLOAT 1")) == ["r"]
    assert getkeys(parse("AI.DAGEXECUTE_RO LOAD 1 a |> AI.TENSORGET a")) == ["a"]
    assert getkeys(parse("AI.TENSORGET t")) == ["t"]
    assert getkeys(parse("AI.CONFIG GET MODEL_CHUNK_SIZE")) == []
