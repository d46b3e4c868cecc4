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
    """The commands read from ``chunks``, each a read of the connection: handed to ``feed``,
    or received into the buffer the reader asks for while it receives an argument in place."""
    r, out = reader(), []
    for chunk in chunks:
        while chunk:
            target = r.receiving
            if target is None:
                out += r.feed(chunk)
                break
            n = min(len(target), len(chunk))
            target[:n] = chunk[:n]
            chunk = chunk[n:]
            r.filled(n)
    assert r.buffered == 0 and r.receiving is None
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


AI_LARGE = [
    [b"AI.TENSORSET", b"t", b"UINT8", b"102400", b"BLOB", LARGE],
    [b"GET", b"k"],
    [b"ai.modelstore", b"m", b"TORCH", b"CPU", b"BLOB", LARGE, b"x" * 10, LARGE + b"y"],
    [b"SET", b"k", LARGE],  # not an AI.* command: read as before
    [b"AI.SCRIPTSTORE", b"s", b"CPU", b"ENTRY_POINTS", b"1", b"f", b"SOURCE", LARGE],
    [b"PING"],
]


@pytest.mark.parametrize("size", [5, 1000, 65536, 100_000, 256000, 1 << 20])
def test_ai_arguments_received_in_place(size: int) -> None:
    """An AI.* command's large arguments whose rest is still to come are received in place
    (read-only memoryviews); the commands are the same whatever the reads' boundaries."""
    stream = b"".join(command(*args) for args in AI_LARGE)
    got = read_in([stream[i : i + size] for i in range(0, len(stream), size)])
    assert got == AI_LARGE
    in_place = [arg for args in got for arg in args if isinstance(arg, memoryview)]
    if size < len(LARGE):
        assert len(in_place) == 4  # the AI.* commands' large arguments, never SET's
        assert all(view.readonly for view in in_place)


def test_an_argument_received_in_place_is_checked() -> None:
    """Its CRLF must follow it; the limits hold for the whole command."""
    r = reader()
    r.feed(b"*2\r\n$7\r\nAI.ECHO\r\n$70000\r\nab")
    assert r.receiving is not None and len(r.receiving) == 70000 - 2
    r.receiving[:] = b"c" * len(r.receiving)
    r.filled(len(r.receiving))
    with pytest.raises(ProtocolError, match="CRLF"):
        r.feed(b"xx*1\r\n$4\r\nPING\r\n")
    small = RequestReader(max_bulk=1 << 20, max_args=10, max_request=100_000)
    small.feed(b"*3\r\n$7\r\nAI.ECHO\r\n$70000\r\nab")
    small.receiving[:] = b"c" * len(small.receiving)  # type: ignore[index]
    small.filled(len(small.receiving))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="max-request"):
        small.feed(b"\r\n$40000\r\n")
    name = reader()  # a command's name is never received in place
    assert name.feed(b"*1\r\n$70000\r\nAI.") == [] and name.receiving is None


def test_an_unfinished_command_is_given_back_as_it_came() -> None:
    """``take_unfinished`` (a connection that becomes a pipe to Redis passes it on): the bytes
    of the command not complete yet, wherever the reads stopped, in place or not."""
    first = command(b"SUBSCRIBE", b"ch")
    later = command(b"AI.MODELSTORE", b"m", b"TORCH", b"CPU", b"BLOB", LARGE, b"xy", LARGE)
    stream = first + later
    for cut in [*range(len(first) + 1, len(first) + 60), *range(len(first) + 60, len(stream), 997)]:
        for size in (7, 4096, 70_000, len(stream)):
            r, done, pos = reader(), [], 0
            while pos < cut:
                target = r.receiving
                n = min(size, cut - pos, len(target) if target is not None else size)
                if target is None:
                    done += r.feed(stream[pos : pos + n])
                else:
                    target[:n] = stream[pos : pos + n]
                    r.filled(n)
                pos += n
            assert done == [[b"SUBSCRIBE", b"ch"]]
            assert r.take_unfinished() == stream[len(first) : cut], (cut, size)
            assert r.buffered == 0 and r.receiving is None
