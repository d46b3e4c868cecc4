"""Reading reply lists so that no reply is lost (``client.reply_lists``), against a real Redis:
an item leaves a list only after it was read, and an answer lost on the way loses nothing; and
``Wire.post``, which sends a private list's removal without waiting for Redis' answer."""

from __future__ import annotations

import time

import pytest

from aiworker import Client
from aiworker.client import reply_lists
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
