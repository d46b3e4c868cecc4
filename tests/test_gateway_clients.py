"""The gateway driven by clients other than redis-py: redis-cli (typed commands and --pipe), Node
programs on ioredis and on node-redis in RESP3 (``tests/gateway_node``, installed by ``npm ci``
there), SmartRedis and redisai-py in environments of their own, a Go program on redigo
(``tests/gateway_go``; ``make test-clients`` builds and installs them all). Also ``aiworker
gateway`` itself as a process, two of them sharing a port."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from builders import tf_mul_graph
from conftest import ROOT, stub_blob, torch_blob, wait_until, worker_env
from redis.cluster import RedisCluster
from test_gateway import LIMITED_RULE, raw_socket, read_replies, refused_by_redis, running_gateway

from aiworker import Client, Settings, Worker
from aiworker.embedded import cli_program
from aiworker.gateway import Gateway
from aiworker.gateway.resp import command
from aiworker.protocol.keys import key_slot

NODE_CLIENT = ROOT / "tests" / "gateway_node"
SMARTREDIS = ROOT / "tests" / "gateway_smartredis"
REDISAI_PY = ROOT / "tests" / "gateway_redisai_py"
GO_CLIENT = ROOT / "tests" / "gateway_go" / "client"


@pytest.fixture
def gateway(client: Client, settings: Settings) -> Iterator[Gateway]:
    with running_gateway(settings) as gw:
        yield gw


def redis_cli(gateway: Gateway, *args: str, stdin: bytes | None = None, code: int = 0) -> str:
    cli = cli_program()
    assert cli is not None, "redis-cli is installed with redis-server (see .ci/run)"
    host, port = gateway.address()
    done = subprocess.run(
        [cli, "-h", host, "-p", str(port), *args], input=stdin, capture_output=True, timeout=60
    )
    assert done.returncode == code, done.stderr
    return done.stdout.decode()


def test_redis_cli(gateway: Gateway, worker: Worker, client: Client) -> None:
    assert redis_cli(
        gateway, "--no-raw", "AI.TENSORSET", "a", "FLOAT", "2", "VALUES", "2", "3"
    ) == ("OK\n")
    assert redis_cli(gateway, "--no-raw", "AI.TENSORGET", "a", "META", "VALUES") == (
        '1) "dtype"\n2) "FLOAT"\n3) "shape"\n4) 1) (integer) 2\n5) "values"\n6) 1) "2"\n   2) "3"\n'
    )
    assert redis_cli(gateway, "--no-raw", "AI.TENSORGET", "nope") == (
        "(error) ERR tensor key is empty or in a different shard\n"
    )
    stored = redis_cli(gateway, "AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", '{"op": "add"}')
    assert stored == "OK\n"
    assert redis_cli(gateway, "AI.MODELEXECUTE", "m", "INPUTS", "2", "a", "a", "OUTPUTS", "1",
                     "b") == "OK\n"  # fmt: skip
    assert redis_cli(gateway, "--no-raw", "AI.TENSORGET", "b", "VALUES") == '1) "4"\n2) "6"\n'
    # redis-cli -3 speaks RESP3 (HELLO 3): RedisAI's float values are doubles then
    assert redis_cli(gateway, "-3", "--no-raw", "AI.TENSORGET", "a", "VALUES") == (
        "1) (double) 2\n2) (double) 3\n"
    )
    assert redis_cli(gateway, "-3", "--no-raw", "HGETALL", "a").startswith("1# ")  # a map
    assert redis_cli(gateway, "--no-raw", "AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") == (
        "(integer) 535822336\n"
    )
    assert client.tensorget("b").tolist() == [4, 6]


def test_redis_cli_pipe_mode(gateway: Gateway, client: Client) -> None:
    """``redis-cli --pipe`` (mass insertion): thousands of commands, AI.* ones among them."""
    lines = []
    for n in range(3000):
        lines.append(f"AI.TENSORSET t{n} INT32 2 VALUES {n} {n + 1}")
        lines.append(f"SET k{n} {n}")
    lines.append("AI.TENSORGET nope")
    out = redis_cli(gateway, "--pipe", stdin=("\r\n".join(lines) + "\r\n").encode(), code=1)
    assert "errors: 1, replies: 6001" in out
    assert client.tensorget("t2999").tolist() == [2999, 3000]
    assert client.get("k2999") == b"2999"


def run_node(program: str, module: str, port: int, done_line: bytes) -> None:
    """Run a Node program of ``tests/gateway_node`` against the gateway at ``port``; it prints
    ``done_line`` when every check held."""
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (see .ci/run)"
    assert (NODE_CLIENT / "node_modules" / module).is_dir(), (
        f"run `npm ci --prefix {NODE_CLIENT}` first (`make test-clients` does)"
    )
    done = subprocess.run(
        [node, str(NODE_CLIENT / program), str(port)], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    assert done_line in done.stdout


def test_node_ioredis_client(gateway: Gateway, worker: Worker) -> None:
    run_node("client.js", "ioredis", gateway.address()[1], b"all RedisAI commands ok")


def test_node_ioredis_cluster_client(client: Client, settings: Settings, worker: Worker) -> None:
    """ioredis' cluster client against ``--emulate-cluster``: one node owning every slot."""
    with running_gateway(settings, emulate_cluster=True) as gw:
        run_node("cluster.js", "ioredis", gw.address()[1], b"all cluster commands ok")


def test_node_redis_resp3_client(gateway: Gateway, worker: Worker) -> None:
    """node-redis 5 in RESP3 (HELLO 3) with its client-side cache on: Redis' invalidation pushes
    reach it through the gateway between the replies to AI.* commands."""
    run_node("client_resp3.js", "redis", gateway.address()[1], b"all RESP3 commands ok")


def test_go_redigo_client(gateway: Gateway, worker: Worker, tmp_path: Path) -> None:
    """A Go program on redigo sending what redisai-go sends (a TF graph, TorchScript with Redis
    calls, DAGs, AI.INFO, a pipeline of Send calls; MULTI/EXEC, BLPOP and SUBSCRIBE too) and
    reading replies as redisai-go reads them: an AI.INFO key as a status or an INT8 value as a
    bulk string would crash it."""
    assert GO_CLIENT.is_file(), "run `make test-clients` first (it builds tests/gateway_go)"
    graph = tmp_path / "graph.pb"
    graph.write_bytes(tf_mul_graph())
    host, port = gateway.address()
    done = subprocess.run(
        [str(GO_CLIENT), f"{host}:{port}", str(graph)], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    assert b"all RedisAI commands ok" in done.stdout


@pytest.mark.parametrize("mode", ["cluster", "standalone", "unix"])
def test_smartredis_client(
    client: Client, settings: Settings, worker: Worker, tmp_path: Path, mode: str
) -> None:
    """SmartRedis (SmartSim's client; C++ underneath) in both of its modes: cluster mode (its
    default) against ``--emulate-cluster``, and standalone, over TCP and over the gateway's
    Unix socket."""
    python = SMARTREDIS / ".venv" / "bin" / "python"
    assert python.exists(), f"run `make test-clients` first (it installs {SMARTREDIS}/.venv)"
    model = tmp_path / "add.pt"
    model.write_bytes(torch_blob("add"))
    # SmartRedis sends a command again when its reply takes over SR_SOCKET_TIMEOUT (250 ms by
    # default): on a loaded test machine a list append would then be made twice
    env = worker_env(SR_LOG_LEVEL="QUIET", SR_SOCKET_TIMEOUT="30000")
    path = tmp_path / "gateway.sock"
    unix = str(path) if mode == "unix" else ""
    with running_gateway(settings, emulate_cluster=mode == "cluster", unix_socket=unix) as gw:
        host, port = gw.address()
        address = f"unix://{path}" if unix else f"{host}:{port}"
        sr_mode = "cluster" if mode == "cluster" else "standalone"
        done = subprocess.run(
            [str(python), str(SMARTREDIS / "client.py"), address, sr_mode, str(model)],
            env=env, cwd=tmp_path, capture_output=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    assert b"all RedisAI commands ok" in done.stdout


def test_redisai_py_client(
    client: Client, settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    """redisai-py 1.3, RedisAI's own Python client (on redis-py 4), with only its address
    changed: tensors, models and scripts (old and new commands), DAGs, a pipeline mixing AI.* and
    plain commands, statistics, configuration and chunked model blobs."""
    python = REDISAI_PY / ".venv" / "bin" / "python"
    assert python.exists(), f"run `make test-clients` first (it installs {REDISAI_PY}/.venv)"
    model = tmp_path / "add.pt"
    model.write_bytes(torch_blob("add"))
    with running_gateway(settings) as gw:
        host, port = gw.address()
        done = subprocess.run(
            [str(python), str(REDISAI_PY / "client.py"), host, str(port), str(model)],
            env=worker_env(), cwd=tmp_path, capture_output=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    assert b"all redisai-py calls ok" in done.stdout


def _spawn_gateway(url: str, port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiworker", "gateway", "--redis-url", url,
         "--listen", f"127.0.0.1:{port}", *args],
        env=worker_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _connect_when_up(port: int, proc: subprocess.Popen[bytes]) -> redis.Redis:
    deadline = time.monotonic() + 60
    while True:
        con = redis.Redis(port=port, protocol=2, socket_timeout=10)
        try:
            con.ping()
            return con
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_gateway_processes_share_a_port(
    client: Client, redis_server: object, tmp_path: Path
) -> None:
    port = _free_port()
    url = redis_server.url  # type: ignore[attr-defined]
    procs = [_spawn_gateway(url, port, "--reuse-port") for _ in range(2)]
    try:
        con = _connect_when_up(port, procs[0])
        assert con.execute_command("AI.TENSORSET", "t", "INT8", 1, "VALUES", 1) == b"OK"
        for n in range(20):  # connections land on either process; each answers the same
            assert redis.Redis(port=port, protocol=2).execute_command(
                "AI.TENSORGET", "t", "VALUES"
            ) == [1], n
        assert all(proc.poll() is None for proc in procs)  # both still listening
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    assert client.exists("t") == 1


def test_the_gateway_process_loads_no_framework(
    client: Client, worker: Worker, redis_server: object
) -> None:
    """Models and scripts stored through the gateway are checked by a live worker (MODELVERIFY,
    SCRIPTVERIFY) with RedisAI's errors at store time; the gateway never maps libtorch (importing
    it froze every connection for ~0.2 s and grew the process by ~200 MB)."""
    pytest.importorskip("torch")
    port = _free_port()
    proc = _spawn_gateway(redis_server.url, port)  # type: ignore[attr-defined]
    try:
        con = _connect_when_up(port, proc)
        source = "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n" + (
            "    return tensors[0] * 2\n"
        )
        assert con.execute_command("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "bar",
                                   "SOURCE", source) == b"OK"  # fmt: skip
        for entry_point, bad_source, message in [
            ("nope", source, "Function nope does not exist in the given script."),
            ("bar", "def bar(a: Tensor):\n    return a\n",
             "Wrong number of inputs in function bar. Expected 3 but was 1"),
            ("bar", "def bar(:\n", "expected"),
        ]:  # fmt: skip
            with pytest.raises(redis.ResponseError) as error:
                con.execute_command("AI.SCRIPTSTORE", "x", "CPU", "ENTRY_POINTS", 1, entry_point,
                                    "SOURCE", bad_source)  # fmt: skip
            assert message in str(error.value)
        assert client.exists("x") == 0
        con.execute_command("AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 1, 2)
        assert con.execute_command("AI.SCRIPTEXECUTE", "s", "bar", "INPUTS", 1, "a",
                                   "OUTPUTS", 1, "b") == b"OK"  # fmt: skip
        assert client.tensorget("b").tolist() == [2, 4]
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps
    finally:
        proc.terminate()
        proc.wait(30)


def test_event_loop_option() -> None:
    """``--loop``: uvloop when installed (auto), asyncio on request; uvloop asked for and missing
    is a usage error, not a silent fallback."""
    import asyncio

    import click

    from aiworker.cli.gateway import _runner

    assert _runner("asyncio") is asyncio.run
    try:
        import uvloop
    except ImportError:
        assert _runner("auto") is asyncio.run
        with pytest.raises(click.UsageError, match="uvloop is not installed"):
            _runner("uvloop")
    else:
        assert _runner("auto") is uvloop.run
        assert _runner("uvloop") is uvloop.run


def test_routes_by_slot_on_a_real_cluster(cluster_client: Client, cluster_worker: Worker,
                                          cluster_settings: Settings) -> None:  # fmt: skip
    """Before a 3-master cluster the gateway is one node to its client: keys in every slot,
    MOVED followed for it, AI.* commands run by the cluster client, CLUSTER SLOTS its own."""
    with running_gateway(cluster_settings) as gw:
        con = redis.Redis(*gw.address(), protocol=2, socket_timeout=30)
        keys = [f"key{n}" for n in range(60)]
        assert len({key_slot(k) * 3 // 16384 for k in keys}) == 3  # all three masters
        pipe = con.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, key)
            pipe.get(key)
        assert pipe.execute() == [x for k in keys for x in (True, k.encode())]
        for key in keys:
            assert cluster_client.get(key) == key.encode()
        assert con.execute_command("CLUSTER", "SLOTS")[0][:2] == [0, 16383]
        assert con.execute_command("AI.TENSORSET", "{a}x", "FLOAT", 2, "VALUES", 1, 2) == b"OK"
        assert (
            con.execute_command("AI.MODELSTORE", "{a}m", "STUB", "CPU", "BLOB", b'{"op": "add"}')
            == b"OK"
        )
        assert (
            con.execute_command(
                "AI.MODELEXECUTE", "{a}m", "INPUTS", 2, "{a}x", "{a}x", "OUTPUTS", 1, "{b}y"
            )
            == b"OK"
        )
        assert con.execute_command("AI.TENSORGET", "{b}y", "VALUES") == [b"2", b"4"]
        assert cluster_client.tensorget("{b}y").tolist() == [2, 4]
        assert con.execute_command("AI.INFO")[:2] == [b"Version", b"1.2.7"]  # workers' heartbeats
        with pytest.raises(redis.ResponseError, match=r"^model key is empty$"):  # read first
            con.execute_command("AI.MODELEXECUTE", "{a}none", "INPUTS", 1, "{a}x", "OUTPUTS", 1,
                                "{a}y", "stray")  # fmt: skip
        # a script is compiled by the cluster's worker before it is stored (SCRIPTVERIFY)
        source = "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n" + (
            "    return tensors[0] * 2\n"
        )
        assert con.execute_command("AI.SCRIPTSTORE", "{a}s", "CPU", "ENTRY_POINTS", 1, "bar",
                                   "SOURCE", source) == b"OK"  # fmt: skip
        with pytest.raises(redis.ResponseError, match="Function nope does not exist"):
            con.execute_command("AI.SCRIPTSTORE", "{a}s2", "CPU", "ENTRY_POINTS", 1, "nope",
                                "SOURCE", source)  # fmt: skip
        assert cluster_client.exists("{a}s2") == 0
        assert con.execute_command("AI.SCRIPTEXECUTE", "{a}s", "bar", "INPUTS", 1, "{a}x",
                                   "OUTPUTS", 1, "{a}z") == b"OK"  # fmt: skip
        assert cluster_client.tensorget("{a}z").tolist() == [2, 4]
        # a large blob, received in place, goes to the cluster client as it came
        big = np.arange(300_000, dtype=np.float32)
        assert con.execute_command("AI.TENSORSET", "{c}t", "FLOAT", big.size, "BLOB", big.tobytes())
        assert con.execute_command("AI.TENSORGET", "{c}t", "BLOB") == big.tobytes()
        assert np.array_equal(cluster_client.tensorget("{c}t"), big)
        # a transaction stays on its key's master, pipelined or typed a command at a time
        tx = con.pipeline(transaction=True)
        tx.set("key7", "a").append("key7", "b").get("key7")
        assert tx.execute() == [True, 2, b"ab"]
        for key in ("{key1}x", "{key2}x", "{key3}x", "{key4}x"):  # on every master
            assert con.execute_command("MULTI") == b"OK"
            assert con.execute_command("APPEND", key, "1") == b"QUEUED"
            assert con.execute_command("INCR", key) == b"QUEUED"
            assert con.execute_command("EXEC") == [1, 2]
        assert con.execute_command("MULTI") == b"OK"
        assert con.execute_command("EXEC") == []
        # AI.* commands run on the cluster client: inside MULTI they are refused
        assert con.execute_command("MULTI") == b"OK"
        assert con.execute_command("AI.TENSORGET", "{a}x", "META") == b"QUEUED"
        assert con.execute_command("GET", "{a}k") == b"QUEUED"
        done = con.execute_command("EXEC")
        assert isinstance(done[0], redis.ResponseError) and done[1] is None
        assert con.execute_command("EVAL", "return redis.call('GET', KEYS[1])", 1, "key9") == (
            b"key9"
        )


def _masters_but_default(gw: Gateway, redis_cluster: Any) -> list[int]:
    """The masters other than the one the gateway sends keyless commands to."""
    assert gw.slots is not None
    default = gw.slots.default()[1]
    return [port for port in redis_cluster.master_ports() if port != default]


def _key_on(redis_cluster: Any, port: int, prefix: str = "k") -> str:
    """A key on the master on ``port``."""
    return next(
        f"{prefix}{n}" for n in range(1000) if redis_cluster.master_of(f"{prefix}{n}") == port
    )


def test_keyspace_commands_cover_every_master(
    cluster_client: Client, cluster_settings: Settings, redis_cluster: Any
) -> None:
    """The gateway owns every slot to its client, which so cannot reach the other masters: DBSIZE,
    KEYS, SCAN, RANDOMKEY, FLUSHDB and FLUSHALL answer for every master (they saw, and flushed,
    one master's keys), each reply in its place among the commands pipelined around it."""
    keys = [f"key{n}" for n in range(60)]
    assert len({redis_cluster.master_of(key) for key in keys}) == 3
    nodes = [redis_cluster.node(port) for port in redis_cluster.master_ports()]
    with running_gateway(cluster_settings) as gw:
        con = redis.Redis(*gw.address(), protocol=2, socket_timeout=30)
        assert con.dbsize() == 0 and con.keys() == [] and con.randomkey() is None
        assert con.scan(0) == (1, []) and list(con.scan_iter()) == []  # the next master: 1
        for key in keys:
            con.set(key, key)
        con.hset("hash1", "f", "v")
        assert con.dbsize() == 61
        assert sorted(con.keys("key*")) == sorted(key.encode() for key in keys)
        seen: list[bytes] = []
        cursor, steps = 0, 0
        while cursor or not steps:  # master after master: the cursor ends at 0 after the last
            cursor, found = con.scan(cursor, match="key*", count=7)
            seen += found
            steps += 1
        assert sorted(seen) == sorted(key.encode() for key in keys) and steps >= 3
        assert list(con.scan_iter(_type="hash", count=100)) == [b"hash1"]
        assert con.randomkey() in {key.encode() for key in [*keys, "hash1"]}
        rc = RedisCluster(*gw.address())  # it asks every node it knows: the gateway
        assert rc.dbsize() == 61 and len(rc.keys()) == 61
        assert len(set(rc.scan_iter(count=5))) == 61
        rc.close()
        # in a transaction, keyless commands stay on its master
        tx = con.pipeline(transaction=True)
        tx.set("key0", "a").dbsize()
        assert tx.execute() == [True, redis_cluster.node(redis_cluster.master_of("key0")).dbsize()]
        # pipelined: each reply in its place, in order with the writes around it on each master
        sock = raw_socket(gw)
        pipeline = [[b"SET", b"late", b"1"], [b"DBSIZE"], [b"FLUSHDB"], [b"GET", b"key7"],
                    [b"DBSIZE"], [b"SET", b"key8", b"x"], [b"KEYS", b"*"], [b"RANDOMKEY"],
                    [b"FLUSHALL"], [b"RANDOMKEY"], [b"HELLO", b"3"], [b"RANDOMKEY"],
                    [b"DBSIZE"]]  # fmt: skip
        sock.sendall(b"".join(command(*args) for args in pipeline))
        replies = read_replies(sock, 13)
        sock.close()
        head = b"+OK\r\n:62\r\n+OK\r\n$-1\r\n:0\r\n+OK\r\n*1\r\n$4\r\nkey8\r\n$4\r\nkey8\r\n+OK\r\n"
        assert replies.startswith(head + b"$-1\r\n%") and replies.endswith(b"_\r\n:0\r\n")
        assert [node.dbsize() for node in nodes] == [0, 0, 0]
        for key in keys:
            con.set(key, key)
        assert con.flushall() is True
        assert [node.dbsize() for node in nodes] == [0, 0, 0]


def test_flushall_refused_by_one_master_is_its_error(
    cluster_client: Client, redis_cluster: Any
) -> None:
    """FLUSHALL answers OK once every master flushed, and a master's refusal (NOPERM) as that
    master sent it: it never says OK while keys are left."""
    masters = redis_cluster.master_ports()
    for port in masters:
        redis_cluster.node(port).acl_setuser("flusher", enabled=True, passwords=["+pw"],
                                             keys=["*"], commands=["+@all"])  # fmt: skip
    keys = [f"key{n}" for n in range(30)]
    url = redis_cluster.url.replace("redis://", "redis://flusher:pw@")
    try:
        with running_gateway(Settings(redis_url=url)) as gw:
            refusing = _masters_but_default(gw, redis_cluster)[0]
            redis_cluster.node(refusing).acl_setuser(
                "flusher", enabled=True, commands=["-flushall"]
            )
            con = redis.Redis(*gw.address(), protocol=2, socket_timeout=10)
            for key in keys:
                con.set(key, key)
            direct = socket.create_connection(("127.0.0.1", refusing), timeout=10)
            direct.sendall(command(b"AUTH", b"flusher", b"pw") + command(b"FLUSHALL"))
            refused = read_replies(direct, 2).removeprefix(b"+OK\r\n")
            direct.close()
            assert refused.startswith(b"-NOPERM ")
            sock = raw_socket(gw)
            sock.sendall(command(b"FLUSHALL") + command(b"DBSIZE"))
            left = sum(1 for key in keys if redis_cluster.master_of(key) == refusing)
            assert read_replies(sock, 2) == refused + b":%d\r\n" % left
            sock.close()
            assert con.flushdb() is True
            assert con.dbsize() == 0
    finally:
        for port in masters:
            redis_cluster.node(port).acl_deluser("flusher")


def test_scripts_and_functions_are_loaded_on_every_master(
    cluster_client: Client, cluster_settings: Settings, redis_cluster: Any
) -> None:
    """SCRIPT LOAD and FUNCTION LOAD went to one master: EVALSHA and FCALL on a key of another
    got NOSCRIPT or an unknown function. They load on every master now; SCRIPT EXISTS says 1 only
    for a script every master has, and the flushes and deletes reach every master."""
    masters = [redis_cluster.node(port) for port in redis_cluster.master_ports()]
    keys = [f"s{n}" for n in range(30)]
    assert len({redis_cluster.master_of(key) for key in keys}) == 3
    library = ("#!lua name=gwlib\nredis.register_function('getit', "
               "function(keys, args) return redis.call('GET', keys[1]) end)")  # fmt: skip
    try:
        with running_gateway(cluster_settings) as gw:
            con = redis.Redis(*gw.address(), protocol=2, socket_timeout=30)
            sha = con.script_load("return redis.call('GET', KEYS[1])")
            for key in keys:
                con.set(key, key)
                assert con.evalsha(sha, 1, key) == key.encode()
            one_only = masters[1].script_load("return 2")
            assert con.script_exists(sha, one_only, "0" * 40) == [True, False, False]
            incr = con.register_script("return redis.call('INCR', KEYS[1])")  # NOSCRIPT, LOAD
            assert [incr(keys=[f"{{{key}}}n"]) for key in keys] == [1] * len(keys)
            assert con.script_flush() is True
            assert [node.script_exists(sha, one_only) for node in masters] == [[False] * 2] * 3
            assert con.function_load(library) == b"gwlib"
            assert [con.fcall("getit", 1, key) for key in keys] == [key.encode() for key in keys]
            with pytest.raises(redis.ResponseError, match=r"^Library 'gwlib' already exists$"):
                con.function_load(library)
            assert con.function_load(library, replace=True) == b"gwlib"
            assert con.function_delete("gwlib") is True
            assert [node.function_list() for node in masters] == [[]] * 3
    finally:
        for node in masters:
            node.script_flush()
            node.function_flush()


def test_script_kill_and_wait_reach_the_masters_concerned(
    cluster_client: Client, cluster_settings: Settings, redis_cluster: Any
) -> None:
    """SCRIPT KILL went to one master, and a script busy on another was out of reach (NOTBUSY);
    WAIT went there too and counted replicas that had none of the client's writes. SCRIPT KILL
    goes to every master, WAIT to each the client wrote to (the least count)."""
    with running_gateway(cluster_settings) as gw:
        con = redis.Redis(*gw.address(), protocol=2, socket_timeout=30)
        busy_port = _masters_but_default(gw, redis_cluster)[0]
        busy = redis_cluster.node(busy_port)
        busy.config_set("busy-reply-threshold", 50)
        outcome: list[BaseException] = []

        def loop_forever() -> None:
            try:
                redis.Redis(port=busy_port).eval("while true do end", 0)
            except redis.ResponseError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=loop_forever)
        thread.start()
        try:
            wait_until(lambda: _is_busy(busy), timeout=10)
            assert con.script_kill() is True
            thread.join(10)
            assert "Script killed by user" in str(outcome[0])
            with pytest.raises(redis.ResponseError, match=r"^NOTBUSY No scripts in execution"):
                con.script_kill()
        finally:
            with contextlib.suppress(redis.ResponseError):  # a script the gateway left running
                busy.script_kill()
            thread.join(10)
            busy.config_set("busy-reply-threshold", 5000)
        # a replica stopped: the client's write on its master is not acknowledged
        written = _masters_but_default(gw, redis_cluster)[1]
        replica = _replica_of(redis_cluster, written)
        process = next(s.process for s in redis_cluster.servers if s.port == replica)
        wait_con = redis.Redis(*gw.address(), protocol=2, socket_timeout=30)
        process.send_signal(signal.SIGSTOP)
        try:
            wait_con.set(_key_on(redis_cluster, written, "w"), "1")
            assert wait_con.wait(1, 300) == 0
        finally:
            process.send_signal(signal.SIGCONT)
        assert wait_con.wait(1, 10_000) == 1
        for n in range(30):  # on every master now
            wait_con.set(f"w{n}", n)
        assert wait_con.wait(1, 10_000) == 1


def _replica_of(redis_cluster: Any, port: int) -> int:
    """The port of the replica of the master on ``port``, once it is in sync."""
    info: dict[str, Any] = {}

    def online() -> bool:
        info.update(redis_cluster.node(port).info("replication"))
        return info.get("slave0", {}).get("state") == "online"

    wait_until(online, timeout=30)
    return int(info["slave0"]["port"])


def _is_busy(node: redis.Redis) -> bool:
    try:
        node.ping()
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def test_a_transaction_moves_to_the_master_of_its_first_key(
    cluster_client: Client, cluster_settings: Settings, redis_cluster: Any
) -> None:
    """The client sees one node that owns every slot: a transaction whose first keyed command
    comes after keyless ones (PING) runs on that key's master, the keyless ones with it (it got
    MOVED, which the client cannot follow, and EXECABORT). A command for another master's slot
    in the same transaction is refused as on a cluster node (MOVED) and makes EXEC fail; the
    gateway does not follow it outside the transaction."""
    with running_gateway(cluster_settings) as gw:
        for n in range(12):
            key = f"moved{n}"
            sock = raw_socket(gw)
            sock.sendall(b"MULTI\r\nPING\r\nTIME\r\n" + command(b"SET", key.encode(), b"1")
                         + command(b"INCR", key.encode()) + b"EXEC\r\n")  # fmt: skip
            replies = read_replies(sock, 6)
            sock.close()
            assert replies.startswith(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n")
            assert replies.endswith(b"+OK\r\n:2\r\n"), replies
            assert cluster_client.get(key) == b"2"
        first = "moved0"
        other = next(f"other{n}" for n in range(100)
                     if redis_cluster.master_of(f"other{n}") != redis_cluster.master_of(first))  # fmt: skip
        sock = raw_socket(gw)
        sock.sendall(command(b"MULTI") + command(b"SET", first.encode(), b"x")
                     + command(b"SET", other.encode(), b"y") + command(b"EXEC"))  # fmt: skip
        replies = read_replies(sock, 4)
        assert b"-MOVED " in replies and replies.endswith(
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        )
        assert cluster_client.get(first) == b"2" and cluster_client.exists(other) == 0


def test_reset_signs_the_client_out_on_every_master(
    cluster_client: Client, redis_cluster: Any
) -> None:
    """RESET went to one master; the client's connections to the others stayed signed in as
    its user, which still read that user's keys there. Every connection is now as a new one:
    the gateway URL's user (here bob, who may not read alice's keys)."""
    users = {"alice": "~alice:*", "bob": "~bob:*"}
    nodes = [redis.Redis(port=port) for port in redis_cluster.ports]
    for node in nodes:
        for user, keys in users.items():
            node.acl_setuser(user, enabled=True, passwords=[f"+{user}pw"], keys=[keys],
                             commands=["+@all"])  # fmt: skip
    keys = [f"alice:{n}" for n in range(30)]
    assert len({redis_cluster.master_of(key) for key in keys}) == 3  # on every master
    for key in keys:
        cluster_client.set(key, "secret")
    url = redis_cluster.url.replace("redis://", "redis://bob:bobpw@")
    try:
        with running_gateway(Settings(redis_url=url)) as gw:
            con = redis.Redis(*gw.address(), protocol=2, socket_timeout=10)
            con.execute_command("AUTH", "alice", "alicepw")
            assert [con.get(key) for key in keys] == [b"secret"] * len(keys)
            assert con.execute_command("RESET") == "RESET"  # (redis-py decodes it)
            assert con.execute_command("ACL", "WHOAMI") == b"bob"
            for key in keys:
                with pytest.raises(redis.exceptions.NoPermissionError):
                    con.get(key)
            assert con.set("bob:x", "1") and con.get("bob:x") == b"1"
    finally:
        for node in nodes:
            node.acl_deluser(*users)


def test_refusals_on_a_real_cluster_are_answered_in_redis_own_words(
    redis_cluster: Any, cluster_client: Client, cluster_settings: Settings
) -> None:
    """As on one Redis (``test_refusals_are_answered_in_redis_own_words``): the cluster client's
    pipelines answered "Command # 3 (EVALSHA <sha> 2 ro:t...) of pipeline caused error: ..." for
    a 40 KB TENSORSET, "Command # 1 (HMGET secret:m kind ...) ..." for AI.INFO."""
    nodes = [redis_cluster.node(port) for port in redis_cluster.ports]
    for node in nodes:
        node.execute_command("ACL", "SETUSER", *LIMITED_RULE)
    try:
        with running_gateway(cluster_settings) as gw:
            con = redis.Redis(*gw.address(), protocol=2, socket_timeout=30)
            blob = stub_blob("add")
            assert con.execute_command("AI.MODELSTORE", "secret:m", "STUB", "CPU", "BLOB", blob)
            lim = redis.Redis(*gw.address(), username="lim", password="pw", protocol=2,
                              socket_timeout=30)  # fmt: skip
            denied = redis.Redis(port=redis_cluster.master_of("secret:m"), username="lim",
                                 password="pw")  # fmt: skip
            with pytest.raises(redis.exceptions.NoPermissionError) as direct:
                denied.hget("secret:m", "backend")
            for args in refused_by_redis():
                with pytest.raises(redis.exceptions.NoPermissionError) as info:
                    lim.execute_command(*args)
                assert str(info.value) == str(direct.value), args[:2]
            assert not cluster_client.exists("ro:t") and not cluster_client.exists("ro:m2")
            # a delete Redis refused (the model's slot) is no OK: it was, and the model stayed
            assert con.execute_command("AI.MODELSTORE", "ro:m", "STUB", "CPU", "BLOB", blob)
            with pytest.raises(redis.exceptions.NoPermissionError) as info:
                lim.execute_command("AI.MODELDEL", "ro:m")
            assert str(info.value) == str(direct.value)
            assert cluster_client.exists("ro:m") == 1
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "lim")


def test_resp3_on_a_real_cluster(
    cluster_client: Client, cluster_worker: Worker, cluster_settings: Settings
) -> None:
    """HELLO 3 reaches every master the client's commands go to, those opened later too; and
    redis-py's cluster client sends AI.* commands (it finds them in the gateway's COMMAND)."""
    with running_gateway(cluster_settings) as gw:
        con = redis.Redis(*gw.address(), protocol=3, socket_timeout=30)
        keys = [f"h{n}" for n in range(30)]
        assert len({key_slot(k) * 3 // 16384 for k in keys}) == 3  # all three masters
        for key in keys:
            con.hset(key, "f", key)
        pipe = con.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("HGETALL", key)  # a map only if that master speaks RESP3
        assert pipe.execute() == [{b"f": key.encode()} for key in keys]
        assert con.execute_command("AI.TENSORSET", "{a}x", "FLOAT", 2, "VALUES", 1, 2) == b"OK"
        assert con.execute_command("AI.TENSORGET", "{a}x", "VALUES") == [1.0, 2.0]
        assert con.execute_command("CLUSTER", "SHARDS")[0][b"slots"] == [0, 16383]
        rc = RedisCluster(*gw.address(), protocol=3)
        job = ("AI.MODELEXECUTE", "{a}m", "INPUTS", 2, "{a}x", "{a}x", "OUTPUTS", 1, "{b}y")
        assert rc.execute_command("AI.MODELSTORE", "{a}m", "STUB", "CPU", "BLOB", stub_blob("add"))
        assert rc.execute_command(*job) == b"OK"
        assert rc.execute_command("AI.TENSORGET", "{b}y", "VALUES") == [2.0, 4.0]
        rc.close()


@pytest.mark.slow
def test_up_starts_a_gateway() -> None:
    gateway_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiworker", "up", "--gateway-port", str(gateway_port)],
        env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("aiworker up: redis://127.0.0.1:")
        assert f"-p {gateway_port}" in proc.stdout.readline()
        con = None
        deadline = time.monotonic() + 60
        while con is None:
            try:
                con = redis.Redis(port=gateway_port, protocol=2)
                con.ping()
            except redis.ConnectionError:
                con = None
                assert time.monotonic() < deadline
                time.sleep(0.2)
        con.execute_command("AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", b'{"op": "mul"}')
        con.execute_command("AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 2, 3)
        assert (
            con.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b")
            == b"OK"
        )
        assert con.execute_command("AI.TENSORGET", "b", "VALUES") == [b"4", b"9"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        if proc.stdout:
            proc.stdout.close()


def test_a_huge_array_header_alone_does_not_stall_the_gateway(redis_server: object) -> None:
    """A read holding only ``*2147483647`` went to hiredis's reader, which made room for the
    array's elements and took seconds to free them, every client waiting meanwhile (a process
    of its own: in this one the test would wait for the interpreter lock too)."""
    port = _free_port()
    proc = _spawn_gateway(redis_server.url, port)  # type: ignore[attr-defined]
    try:
        other = _connect_when_up(port, proc)
        for header in (b"*2147483647\r\n", b"*1\r\n$4\r\nPING\r\n*2147483647\r\n"):
            hostile = socket.create_connection(("127.0.0.1", port))
            hostile.sendall(header)
            time.sleep(0.2)
            started = time.monotonic()
            assert other.ping() is True
            assert time.monotonic() - started < 1.5  # 4.1-4.4 s before
            hostile.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_max_connections_fits_the_open_files_limit(redis_server: object) -> None:
    """Under ``ulimit -n 100`` a gateway (2 files a client) served about 33 clients and closed
    the rest without a word, or answered them "Too many open files": now it serves what fits
    and answers the rest as Redis does past maxclients."""
    import resource

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiworker", "gateway", "--redis-url",
         redis_server.url, "--listen", f"127.0.0.1:{port}"],  # type: ignore[attr-defined]
        env=worker_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=limit_files,
    )  # fmt: skip
    clients: list[socket.socket] = []
    try:
        _connect_when_up(port, proc).close()
        refused = 0
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            with contextlib.suppress(OSError):  # a refused client's PING may meet a closed end
                sock.sendall(b"PING\r\n")
            answer = sock.recv(100)
            if answer == b"+PONG\r\n":
                clients.append(sock)
            else:
                assert answer == b"-ERR max number of clients reached\r\n"
                refused += 1
        assert refused and len(clients) >= 10
        for sock in clients:  # everyone admitted is served
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert b"open files limit 100" in stderr
