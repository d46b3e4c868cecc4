"""RESP3 through the gateway: a client that says HELLO 3 gets RedisAI's replies as RedisAI sent
them to RESP3 clients (float values as doubles, nil as null), Redis' own replies and pushes in
RESP3 as they come, and AI.* commands that run as before, on the client's own connection (its
replies read in their RESP2 shapes). redis-py 8 asks for RESP3 first: it must connect without a warning."""

from __future__ import annotations

import socket
import time
import warnings
from typing import Any

import redis
import test_gateway
from conftest import stub_blob, wait_until
from test_gateway import (
    busy_script,
    connect,
    raw_socket,
    read_replies,
    read_until_closed,
    running_gateway,
)

from aiworker import Client, Settings, Worker
from aiworker.gateway import Gateway
from aiworker.gateway.resp import Double, command, encode, reply_end

gateway = test_gateway.gateway  # the fixture: a gateway on each event loop


def connect3(gateway: Gateway, **kwargs: Any) -> redis.Redis:
    return connect(gateway, protocol=3, **kwargs)


def replies(data: bytes) -> list[bytes]:
    """``data`` cut into its RESP replies."""
    out, pos = [], 0
    while pos < len(data):
        end = reply_end(data, pos)
        assert end > 0, data[pos:]
        out.append(data[pos:end])
        pos = end
    return out


def test_hello_3_makes_ai_replies_resp3(gateway: Gateway) -> None:
    sock = raw_socket(gateway)
    sock.sendall(
        b"HELLO 3\r\nAI.TENSORSET t FLOAT 2 VALUES 1.5 -2\r\nAI.TENSORGET t META VALUES\r\n"
        b"AI.TENSORGET t VALUES\r\nAI.CONFIG GET NOPE\r\nAI.TENSORSET i INT8 1 VALUES 7\r\n"
        b"AI.TENSORGET i VALUES\r\nHGETALL i\r\nAI.TENSORGET nope\r\n"
        b"HELLO 2\r\nAI.TENSORGET t VALUES\r\nAI.CONFIG GET NOPE\r\nQUIT\r\n"
    )
    hello, *rest = replies(read_until_closed(sock))
    assert hello.startswith(b"%7\r\n") and b"proto\r\n:3\r\n" in hello
    assert rest[:7] == [
        b"+OK\r\n",
        b"*6\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$5\r\nshape\r\n*1\r\n:2\r\n"
        b"$6\r\nvalues\r\n*2\r\n,1.5\r\n,-2\r\n",
        b"*2\r\n,1.5\r\n,-2\r\n",
        b"_\r\n",  # RedisModule_ReplyWithNull to a RESP3 client
        b"+OK\r\n",
        b"*1\r\n:7\r\n",  # integers stay integers
        rest[6],
    ]
    assert rest[6].startswith(b"%4\r\n")  # Redis' own reply: a map
    assert rest[7] == b"-ERR tensor key is empty or in a different shard\r\n"
    assert rest[8].startswith(b"*14\r\n")  # HELLO 2: an array again
    assert rest[9:] == [b"*2\r\n$3\r\n1.5\r\n$2\r\n-2\r\n", b"$-1\r\n", b"+OK\r\n"]


def test_redis_py_resp3_client(gateway: Gateway, worker: Worker, client: Client) -> None:
    """redis-py 8 with ``protocol=3`` (its default where the server agrees): no fallback
    warning, every AI.* command, pipelines mixing AI.* and plain commands, a transaction."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a HELLO 3 refused makes redis-py 8 warn
        con = connect3(gateway)
        assert con.ping() is True
    assert con.execute_command("AI.TENSORSET", "a", "FLOAT", 2, "VALUES", 2, 3) == b"OK"
    assert con.execute_command("AI.MODELSTORE", "m", "STUB", "CPU", "BLOB", stub_blob("add"))
    assert con.execute_command(
        "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b"
    ) == b"OK"  # fmt: skip
    assert con.execute_command("AI.TENSORGET", "b", "VALUES") == [4.0, 6.0]
    assert client.tensorget("b").tolist() == [4, 6]
    info = con.execute_command("AI.INFO", "m")
    assert info[info.index(b"calls") + 1] == 1
    assert con.hgetall("a")[b"dtype"] == b"FLOAT"  # a map, as redis-py 8 reads RESP3
    pipe = con.pipeline(transaction=False)
    pipe.set("k", 1).execute_command("AI.TENSORGET", "b", "META").get("k").zadd("z", {"x": 1.5})
    pipe.zrange("z", 0, -1, withscores=True)
    assert pipe.execute() == [
        True, [b"dtype", b"FLOAT", b"shape", [2]], b"1", 1, [[b"x", 1.5]]
    ]  # fmt: skip
    tx = con.pipeline(transaction=True)
    tx.set("k", 2).execute_command("AI.TENSORSET", "c", "INT8", 1, "VALUES", 5).get("k")
    tx.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "b")
    done = tx.execute(raise_on_error=False)
    assert done[:3] == [True, b"OK", b"2"]
    assert "Cannot run RedisAI command within a transaction" in str(done[3])
    assert client.tensorget("c").tolist() == [5]
    con.close()


def test_ai_commands_run_inside_a_resp3_transaction(gateway: Gateway, client: Client) -> None:
    """As for a RESP2 client: at EXEC, atomically and in order with the client's own commands
    (EXISTS and DEL see the tensor set before them), their replies in RESP3."""
    sock = raw_socket(gateway)
    sock.sendall(b"HELLO 3\r\nAI.TENSORSET warm INT8 1 VALUES 1\r\n")  # its script loaded
    read_replies(sock, 2)
    sock.sendall(
        b"MULTI\r\nAI.TENSORSET t INT8 2 VALUES 1 2\r\nEXISTS t\r\n"
        b"AI.TENSORSET f DOUBLE 1 VALUES 0.5\r\nAI.TENSORGET f META VALUES\r\n"
        b"AI.TENSORGET nope\r\nAI.CONFIG GET NOPE\r\nDEL t\r\nEXEC\r\nQUIT\r\n"
    )
    got = replies(read_until_closed(sock))
    assert got == [b"+OK\r\n"] + [b"+QUEUED\r\n"] * 7 + [
        b"*7\r\n+OK\r\n:1\r\n+OK\r\n"
        b"*6\r\n$5\r\ndtype\r\n$6\r\nDOUBLE\r\n$5\r\nshape\r\n*1\r\n:1\r\n"
        b"$6\r\nvalues\r\n*1\r\n,0.5\r\n"
        b"-ERR tensor key is empty or in a different shard\r\n_\r\n:1\r\n",
        b"+OK\r\n",
    ]
    assert client.exists("t") == 0 and client.tensorget("f").tolist() == [0.5]


def test_pushes_reach_a_resp3_client_between_replies(gateway: Gateway, client: Client) -> None:
    """Client-side caching's invalidations come as pushes on the client's connection, between
    any two replies: each reaches the client once, and every reply keeps its place."""
    client.tensorset("t", [1], dtype="INT8")
    client.set("k", "v")
    sock = raw_socket(gateway)
    sock.sendall(b"HELLO 3\r\nCLIENT TRACKING ON\r\nGET k\r\n")
    got = replies(read_replies(sock, 3))
    assert got[1:] == [b"+OK\r\n", b"$1\r\nv\r\n"]
    client.set("k", "w")  # invalidates k for the tracking connection
    time.sleep(0.2)
    sock.sendall(b"AI.TENSORGET t VALUES\r\nPING\r\nGET k\r\nQUIT\r\n")
    got = replies(read_until_closed(sock))
    push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    assert got.count(push) == 1
    got.remove(push)
    assert got == [b"*1\r\n:1\r\n", b"+PONG\r\n", b"$1\r\nw\r\n", b"+OK\r\n"]


def test_subscribe_in_resp3(gateway: Gateway, client: Client) -> None:
    """A RESP3 SUBSCRIBE is answered by a push, and the connection still takes commands."""
    sock = raw_socket(gateway)
    sock.sendall(b"HELLO 3\r\nSUBSCRIBE news\r\n")
    got = replies(read_replies(sock, 2))
    assert got[1] == b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    wait_until(lambda: client.publish("news", "hi") == 1)
    assert read_replies(sock, 1) == b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    sock.sendall(b"SET k 1\r\nGET k\r\n")
    assert replies(read_replies(sock, 2)) == [b"+OK\r\n", b"$1\r\n1\r\n"]


def test_emulated_cluster_shards_are_maps_in_resp3(client: Client, settings: Settings) -> None:
    with running_gateway(settings, emulate_cluster=True) as gw:
        con = connect3(gw)
        shards = con.execute_command("CLUSTER", "SHARDS")
        assert shards[0][b"slots"] == [0, 16383]
        node = shards[0][b"nodes"][0]
        assert node[b"port"] == gw.address()[1] and node[b"role"] == b"master"
        con2 = redis.Redis(*gw.address(), protocol=2)
        assert con2.execute_command("CLUSTER", "SHARDS")[0][:2] == [b"slots", [0, 16383]]


def test_a_protocol_redis_does_not_speak_is_redis_error(gateway: Gateway) -> None:
    sock = raw_socket(gateway)
    sock.sendall(b"HELLO 4\r\nPING\r\nQUIT\r\n")
    got = replies(read_until_closed(sock))
    assert got[0].startswith(b"-NOPROTO") and got[1:] == [b"+PONG\r\n", b"+OK\r\n"]


def test_reset_returns_to_resp2(gateway: Gateway) -> None:
    sock = raw_socket(gateway)
    sock.sendall(b"HELLO 3\r\nAI.CONFIG GET NOPE\r\nRESET\r\nAI.CONFIG GET NOPE\r\nQUIT\r\n")
    got = replies(read_until_closed(sock))
    assert got[1:] == [b"_\r\n", b"+RESET\r\n", b"$-1\r\n", b"+OK\r\n"]


def test_resp3_framing_and_encoding() -> None:
    """Every RESP3 type is framed by its header alone, cut anywhere; the gateway's own values
    are written in either protocol."""
    reply = (
        b"%2\r\n+a\r\n,1.5\r\n$1\r\nb\r\n~2\r\n#t\r\n_\r\n"  # a map holding a set
        b"|1\r\n+ttl\r\n:3\r\n"  # an attribute, then the reply it describes:
        b"*4\r\n=8\r\ntxt:a\r\nb\r\n(12345678901234567890\r\n!5\r\nERR x\r\n>1\r\n:1\r\n"
    )
    first = reply.index(b"|")
    assert reply_end(reply, 0) == first
    assert reply_end(reply, first) == len(reply)
    for cut in range(first + 1, len(reply)):
        assert reply_end(reply[:cut], first) == -1
    value = [Double(b"2.5"), None, {b"k": [1, Double(b"-inf")]}]
    assert encode(value, resp3=True) == b"*3\r\n,2.5\r\n_\r\n%1\r\n$1\r\nk\r\n*2\r\n:1\r\n,-inf\r\n"
    assert encode(value) == (
        b"*3\r\n$3\r\n2.5\r\n$-1\r\n*2\r\n$1\r\nk\r\n*2\r\n:1\r\n$4\r\n-inf\r\n"
    )


INVALIDATE_T = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nt\r\n"


def test_a_resp3_clients_ai_reads_are_tracked(
    gateway: Gateway, client: Client, redis_server: Any
) -> None:
    """A RESP3 client's AI.* commands run on its own connection to Redis (it once had a second
    one, without the client's CLIENT TRACKING, NO-EVICT, ...): an AI.TENSORGET is tracked as
    RedisAI's read of the key was, in the default mode and with OPTIN's CLIENT CACHING YES."""
    client.tensorset("t", [1], dtype="INT8")
    client.set("other", "x")
    admin = redis.Redis(host="127.0.0.1", port=redis_server.port)
    before = len(admin.client_list())
    sock = raw_socket(gateway)
    sock.sendall(b"HELLO 3\r\nCLIENT TRACKING ON\r\nAI.TENSORGET t VALUES\r\n")
    assert replies(read_replies(sock, 3))[1:] == [b"+OK\r\n", b"*1\r\n:1\r\n"]
    assert len(admin.client_list()) == before + 1  # one connection of its own
    client.tensorset("t", [2], dtype="INT8")
    assert read_replies(sock, 1) == INVALIDATE_T
    # OPTIN: the read after CLIENT CACHING YES is the one tracked
    sock.sendall(b"CLIENT TRACKING OFF\r\nCLIENT TRACKING ON OPTIN\r\nCLIENT CACHING YES\r\n"
                 b"AI.TENSORGET t VALUES\r\nGET other\r\n")  # fmt: skip
    assert replies(read_replies(sock, 5))[3:] == [b"*1\r\n:2\r\n", b"$1\r\nx\r\n"]
    client.set("other", "y")
    client.tensorset("t", [3], dtype="INT8")
    assert read_replies(sock, 1) == INVALIDATE_T  # and none for ``other``
    sock.sendall(b"PING\r\n")
    assert read_replies(sock, 1) == b"+PONG\r\n"


def test_an_invalidation_waits_for_the_exec_reply_it_follows(
    gateway: Gateway, client: Client, worker: Worker
) -> None:
    """A transaction whose model store runs after EXEC: an invalidation of a key it read,
    pushed by Redis after EXEC's reply, reaches the client after that reply (it came first: a
    client-side cache would keep the stale value it holds)."""
    client.set("ck", "old")
    sock = raw_socket(gateway)
    sock.sendall(b"HELLO 3\r\nCLIENT TRACKING ON\r\n")
    read_replies(sock, 2)
    slow_load = stub_blob("add", load_ms=1000)  # verified by a worker: it loads the model
    sock.sendall(b"MULTI\r\nGET ck\r\n"
                 + command(b"AI.MODELSTORE", b"m", b"STUB", b"CPU", b"BLOB", slow_load)
                 + b"EXEC\r\n")  # fmt: skip
    assert read_replies(sock, 3) == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n"
    time.sleep(0.4)  # EXEC ran, its store is being verified
    client.set("ck", "new")
    got = replies(read_replies(sock, 2))
    assert got == [
        b"*2\r\n$3\r\nold\r\n+OK\r\n",
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\nck\r\n",
    ]


def test_hello_queued_in_a_transaction_changes_the_replies_after_it(gateway: Gateway) -> None:
    """EXEC's reply is written as Redis writes it: each item in the protocol in effect when its
    command ran, AI.* commands' replies and the gateway's own included."""
    sock = raw_socket(gateway)
    sock.sendall(b"AI.TENSORSET a FLOAT 1 VALUES 1.5\r\nHELLO 3\r\n")
    read_replies(sock, 2)
    sock.sendall(b"MULTI\r\nAI.TENSORGET a VALUES\r\nHELLO 2\r\nAI.TENSORGET a VALUES\r\n"
                 b"AI.CONFIG GET NOPE\r\nCOMMAND GETKEYS AI.TENSORGET a\r\nGET nokey\r\n"
                 b"EXEC\r\nQUIT\r\n")  # fmt: skip
    got = replies(read_until_closed(sock))
    assert got[:7] == [b"+OK\r\n"] + [b"+QUEUED\r\n"] * 6
    exec_reply = got[7]
    first, hello, *after = replies(exec_reply[exec_reply.index(b"\r\n") + 2 :])
    assert exec_reply.startswith(b"*6\r\n") and first == b"*1\r\n,1.5\r\n"
    assert hello.startswith(b"*14\r\n")  # HELLO's own reply: in its new protocol, as Redis
    assert after == [b"*1\r\n$3\r\n1.5\r\n", b"$-1\r\n", b"*1\r\n$1\r\na\r\n", b"$-1\r\n"]
    assert got[8:] == [b"+OK\r\n"]


def test_a_push_before_a_subscribing_execs_reply_is_not_taken_for_it(
    gateway: Gateway, redis_server: Any
) -> None:
    """RESP3 with client-side caching: an invalidation Redis pushes just before the reply of an
    EXEC that subscribes goes to the client as a push; EXEC keeps its own reply (the push was
    taken for it, and every later reply answered the command before its own)."""
    busy = busy_script(1)
    answers = []
    for address in (("127.0.0.1", redis_server.port), gateway.address()):
        writer = socket.create_connection(("127.0.0.1", redis_server.port), timeout=10)
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(
            command(b"HELLO", b"3") + command(b"CLIENT", b"TRACKING", b"ON")
            + command(b"SET", b"k", b"0") + command(b"GET", b"k") + command(b"MULTI")
            + command(b"SUBSCRIBE", b"c")
        )  # fmt: skip
        head = read_replies(sock, 6)
        blocker = socket.create_connection(("127.0.0.1", redis_server.port), timeout=10)
        blocker.sendall(command(b"EVAL", busy, b"0"))  # Redis busy for a second
        time.sleep(0.2)
        writer.sendall(command(b"SET", b"k", b"1"))  # its invalidation goes out first
        time.sleep(0.1)
        sock.sendall(command(b"EXEC") + command(b"SET", b"a", b"1") + command(b"INCR", b"n"))
        rest = read_replies(sock, 4)  # the push, EXEC's reply, +OK, :n
        answers.append((head, rest))
        for each in (writer, blocker, sock):
            each.close()
        cleaner = socket.create_connection(("127.0.0.1", redis_server.port), timeout=10)
        cleaner.sendall(command(b"DEL", b"k", b"a", b"n"))
        read_replies(cleaner, 1)
        cleaner.close()
    (_, direct), (_, through) = answers
    assert replies(through)[0].startswith(b">2\r\n$10\r\ninvalidate\r\n")
    assert replies(through)[1:] == replies(direct)[1:] and replies(through)[-1] == b":1\r\n"
