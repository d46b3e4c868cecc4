"""The gateway's command reader (``gateway.frames``), pure: the same commands whatever the reads'
boundaries (whole reads take hiredis's short way, the rest the header scanner), and only arrays of
bulk strings accepted, as Redis accepts them."""

from __future__ import annotations

import random

import pytest

from aiworker.gateway.frames import ProtocolError, RequestReader
from aiworker.gateway.resp import command

COMMANDS = [
    [b"GET", b"k"],
    [b"SET", b"k", b"\r\n+x\r\n*0\r\n$-1\r\n=3\r\n"],  # RESP inside a value
    [b"AI.TENSORSET", b"t", b"UINT8", b"300000", b"BLOB", bytes(range(256)) * 1172 + b"\0" * 48],
    [b"PING"],
]
STREAM = b"".join(command(*args) for args in COMMANDS) + b"*0\r\nECHO 'inline x'\r\n"
EXPECTED = [*COMMANDS, [b"ECHO", b"inline x"]]


def reader() -> RequestReader:
    return RequestReader(max_bulk=512 * 1024 * 1024, max_args=1024, max_request=1 << 30)


def read_in(chunks: list[bytes]) -> list[list[bytes]]:
    r, out = reader(), []
    for chunk in chunks:
        out += r.feed(chunk)
    assert r.buffered == 0
    return out


def test_whole_reads() -> None:
    assert read_in([STREAM]) == EXPECTED
    assert read_in([command(*args) for args in COMMANDS]) == COMMANDS


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64, 1000, 65536, 256 * 1024])
def test_reads_of_any_size(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert read_in(chunks) == EXPECTED


def test_random_boundaries() -> None:
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(STREAM)), 6))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert read_in(chunks) == EXPECTED


@pytest.mark.parametrize(
    "frame",
    [
        b"*1\r\n+PING\r\n",  # a simple string
        b"*1\r\n=8\r\ntxt:PING\r\n",  # a RESP3 verbatim string
        b"*1\r\n:1\r\n",
        b"*2\r\n$3\r\nGET\r\n*0\r\n",  # a nested array
        b"*2\r\n$3\r\nGET\r\n$-1\r\n",
        b"*2\r\n$3\r\nGET\r\n$04\r\nabcd\r\n",
    ],
)
def test_only_arrays_of_bulk_strings(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        reader().feed(frame)
    with pytest.raises(ProtocolError):  # the same, after a command read whole
        reader().feed(command(b"PING") + frame)


def test_limits_hold_on_whole_reads() -> None:
    small = RequestReader(max_bulk=10, max_args=3, max_request=1 << 20)
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        small.feed(command(b"SET", b"k", b"x" * 11))
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        RequestReader(max_bulk=10, max_args=3, max_request=1 << 20).feed(
            command(b"MSET", b"a", b"1", b"b")
        )


def test_an_unfinished_command_is_the_scanners() -> None:
    """Its headers are checked as they come, and it counts as buffered (the slow-loris timer)."""
    r = reader()
    assert r.feed(b"*2\r\n$3\r\nGET\r\n") == []
    assert r.buffered > 0
    assert r.feed(b"$1\r\nk\r\n") == [[b"GET", b"k"]]
    assert r.buffered == 0
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        reader().feed(b"*2000000\r\n$4\r\nPING\r\n")


LARGE = bytes(range(256)) * 400


@pytest.mark.parametrize("size", [7, 1000, 65536, 256000, 1 << 20])
def test_large_bulks_in_any_reads(size: int) -> None:
    """Commands holding a large bulk, anywhere in the array, between small commands: the same
    arguments whatever the reads' boundaries."""
    commands = [
        [b"SET", b"k", LARGE, b"EX", b"100"],
        [b"GET", b"k"],
        [b"MSET", b"a", LARGE, b"b", LARGE + b"x"],
        [b"ECHO", LARGE],
    ]
    stream = b"".join(command(*args) for args in commands)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    assert read_in(chunks) == commands


@pytest.mark.parametrize(
    "frame",
    [
        b"*2\r\n$4\r\nECHO\r\n$0%d\r\n%s\r\n" % (len(LARGE), LARGE),  # a leading zero
        b"*02\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(LARGE), LARGE),
    ],
)
def test_large_commands_keep_the_header_rules(frame: bytes) -> None:
    """A large bulk's array is refused for a header Redis would refuse, read whole or not."""
    for size in (len(frame), 4096):
        r = reader()
        with pytest.raises(ProtocolError):
            for i in range(0, len(frame), size):
                r.feed(frame[i : i + size])
