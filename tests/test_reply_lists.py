"""Reading reply lists so that no reply is lost (``client.reply_lists``), against a real Redis:
an item leaves a list only after it was read, and an answer lost on the way loses nothing; and
``Wire.post``, which sends a private list's removal without waiting for Redis' answer."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest
from conftest import stub_blob

from aiworker import Client, Worker
from aiworker.client import reply_lists
from aiworker.embedded import RedisServer
from aiworker.storage import wire as wire_module
from aiworker.storage.wire import Wire


def run(client: Client, commands: list[tuple[object, ...]]) -> list[object]:
    """The commands in one round trip, error replies in place."""
    return Wire(client.connection_pool).pipeline(commands)


def test_a_look_leaves_the_item_until_the_next_look_removes_it(client: Client) -> None:
    client.rpush("r", b"notice", b"reply")
    private = reply_lists.PrivateList("r")
    assert private.looked(run(client, private.look(0.1))) == b"notice"
    assert client.lrange("r", 0, -1) == [b"notice", b"reply"]  # read, not taken
    again = private.look(0.1)
    run(client, again)  # its answer lost: the same look is sent again
    assert private.looked(run(client, again)) == b"reply"
    assert client.lrange("r", 0, -1) == [b"reply"]  # the LREM ran twice, removing one item
    assert private.looked(run(client, private.look(0.05))) is None  # nothing more came
    assert client.lrange("r", 0, -1) == []
    client.rpush("r", b"late")
    run(client, [private.done()])
    assert not client.exists("r")


def test_a_failed_removal_raises_and_is_asked_again(client: Client) -> None:
    client.rpush("r", b"one")
    private = reply_lists.PrivateList("r")
    assert private.looked(run(client, private.look(0.1))) == b"one"
    client.delete("r")
    client.set("r", "not a list")
    with pytest.raises(Exception, match="WRONGTYPE"):
        private.looked(run(client, private.look(0.1)))
    client.delete("r")
    client.rpush("r", b"one", b"two")
    assert private.looked(run(client, private.look(0.1))) == b"two"


def test_a_shared_reader_trims_what_it_read_once(client: Client) -> None:
    client.rpush("s", b"a", b"b", b"c")
    reader = reply_lists.SharedListReader("s", batch=2)
    assert reader.read(run(client, reader.round(0.1))) == [b"a", b"b"]
    client.rpush("s", b"d")
    lost = reader.round(0.1)  # trims a, b; its answer is lost
    run(client, lost)
    assert client.lrange("s", 0, -1) == [b"c", b"d"]
    assert reader.read(run(client, reader.round(0.1))) == [b"c", b"d"]  # not trimmed again
    unsent = reader.round(0.1)  # trims c, d, but never reaches Redis
    assert unsent[0] == ("LTRIM", "s", 2, -1)
    client.rpush("s", b"e")
    # the same replies read again (the router drops them), none lost
    assert reader.read(run(client, reader.round(0.1))) == [b"c", b"d"]
    assert reader.read(run(client, reader.round(0.1))) == [b"e"]
    assert reader.read(run(client, reader.round(0.05))) == []
    assert not client.exists("s")  # emptied by the trim, so its expiry starts afresh


def test_a_shared_reader_waits_for_the_first_reply(client: Client) -> None:
    reader = reply_lists.SharedListReader("s")
    started = time.monotonic()
    assert reader.read(run(client, reader.round(0.2))) == []
    assert time.monotonic() - started >= 0.15  # the BLMOVE blocked for its wait


def test_posted_commands_answers_are_read_before_the_next_round_trip(client: Client) -> None:
    wire = Wire(client.connection_pool)
    client.rpush("r", b"x")
    client.set("k", b"v")
    wire.post([("UNLINK", "r"), ("DEL", "nothing")])
    assert wire.pipeline([("GET", "k")]) == [b"v"]  # not the UNLINK's 1
    assert not client.exists("r")
    client.rpush("r", b"x")
    wire.post([("UNLINK", "r")])
    time.sleep(wire_module.IDLE_CHECK_S + 0.1)  # an idle connection holding an answer to post
    assert wire.pipeline([("GET", "k")]) == [b"v"]  # is not taken for one Redis closed
    assert not client.exists("r")


def test_a_post_the_link_lost_goes_with_the_next_round_trip(client: Client) -> None:
    wire = Wire(client.connection_pool)
    client.set("k", b"v")
    client.rpush("r", b"x")

    def refuse() -> None:
        raise OSError("no route")

    wire._sending = refuse  # type: ignore[method-assign,assignment]
    wire.post([("UNLINK", "r")])  # lost on the way: kept
    assert client.exists("r")
    del wire._sending
    assert wire.pipeline([("GET", "k")]) == [b"v"]
    assert not client.exists("r")


class Interrupted(Exception):
    """What a signal handler raises (a time limit), as an ordinary exception."""


@pytest.mark.parametrize("raised", [KeyboardInterrupt, Interrupted])
def test_a_wait_interrupted_leaves_the_threads_connection_in_step(
    client: Client, worker: Worker, raised: type[BaseException]
) -> None:
    """Ctrl-C or a signal-based time limit while a job waits for its reply: the thread's job
    connection, holding an answer not read, is closed - its next jobs and reads get their own
    replies, not the ones before them."""
    client.modelstore("slow", "STUB", "CPU", stub_blob("add", sleep_ms=1500))
    client.modelstore("m", "STUB", "CPU", stub_blob("add"))
    client.tensorset("a", np.array([1.0, 2.0], np.float32))
    assert client.modelexecute("m", ["a", "a"], ["y"]) == "OK"

    def alarm(signum: int, frame: Any) -> None:
        raise raised

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.2)  # in a look after the first round trip
        with pytest.raises(raised):
            client.modelexecute("slow", ["a", "a"], ["z"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(1.0)  # the slow job's reply lands on its list meanwhile
    for n in range(3):
        assert client.modelexecute("m", ["a", "a"], [f"out{n}"]) == "OK"
        assert client.tensorget(f"out{n}").tolist() == [2.0, 4.0]


def test_a_forked_child_runs_jobs_on_a_connection_of_its_own(
    client: Client, worker: Worker, redis_server: RedisServer
) -> None:
    """A client used in a parent, then in a forked child (a fork-based process pool): the child
    neither reads the answers its parent's connection owes nor leaves the parent waiting."""
    c = Client.from_url(redis_server.url, socket_timeout=3)
    c.modelstore("m", "STUB", "CPU", stub_blob("add"))
    c.tensorset("a", np.array([1.0, 2.0], np.float32))
    assert c.modelexecute("m", ["a", "a"], ["y"]) == "OK"  # its list's removal owes an answer
    time.sleep(wire_module.IDLE_CHECK_S + 0.1)  # idle: the next use checks the connection
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its job and read are right
        code = 1
        try:
            ok = c.modelexecute("m", ["a", "a"], ["child"]) == "OK"
            code = 0 if ok and c.tensorget("child").tolist() == [2.0, 4.0] else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    started = time.monotonic()
    assert c.modelexecute("m", ["a", "a"], ["parent"]) == "OK"
    assert time.monotonic() - started < 2  # not a socket timeout's wait
    assert c.tensorget("parent").tolist() == [2.0, 4.0]
    c.close()
