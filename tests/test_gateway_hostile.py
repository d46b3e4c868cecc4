"""Hostile input at the gateway: truncated frames, huge declared lengths, a million-argument array,
non-UTF-8 names, slow-loris clients, too many connections. Each gets an error or a closed
connection, and the gateway goes on serving everyone else. Also the pure readers on their own."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from conftest import wait_until
from test_gateway import (
    answered_both,
    busy_script,
    connect,
    event_loops,
    raw_socket,
    read_replies,
    read_until_closed,
    requiring_auth,
    running_gateway,
)

from aiworker import Client, Settings
from aiworker.embedded import RedisServer, free_port
from aiworker.gateway import Gateway
from aiworker.gateway import session as session_module
from aiworker.gateway.frames import ProtocolError, RequestReader
from aiworker.gateway.resp import array_items, encode, reply_end
from aiworker.gateway.resp import command as resp_command
from aiworker.gateway.session import MAX_WAITING, MAX_WAITING_BYTES
from aiworker.gateway.upstream import MAX_HELD


@pytest.fixture(params=event_loops())
def gateway(
    client: Client, settings: Settings, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """A gateway on each event loop it runs on (uvloop is ``aiworker gateway``'s default)."""
    with running_gateway(settings, request.param, request_timeout=1.0, max_connections=50) as gw:
        yield gw


def still_serving(gateway: Gateway) -> None:
    con = connect(gateway)
    assert con.execute_command("AI.TENSORSET", "ok", "INT8", 1, "VALUES", 1) == b"OK"
    assert con.execute_command("PING") is True
    con.close()


def test_a_huge_bulk_length_is_refused_before_any_byte_of_it(gateway: Gateway) -> None:
    sock = raw_socket(gateway)
    sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$2147483648\r\n")
    assert read_until_closed(sock) == b"-ERR Protocol error: invalid bulk length\r\n"
    still_serving(gateway)


def test_a_tensorset_declaring_gigabytes_of_zeros_is_refused_before_allocating(
    gateway: Gateway,
) -> None:
    """AI.TENSORSET without data declares its zeros: 74.5 GiB answered numpy's own message, and
    4 GB were allocated in the gateway before Redis refused the value and closed its link."""
    con = connect(gateway)
    for dtype, dims, size in (("DOUBLE", (100000, 100000), "80,000,000,000"),
                              ("FLOAT", (100000, 10000), "4,000,000,000")):  # fmt: skip
        with pytest.raises(redis.ResponseError, match=f"^tensor with no data declares {size} "):
            con.execute_command("AI.TENSORSET", "big", dtype, *dims)
    assert con.exists("big") == 0
    con.close()
    still_serving(gateway)


def test_a_million_argument_array(client: Client, settings: Settings) -> None:
    with running_gateway(settings) as gateway:
        _million(gateway)


def _million(gateway: Gateway) -> None:
    sock = raw_socket(gateway)
    sock.sendall(b"*2000000\r\n$4\r\nPING\r\n")
    assert read_until_closed(sock) == b"-ERR Protocol error: invalid multibulk length\r\n"
    # a million arguments within the limit are read and answered like any command
    sock = raw_socket(gateway)
    sock.sendall(b"*1000000\r\n$6\r\nAI.NOP\r\n" + b"$1\r\na\r\n" * 999_999 + b"PING\r\n")
    sock.settimeout(30)
    assert sock.recv(100).startswith(b"-ERR unknown command 'AI.NOP'")
    sock.close()
    still_serving(gateway)


@pytest.mark.parametrize(
    "frame",
    [
        b"*2\r\n$3\r\nGET\r\n$10\r\nabc",  # truncated bulk
        b"*3\r\n$3\r\nSET\r\n",  # truncated array
        b"*1\r\n$3\r\nGE",
        b"AI.TENSORSET t FLOAT 1 VALUES",  # an inline command without its end of line
    ],
)
def test_truncated_frames_then_disconnect(gateway: Gateway, frame: bytes) -> None:
    sock = raw_socket(gateway)
    sock.sendall(frame)
    sock.close()
    still_serving(gateway)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"*1\r\n+PING\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
        (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b'GET "a\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        (b"*1\r\n$" + b"9" * 70000, b"-ERR Protocol error: too big bulk count string\r\n"),
        (b"x" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
    ],
)
def test_malformed_frames_get_redis_errors(gateway: Gateway, frame: bytes, error: bytes) -> None:
    sock = raw_socket(gateway)
    sock.sendall(frame)
    assert read_until_closed(sock) == error
    still_serving(gateway)


def test_slow_loris_is_disconnected(gateway: Gateway) -> None:
    """A command that does not finish arriving within request_timeout (1 s here) ends the
    connection; an idle connection between commands is left alone."""
    idle = raw_socket(gateway)
    sock = raw_socket(gateway)
    started = time.monotonic()
    sock.sendall(b"*2\r\n$3\r\nGET\r\n")
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(50):
            time.sleep(0.1)
            sock.sendall(b"$")
    assert time.monotonic() - started < 5
    idle.sendall(b"PING\r\n")
    assert idle.recv(100) == b"+PONG\r\n"
    still_serving(gateway)


def test_a_long_pipeline_of_commands_cut_anywhere_is_not_slow_loris(gateway: Gateway) -> None:
    """request_timeout (1 s here) times each command, not the stream: a pipeline whose reads
    always end inside a command, for longer than the timeout, loses nothing (``redis-cli
    --pipe`` was cut after a million keys)."""
    sock = raw_socket(gateway)
    pipeline = b"".join(b"SET k%d %d\r\n" % (n, n) for n in range(12))
    for start in range(0, len(pipeline), 13):  # never a whole command per read
        sock.sendall(pipeline[start : start + 13])
        time.sleep(0.25)
    sock.sendall(b"GET k11\r\n")
    assert read_replies(sock, 13) == b"+OK\r\n" * 12 + b"$2\r\n11\r\n"


LARGE_HEAD = (
    b"*6\r\n$12\r\nAI.TENSORSET\r\n$1\r\nt\r\n$5\r\nFLOAT\r\n$6\r\n262144\r\n$4\r\nBLOB\r\n"
)


def test_slow_loris_inside_an_argument_received_in_place(gateway: Gateway, client: Client) -> None:
    """A 1 MB blob received in place that stops coming ends the connection after
    request_timeout, as any unfinished command does; nothing is written."""
    sock = raw_socket(gateway)
    started = time.monotonic()
    sock.sendall(LARGE_HEAD + b"$1048576\r\n" + b"\0" * 100_000)
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(50):
            time.sleep(0.1)
            sock.sendall(b"\0")
    assert time.monotonic() - started < 5
    assert not client.exists("t")
    still_serving(gateway)


def test_an_argument_received_in_place_must_end_with_crlf(gateway: Gateway, client: Client) -> None:
    sock = raw_socket(gateway)
    sock.sendall(LARGE_HEAD + b"$1048576\r\n" + b"\0" * 100_000)
    time.sleep(0.2)  # the rest goes into the blob's own buffer
    sock.sendall(b"\0" * (1048576 - 100_000) + b"XY*1\r\n$4\r\nPING\r\n")
    assert read_until_closed(sock) == (
        b"-ERR Protocol error: expected CRLF after a bulk string\r\n"
    )
    assert not client.exists("t")
    still_serving(gateway)


def test_non_utf8_names(gateway: Gateway) -> None:
    con = connect(gateway)
    for command in (
        ["AI.TENSORSET", b"k\xff", "INT8", 1, "VALUES", 1],
        ["AI.TENSORGET", b"\xc3\x28"],
        ["AI.MODELSTORE", b"m\x80", "STUB", "CPU", "BLOB", b"{}"],
        ["AI.MODELEXECUTE", "m", "INPUTS", 1, b"\xff", "OUTPUTS", 1, "o"],
        ["AI.DAGEXECUTE", "PERSIST", 1, b"\xfe", "|>", "AI.TENSORSET", b"\xfe", "INT8", 1],
    ):
        with pytest.raises(redis.ResponseError, match="is not valid UTF-8"):
            con.execute_command(*command)
    # a binary blob is not a name: it is taken as it is
    blob = bytes(range(256))
    assert con.execute_command("AI.TENSORSET", "b", "UINT8", 256, "BLOB", blob) == b"OK"
    assert con.execute_command("AI.TENSORGET", "b", "BLOB") == blob


@pytest.mark.parametrize("prelude", [b"WATCH w\r\n", b"HELLO 3\r\n", b""])
def test_a_client_that_never_reads_holds_little_of_the_gateway(
    gateway: Gateway, client: Client, prelude: bytes
) -> None:
    """128 AI.TENSORGETs of a 256 KB tensor pipelined by a client that does not read: whichever
    connection they run on (a WATCHing client's run in threads, a RESP3 client's on a second
    connection: they went on running and their replies piled up in the gateway, 2.4 GB from 600
    of 4 MB), no command starts while the client's replies wait to be written. When it reads,
    every reply comes, in order."""
    client.tensorset("big", np.zeros(1 << 16, np.float32))
    sock = socket.create_connection(gateway.address(), timeout=10)
    request = b"*3\r\n$12\r\nAI.TENSORGET\r\n$3\r\nbig\r\n$4\r\nBLOB\r\n"
    sock.sendall(prelude + request * 128 + b"PING\r\n")  # 32 MB of replies
    time.sleep(1.5)
    (session,) = gateway.sessions
    held = session.transport.get_write_buffer_size() if session.transport else 0
    for slot in session.replies:  # replies ready, behind those the transport holds
        parts = slot.data if isinstance(slot.data, list) else [slot.data or b""]
        held += sum(len(part) for part in parts)
    assert held < 4 << 20, f"{held:,} bytes held for a client that does not read"
    received, pos, count = bytearray(), 0, 0
    while count < 129 + bool(prelude):
        received += sock.recv(1 << 20)
        while (end := reply_end(received, pos)) > 0:
            pos, count = end, count + 1
    assert received.count(b"$262144\r\n") == 128 and received.endswith(b"+PONG\r\n")
    sock.close()


INLINE_LINES = [
    b"ECHO a\xc2\xa0b",  # a no-break space: part of its token
    b"ECHO a\xe3\x80\x80b",  # an ideographic space, too
    b"ECHO a\x0bb",  # a vertical tab inside a token
    b"ECHO \x0b a",  # and between tokens
    b'ECHO a"b c"',  # a quote mid-token starts a quoted part
    b'ECHO "a\\x41\\n"',
    b"ECHO 'it\\'s'",
    b'ECHO "a"b',  # a closing quote must end its token
    b"ECHO 'a'b",
    b'ECHO a"b c"d',
    b'ECHO "abc',
]


@pytest.mark.parametrize("line", INLINE_LINES)
def test_inline_commands_split_as_redis_splits_them(
    gateway: Gateway, redis_server: Any, line: bytes
) -> None:
    """Each inline command answered as Redis answers it (its ``sdssplitargs``)."""
    answers = []
    for address in (("127.0.0.1", redis_server.port), gateway.address()):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(line + b"\r\nPING\r\n")
        received, pos, count = b"", 0, 0
        while count < 2:  # the reply and PONG, or an error and the end of the connection
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            while (end := reply_end(received, pos)) > 0:
                pos, count = end, count + 1
        answers.append(received)
        sock.close()
    direct, through = answers
    assert direct == through
    assert direct.startswith((b"$", b"-ERR Protocol error: unbalanced quotes"))


@pytest.mark.parametrize(
    "stream",
    [
        b"UNSUBSCRIBE\r\nPING\r\n",
        b"UNSUBSCRIBE a bc\r\nGET x\r\nPING\r\n",
        b"PUNSUBSCRIBE\r\nSUNSUBSCRIBE x\r\nPING\r\n",
        b"HELLO 3\r\nUNSUBSCRIBE\r\nUNSUBSCRIBE a bc\r\nPING\r\n",
    ],
)
def test_unsubscribing_while_subscribed_to_nothing_keeps_replies_in_step(
    gateway: Gateway, client: Client, redis_server: Any, stream: bytes
) -> None:
    """Redis answers an UNSUBSCRIBE of a connection subscribed to nothing with one reply per
    channel (RESP3: pushes): the gateway counted one and every reply after it went one place
    off (an AI.* command read its neighbour's reply). The same bytes as Redis', then an AI.*
    command answered as itself."""
    client.tensorset("t", np.array([7], np.int8))
    ai = b"AI.TENSORGET t VALUES\r\n"
    answers = answered_both(stream + b"QUIT\r\n", gateway, redis_server)
    # after HELLO's reply, which names each connection's own id
    skip = [reply_end(answer, 0) if stream.startswith(b"HELLO") else 0 for answer in answers]
    direct, through = (answer[at:] for answer, at in zip(answers, skip, strict=True))
    assert through == direct
    sock = raw_socket(gateway)
    sock.sendall(stream + ai + b"QUIT\r\n")
    received = read_until_closed(sock)
    assert received[skip[1] :] == direct[: -len(b"+OK\r\n")] + b"*1\r\n:7\r\n+OK\r\n"


def parsing_threads(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """The names of the threads ``module.parse_command`` runs in from now on, as it runs."""
    threads: list[str] = []
    parse = module.parse_command

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return parse(*args)

    monkeypatch.setattr(module, "parse_command", recording)
    return threads


def test_large_ai_commands_are_parsed_off_the_event_loop(
    gateway: Gateway, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing a million VALUES held the event loop, and every other client, for seconds: an
    AI.* command with many arguments, or much text before its last, is parsed and run in a
    thread (the event loop runs in the thread called ``gateway`` here)."""
    from aiworker.gateway import aiclients

    threads = parsing_threads(monkeypatch, aiclients)
    con = connect(gateway)
    values = list(range(5000))
    assert con.execute_command("AI.TENSORSET", "t", "INT16", 5000, "VALUES", *values) == b"OK"
    assert threads and threads[0].startswith("gateway-ai")
    assert client.tensorget("t").tolist() == values
    assert con.execute_command("AI.TENSORGET", "t", "META") == [
        b"dtype",
        b"INT16",
        b"shape",
        [5000],
    ]
    assert len(threads) == 1, "a small command is parsed where it arrives"


def test_large_ai_commands_in_a_transaction_are_parsed_off_the_event_loop(
    gateway: Gateway, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside MULTI too: the command is parsed and its first Redis calls made ready in a
    thread, then queued in the transaction in its place (the commands after it wait)."""
    from aiworker.gateway import session

    threads = parsing_threads(monkeypatch, session)
    con = connect(gateway)
    values = list(range(5000))
    pipe = con.pipeline(transaction=True)
    pipe.execute_command("SET", "before", "1")
    pipe.execute_command("AI.TENSORSET", "t", "INT16", 5000, "VALUES", *values)
    pipe.execute_command("EXISTS", "t")
    pipe.execute_command("AI.TENSORGET", "t", "META")
    assert pipe.execute() == [True, b"OK", 1, [b"dtype", b"INT16", b"shape", [5000]]]
    assert threads[0].startswith("gateway-ai") and threads[1] == "gateway"  # the small one
    assert client.tensorget("t").tolist() == values


def test_connection_limit(gateway: Gateway) -> None:
    socks = []
    for _ in range(50):
        sock = raw_socket(gateway)
        sock.sendall(b"PING\r\n")
        assert sock.recv(100) == b"+PONG\r\n"
        socks.append(sock)
    extra = raw_socket(gateway)
    assert read_until_closed(extra) == b"-ERR max number of clients reached\r\n"
    socks.pop().close()
    time.sleep(0.2)
    still_serving(gateway)
    for sock in socks:
        sock.close()


def test_redis_going_away_ends_the_clients_connection(gateway: Gateway, client: Client) -> None:
    """The client's DB, user and transaction lived on that connection: the gateway hangs up
    rather than carry on with another."""
    sock = raw_socket(gateway)
    sock.sendall(b"CLIENT SETNAME victim\r\n")
    assert sock.recv(100) == b"+OK\r\n"
    victim = next(c for c in client.client_list() if c["name"] == "victim")
    client.client_kill_filter(_id=victim["id"])
    assert read_until_closed(sock) == b""
    still_serving(gateway)


def test_redis_going_away_mid_job(gateway: Gateway, client: Client) -> None:
    """A job waiting on the client's connection when Redis drops it: an error at once, then the
    connection ends (the job's wait would otherwise go on until its limit)."""
    from conftest import stalled_worker, stub_blob

    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.ones(1, np.float32))
    stalled_worker(client)  # the job waits: a worker is alive but reads nothing
    sock = raw_socket(gateway)
    sock.sendall(b"CLIENT SETNAME victim\r\n")
    assert sock.recv(100) == b"+OK\r\n"
    sock.sendall(b"AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 b\r\n")
    time.sleep(0.8)  # past the first BLPOP
    victim = next(c for c in client.client_list() if c["name"] == "victim")
    client.client_kill_filter(_id=victim["id"])
    started = time.monotonic()
    assert (
        read_until_closed(sock) == b"-ERR gateway: Redis unreachable (connection to Redis lost)\r\n"
    )
    assert time.monotonic() - started < 3
    still_serving(gateway)


# the pure parts ------------------------------------------------------------------------------


def test_request_reader_splits_and_limits() -> None:
    reader = RequestReader(max_bulk=10, max_args=3, max_request=100)
    data = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n*1\r\n$4\r\nQU"
    assert reader.feed(data[:7]) == []
    assert reader.feed(data[7:]) == [[b"GET", b"a"], [b"PING"]]
    assert reader.buffered == len(b"*1\r\n$4\r\nQU")
    assert reader.feed(b"IT\r\n") == [[b"QUIT"]]
    assert reader.buffered == 0
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        RequestReader(10, 3, 100).feed(b"*1\r\n$11\r\n")
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        RequestReader(10, 3, 100).feed(b"*4\r\n")
    with pytest.raises(ProtocolError, match="max-request"):
        RequestReader(10, 3, 20).feed(b"*3\r\n$10\r\n0123456789\r\n$10\r\n")


def test_reply_framing() -> None:
    reply = encode([b"a", [1, None, [b"x" * 100]], 7])
    assert reply_end(reply, 0) == len(reply)
    for cut in range(len(reply)):
        assert reply_end(reply[:cut], 0) == -1
    assert array_items(reply, 0, len(reply)) == [b"$1\r\na\r\n", encode([1, None, [b"x" * 100]]),
                                                 b":7\r\n"]  # fmt: skip
    assert array_items(b"*-1\r\n", 0, 5) is None


def test_a_client_gone_before_its_exec_and_redis_gone_after_frees_its_place(
    settings: Settings,
) -> None:
    """A client leaves while its EXEC (holding an AI.* command) runs, then Redis dies: the
    session let go once the EXEC's AI.* part had its answer, which never came; with
    --max-connections 1 every later client was refused for good."""
    server = RedisServer().start()
    busy = busy_script(2)
    try:
        with running_gateway(settings.replace(redis_url=server.url), max_connections=1) as gw:
            sock = raw_socket(gw)
            sock.sendall(b"MULTI\r\n")
            assert read_replies(sock, 1) == b"+OK\r\n"
            sock.sendall(
                b"AI.TENSORSET t FLOAT 1 VALUES 1\r\n"
                + encode([b"EVAL", busy, b"0"]) + b"EXEC\r\n"
            )  # fmt: skip
            time.sleep(0.5)
            sock.close()  # while EXEC waits behind the script
            time.sleep(0.3)
            server.stop()  # Redis dies before EXEC's reply
            wait_until(lambda: not gw.sessions, timeout=10)
            late = raw_socket(gw)
            late.sendall(b"PING\r\n")
            assert b"max number of clients" not in read_until_closed(late)
    finally:
        server.stop()


def test_commands_held_behind_an_auth_are_answered_when_redis_goes(
    gateway: Gateway, client: Client
) -> None:
    """An AUTH waits for the replies before it (Redis 7.2+ drops a failed AUTH's error pipelined
    behind others), and what follows it waits too. Redis lost meanwhile: those held commands got
    no reply, and the client waited for good instead of getting errors and a closed connection."""
    sock = raw_socket(gateway)
    sock.sendall(b"CLIENT SETNAME held\r\nBLPOP nokey 0\r\nAUTH default whatever\r\nPING\r\n")
    assert read_replies(sock, 1) == b"+OK\r\n"
    wait_until(lambda: any(c.get("name") == "held" for c in client.client_list()), timeout=5)
    (held,) = [c for c in client.client_list() if c.get("name") == "held"]
    client.client_kill_filter(_id=held["id"])
    lost = b"-ERR gateway: connection to Redis lost\r\n"
    assert read_until_closed(sock, timeout=5) == lost * 3


def test_a_gateway_started_before_redis_learns_its_unsubscribe_answer_later(
    settings: Settings,
) -> None:
    """What the server answers an UNSUBSCRIBE of a connection subscribed to nothing (Valkey
    8.0: NOSUB) is asked at start; with Redis not up yet it was never asked, and the gateway
    answered as Redis 7 for good. It is asked again when a client connects."""
    port = free_port()
    with running_gateway(settings.replace(redis_url=f"redis://127.0.0.1:{port}/0")) as gw:
        assert not gw.probed
        with RedisServer(port=port) as server:
            raw_socket(gw).close()  # a client: the question goes again
            wait_until(lambda: gw.probed, timeout=10)
            answers = []
            for address in (("127.0.0.1", server.port), gw.address()):
                sock = socket.create_connection(address, timeout=10)
                sock.sendall(b"UNSUBSCRIBE a\r\nPING\r\nQUIT\r\n")
                answers.append(read_until_closed(sock))
            assert answers[1] == answers[0]


def test_commands_held_behind_an_auth_are_bounded(gateway: Gateway, client: Client) -> None:
    """A BLPOP k 0, an AUTH, then a flood: the AUTH waits for BLPOP's reply and what follows waits
    behind it in the gateway's memory, where Redis' query buffer limit no longer bounds it.
    Past MAX_HELD commands no more are held and the gateway stops reading the client; all is
    answered, in order, once BLPOP returns."""
    flood = 4 * (MAX_HELD + MAX_WAITING)
    sock = raw_socket(gateway)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    sending = threading.Thread(
        target=sock.sendall, args=(b"BLPOP k 0\r\nAUTH default x\r\n" + b"PING\r\n" * flood,)
    )
    sending.start()
    wait_until(lambda: len(gateway.sessions) == 1, timeout=10)
    (session,) = gateway.sessions
    wait_until(lambda: session.paused, timeout=10)
    upstream = session.router.tunnel_upstream()
    assert len(upstream._held) == MAX_HELD  # the rest waits in the session, then in the socket
    client.lpush("k", "v")
    got = read_replies(sock, 2 + flood)
    sending.join(10)
    assert got == b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n+OK\r\n" + b"+PONG\r\n" * flood
    assert not session.paused and not upstream._held


def test_a_long_pipeline_sent_before_its_replies_are_read(gateway: Gateway) -> None:
    """redis-py sends a whole pipeline before it reads a reply. The gateway stopped reading a
    client that did not read its replies, so once the replies filled the sockets the client
    could not finish sending and both waited for good (10,000 ECHOs of 1 KB; direct to Redis
    it works: Redis keeps reading and holds the replies). Now the commands go on to Redis,
    which holds the replies, and the gateway reads them once the client does."""
    con = connect(gateway)
    con.connection_pool.connection_kwargs["socket_timeout"] = 30
    value = b"v" * 1024
    pipe = con.pipeline(transaction=False)
    for _ in range(20_000):
        pipe.execute_command("ECHO", value)
    pipe.execute_command("AI.TENSORSET", "t", "INT8", 1, "VALUES", 7)
    for _ in range(2_000):
        pipe.execute_command("ECHO", value)
    replies = pipe.execute()
    assert replies[:20_000] == [value] * 20_000
    assert replies[20_000] == b"OK"
    assert replies[20_001:] == [value] * 2_000
    still_serving(gateway)


def test_commands_redis_does_not_read_are_bounded(
    gateway: Gateway, client: Client, settings: Settings
) -> None:
    """While Redis runs a long script it reads nothing: the gateway kept taking the client's
    commands and buffering them for Redis without bound (hundreds of MB from one client in a
    second). Now it stops reading the client once its connection to Redis is backed up, and
    everything is answered, in order, when the script ends."""
    busy = threading.Thread(
        target=redis.Redis.from_url(settings.redis_url).eval, args=(busy_script(3), 0)
    )
    busy.start()
    time.sleep(0.3)  # the script runs
    value = b"x" * (1 << 20)
    count = 400
    sock = raw_socket(gateway)
    sending = threading.Thread(
        target=sock.sendall, args=(encode([b"SET", b"big", value]) * count,), daemon=True
    )
    sending.start()
    wait_until(lambda: len(gateway.sessions) == 1, timeout=10)
    (session,) = gateway.sessions
    wait_until(lambda: session.paused, timeout=10)
    upstream = session.router.tunnel_upstream()
    assert upstream.transport is not None
    assert upstream.transport.get_write_buffer_size() < 4 << 20
    got = read_replies(sock, count)
    sending.join(30)
    busy.join(30)
    assert got == b"+OK\r\n" * count
    assert not session.paused
    still_serving(gateway)


def test_a_subscribers_pings_redis_does_not_read_are_bounded(
    gateway: Gateway, settings: Settings
) -> None:
    """A subscribed connection is a pipe: its bytes went on to Redis as they came, and while
    Redis read nothing they piled up in the gateway without bound. Reading the client pauses.
    (Less than Redis' pubsub output limit of 32 MB: past it Redis drops the subscriber.)"""
    sock = raw_socket(gateway)
    sock.sendall(b"SUBSCRIBE news\r\n")
    assert read_replies(sock, 1).startswith(b"*3\r\n$9\r\nsubscribe\r\n")
    busy = threading.Thread(
        target=redis.Redis.from_url(settings.redis_url).eval, args=(busy_script(3), 0)
    )
    busy.start()
    time.sleep(0.3)
    count = 20
    ping = encode([b"PING", b"p" * (1 << 20)])
    sending = threading.Thread(target=sock.sendall, args=(ping * count,), daemon=True)
    sending.start()
    (session,) = gateway.sessions
    wait_until(lambda: session.paused, timeout=10)
    upstream = session.router.tunnel_upstream()
    assert upstream.transport is not None
    assert upstream.transport.get_write_buffer_size() < 4 << 20
    pong = encode([b"pong", b"p" * (1 << 20)])
    got = bytearray()
    sock.settimeout(30)
    while len(got) < len(pong) * count:
        got += sock.recv(1 << 20)
    sending.join(30)
    busy.join(30)
    assert got == pong * count
    still_serving(gateway)


def test_commands_waiting_behind_an_ai_command_are_bounded_in_bytes(
    gateway: Gateway, settings: Settings
) -> None:
    """Commands after an AI.* command wait in the gateway until it is done; reading the client
    paused only past MAX_WAITING commands, whatever their size (4,096 commands of 512 MB).
    Now it pauses past MAX_WAITING_BYTES too."""
    busy = threading.Thread(
        target=redis.Redis.from_url(settings.redis_url).eval, args=(busy_script(3), 0)
    )
    busy.start()
    time.sleep(0.3)  # the AI.* command's Redis call waits behind the script
    count = 200
    flood = b"AI.TENSORSET t INT8 1 VALUES 1\r\n" + encode([b"SET", b"k", b"y" * (1 << 20)]) * count
    sock = raw_socket(gateway)
    sending = threading.Thread(target=sock.sendall, args=(flood,), daemon=True)
    sending.start()
    wait_until(lambda: len(gateway.sessions) == 1, timeout=10)
    (session,) = gateway.sessions
    wait_until(lambda: session.paused, timeout=10)
    assert len(session.waiting) < count
    assert sum(len(arg) for args in list(session.waiting) for arg in args) < 2 * MAX_WAITING_BYTES
    got = read_replies(sock, 1 + count)
    sending.join(30)
    busy.join(30)
    assert got == b"+OK\r\n" * (1 + count)
    still_serving(gateway)


def _direct_and_through(settings: Settings, gateway: Gateway, data: bytes) -> tuple[bytes, bytes]:
    """What Redis and what the gateway send back for ``data`` (then the connection closes)."""
    url = redis.connection.parse_url(settings.redis_url)
    answers = []
    for address in ((url["host"], url["port"]), gateway.address()):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(data)
        answers.append(read_until_closed(sock))
    return answers[0], answers[1]


@pytest.mark.parametrize(
    "broken",
    [b"*1\r\n$x\r\n", b'ECHO "unbalanced\r\n', b"*2\r\n$4\r\nECHO\r\n+abc\r\n"],
    ids=["bulk-length", "inline-quotes", "not-a-bulk"],
)
def test_commands_before_a_protocol_error_run_and_are_answered(
    gateway: Gateway, settings: Settings, client: Client, broken: bytes
) -> None:
    """A read holding whole commands and then a broken one: Redis runs and answers those, then
    sends the error and closes. The gateway dropped them (their replies, and their effects: the
    INCR never ran) and sent only the error."""
    client.delete("counter")
    data = b"INCR counter\r\n" + encode([b"INCR", b"counter"]) + b"PING\r\n" + broken
    direct, through = _direct_and_through(settings, gateway, data)
    assert direct.startswith(b":1\r\n:2\r\n+PONG\r\n-ERR Protocol error")
    assert through == direct.replace(b":1\r\n:2\r\n", b":3\r\n:4\r\n", 1)
    assert client.get("counter") == b"4"
    still_serving(gateway)


def test_commands_before_a_protocol_error_wait_for_an_ai_command(
    gateway: Gateway, client: Client
) -> None:
    """The error comes after the replies of every command before it, an AI.* one included."""
    sock = raw_socket(gateway)
    sock.sendall(b"AI.TENSORSET t INT8 1 VALUES 5\r\nEXISTS t\r\n*1\r\n$x\r\n")
    assert read_until_closed(sock) == (b"+OK\r\n:1\r\n-ERR Protocol error: invalid bulk length\r\n")
    still_serving(gateway)


def test_a_negative_array_count_is_skipped_as_redis_skips_it(
    gateway: Gateway, settings: Settings
) -> None:
    data = b"*-5\r\n*0\r\n*-1\r\nSET a 1\r\nGET a\r\nQUIT\r\n"
    direct, through = _direct_and_through(settings, gateway, data)
    assert direct == b"+OK\r\n$1\r\n1\r\n+OK\r\n"
    assert through == direct


@pytest.mark.parametrize(
    "pipeline",
    [
        b"SET a 1\r\nBLPOP emptylist 0\r\nGET a\r\n",
        b"LPUSH l x\r\nBLPOP l 0\r\nGET a\r\n",  # served at once: every reply comes
        b"SET a 1\r\nXREAD BLOCK 0 STREAMS s $\r\n",
    ],
    ids=["blocked", "served", "xread"],
)
def test_a_half_close_after_a_blocking_command_gets_what_redis_answers(
    gateway: Gateway, settings: Settings, client: Client, pipeline: bytes
) -> None:
    """A pipeline holding a blocking command, then shutdown(SHUT_WR): Redis answers what it
    ran before the end reached it, then frees the client (a waiting BLPOP ends unanswered).
    The gateway closed at once, dropping every reply, those before the BLPOP included."""
    url = redis.connection.parse_url(settings.redis_url)
    answers = []
    for address in ((url["host"], url["port"]), gateway.address()):
        client.delete("l", "a", "emptylist")
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(pipeline)
        sock.shutdown(socket.SHUT_WR)
        answers.append(read_until_closed(sock))
    assert answers[0].startswith((b"+OK\r\n", b":1\r\n"))
    assert answers[1] == answers[0]
    wait_until(lambda: len(gateway.sessions) == 0, timeout=10)
    still_serving(gateway)


def test_a_cluster_connection_opened_while_the_client_does_not_read_waits_too(
    redis_cluster: Any, cluster_client: Any, cluster_settings: Settings
) -> None:
    """While a client does not read its replies, the gateway stops reading Redis and they wait
    there. A connection to another master opened meanwhile (a command for its slot) was read in
    full, its replies piling up in the gateway."""
    tags = iter(f"t{n}" for n in range(1000))
    first = next(tags)
    second = next(t for t in tags if redis_cluster.master_of(t) != redis_cluster.master_of(first))
    value = b"v" * (1 << 20)
    for tag in (first, second):
        cluster_client.set(f"{{{tag}}}big", value)
    count = 24
    with running_gateway(cluster_settings) as gw:
        sock = raw_socket(gw)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.sendall(encode([b"GET", f"{{{first}}}big".encode()]) * count)
        wait_until(lambda: len(gw.sessions) == 1, timeout=10)
        (session,) = gw.sessions
        wait_until(lambda: session.upstreams_paused, timeout=10)
        sock.sendall(encode([b"GET", f"{{{second}}}big".encode()]) * count)
        time.sleep(1.0)  # time for the second master's replies to come, were they read
        assert session.transport is not None
        held = sum(len(slot.data or b"") for slot in list(session.replies))
        assert held + session.transport.get_write_buffer_size() < 8 << 20
        reply = encode(value)
        got = bytearray()
        while len(got) < 2 * count * len(reply):
            got += sock.recv(1 << 20)
        assert got == reply * (2 * count)


def test_client_reply_on_inside_multi_is_queued(gateway: Gateway, settings: Settings) -> None:
    """Redis queues CLIENT REPLY ON in a transaction and answers it in EXEC's reply; the gateway
    answered it at once (+OK, and an EXEC array one short)."""
    data = b"MULTI\r\nCLIENT REPLY ON\r\nPING\r\nEXEC\r\nQUIT\r\n"
    direct, through = _direct_and_through(settings, gateway, data)
    assert direct == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n+PONG\r\n+OK\r\n"
    assert through == direct


def test_client_reply_on_queued_after_off_takes_effect_when_exec_runs(
    gateway: Gateway, settings: Settings
) -> None:
    """OFF inside MULTI takes effect at once at the gateway, ON there is queued; once EXEC ran
    that ON, the replies came no more: the PING after the transaction went unanswered (Redis
    answers it). A transaction that did not run leaves them off at the gateway, where OFF took
    effect at once (on Redis, which never ran that OFF, they stay on: README says so)."""
    data = b"MULTI\r\nCLIENT REPLY OFF\r\nPING\r\nCLIENT REPLY ON\r\nEXEC\r\nPING\r\nQUIT\r\n"
    direct, through = _direct_and_through(settings, gateway, data)
    assert direct.endswith(b"+PONG\r\n+OK\r\n")
    assert through == b"+OK\r\n+PONG\r\n+OK\r\n"
    aborted = b"MULTI\r\nCLIENT REPLY OFF\r\nCLIENT REPLY ON\r\nNOSUCH\r\nEXEC\r\nPING\r\nQUIT\r\n"
    assert _direct_and_through(settings, gateway, aborted)[1] == b"+OK\r\n"


@pytest.mark.parametrize(
    "queued",
    [
        b"CLIENT REPLY ON\r\nCLIENT REPLY OFF\r\n",
        b"CLIENT REPLY OFF\r\nCLIENT REPLY ON\r\nCLIENT REPLY OFF\r\n",
    ],
    ids=["on-off", "off-on-off"],
)
def test_client_reply_off_after_an_on_queued_in_multi_stays_off(
    gateway: Gateway, settings: Settings, queued: bytes
) -> None:
    """EXEC runs the transaction's CLIENT REPLY commands in order: an OFF after the ON leaves
    replies off on Redis, but the gateway turned them on again for the ON it saw queued."""
    data = b"MULTI\r\n" + queued + b"PING\r\nEXEC\r\nPING\r\nQUIT\r\n"
    direct, through = _direct_and_through(settings, gateway, data)
    assert b"PONG" not in direct.split(b"*")[-1]  # Redis: nothing after EXEC's array
    assert b"PONG" not in through  # nor through the gateway (OFF there took effect at once)


def test_a_half_close_before_a_blocking_command_starts_ends_it_too(gateway: Gateway) -> None:
    """The end came while a blocking command still waited behind an AI.* command: it was sent
    to Redis later, blocked there for good, and the client (and its connections) with it."""
    sock = raw_socket(gateway)
    sock.sendall(b"AI.TENSORSET t INT8 1 VALUES 5\r\nBLPOP emptylist 0\r\nPING\r\n")
    sock.shutdown(socket.SHUT_WR)
    assert read_until_closed(sock) == b"+OK\r\n"
    wait_until(lambda: len(gateway.sessions) == 0, timeout=10)
    still_serving(gateway)


def test_a_half_close_after_a_non_blocking_xread_runs_everything(gateway: Gateway) -> None:
    """XREAD without BLOCK answers at once; it was counted as blocking, so the end went on to
    Redis before the AI.* command behind it, which then failed writing to a half-closed
    connection (RuntimeError in the gateway)."""
    sock = raw_socket(gateway)
    sock.sendall(b"DEL s\r\nXREAD COUNT 1 STREAMS s 0\r\nAI.TENSORSET t INT8 1 VALUES 5\r\n"
                 b"EXISTS t\r\n")  # fmt: skip
    sock.shutdown(socket.SHUT_WR)
    assert read_until_closed(sock).endswith(b"*-1\r\n+OK\r\n:1\r\n")
    still_serving(gateway)


def test_a_protocol_error_after_a_subscribe_reaches_redis_once(
    gateway: Gateway, settings: Settings, client: Client
) -> None:
    """A SUBSCRIBE makes the connection a pipe; after a protocol error in the same read the
    pipe sent the whole read to Redis again (the INCR ran twice) and the error never came."""
    client.delete("counter")
    data = b"INCR counter\r\nSUBSCRIBE ch\r\n*1\r\n$x\r\n"
    direct, through = _direct_and_through(settings, gateway, data)
    assert direct.startswith(b":1\r\n")
    assert direct.endswith(b"-ERR Protocol error: invalid bulk length\r\n")
    assert through == direct.replace(b":1\r\n", b":2\r\n", 1)
    assert client.get("counter") == b"2"  # once each


def test_a_client_that_never_reads_is_disconnected_past_max_inflight(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a client reads none of its replies, its commands go on to Redis, which keeps the
    replies; past MAX_INFLIGHT unanswered ones the gateway would hold the rest for good, so it
    disconnects the client (as Redis does past an output buffer limit). A client that reads
    gets every reply of a pipeline longer than that."""
    monkeypatch.setattr(session_module, "MAX_INFLIGHT", 2_000)
    con = connect(gateway)
    pipe = con.pipeline(transaction=False)
    for n in range(10_000):
        pipe.execute_command("ECHO", n)
    assert pipe.execute() == [str(n).encode() for n in range(10_000)]
    sock = raw_socket(gateway)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 12)
    echo = encode([b"ECHO", b"e" * 4096])
    sending = threading.Thread(target=_send_quietly, args=(sock, echo * 20_000), daemon=True)
    sending.start()
    sending.join(30)
    assert not sending.is_alive()  # it got through, or the connection was dropped
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass  # closed by the gateway: reset, or the end of what it wrote
    except TimeoutError:
        pytest.fail("the client was kept waiting for good")
    except ConnectionResetError:
        pass
    still_serving(gateway)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


@pytest.mark.parametrize(
    "data",
    [
        b"*11\r\n" + b"$4\r\nPING\r\n" * 11,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n",  # (Redis resets a connection it
        b"AUTH wrong\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n",  # left bytes unread on)
        b"AUTH secret\r\n"
        + resp_command(b"SET", b"k", b"x" * 20_000)
        + resp_command(b"MGET", *[b"k"] * 11)
        + b"QUIT\r\n",
        resp_command(b"HELLO", b"2", b"AUTH", b"default", b"secret")
        + resp_command(b"MSET", *[b"k", b"v"] * 6)
        + b"QUIT\r\n",
    ],
    ids=["long-array", "long-bulk", "after-a-failed-auth", "after-auth", "after-hello"],
)
def test_before_auth_redis_limits_apply_as_redis_applies_them(
    client: Client, settings: Settings, data: bytes
) -> None:
    """With ``--require-auth`` a client not authenticated yet may send no array over 10 items
    and no string over 16 KB (Redis' own limits: the gateway buffered 200 MB from such a
    client); an AUTH pipelined before a longer command lifts them, as in Redis, which runs the
    AUTH before it reads on."""
    with requiring_auth(client, settings) as gw:
        direct, through = _direct_and_through(settings, gw, data)
    if data[4:15] == b"$5\r\nHELLO\r\n":  # its reply holds the connection's id
        direct, through = direct[reply_end(direct, 0) :], through[reply_end(through, 0) :]
    assert through == direct
    assert direct.startswith((b"+OK", b"*", b"-ERR Protocol error: unauthenticated", b"-WRONGPASS"))


def test_a_command_held_behind_an_auth_may_arrive_in_pieces(
    client: Client, settings: Settings
) -> None:
    """What waited for an AUTH's answer (past the unauthenticated limits) held only the start
    of a 20 KB command: reading it started no command, and reading the client stayed paused for
    good."""
    value = b"x" * 20_000
    whole = b"AUTH secret\r\n" + resp_command(b"SET", b"k", value) + b"GET k\r\nQUIT\r\n"
    with requiring_auth(client, settings) as gw:
        sock = raw_socket(gw)
        sock.sendall(whole[:10_000])
        time.sleep(0.3)
        sock.sendall(whole[10_000:])
        assert read_until_closed(sock) == (b"+OK\r\n+OK\r\n$20000\r\n" + value + b"\r\n+OK\r\n")
