"""The gateway's reading of large internal replies (``resp.Gather``), pure: whatever the reads'
boundaries, the replies hiredis would give, and replies of another shape left to hiredis."""

from __future__ import annotations

import random
from typing import Any

import hiredis
import pytest
from redis._parsers.base import BaseParser

from aiworker.gateway.resp import Gather

BIG = bytes(range(256)) * 1000
TENSOR = (
    b"*8\r\n$5\r\nshape\r\n$3\r\n256\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$4\r\nkind\r\n"
    b"$6\r\ntensor\r\n$4\r\nblob\r\n$%d\r\n%s\r\n" % (len(BIG), BIG)
)
# replies that follow in the same reads
TAIL = b":1\r\n$3\r\nabc\r\n*2\r\n$1\r\nk\r\n$-1\r\n"


def decoder() -> Any:
    return hiredis.Reader(replyError=BaseParser.parse_error)


def hiredis_replies(stream: bytes) -> list[str]:
    reader, out = decoder(), []
    reader.feed(stream)
    while (reply := reader.gets()) is not False:
        out.append(repr(reply))
    return out


def as_bytes(reply: Any) -> Any:
    """A reply with its memoryviews (strings received in place) as bytes."""
    if isinstance(reply, list):
        return [as_bytes(item) for item in reply]
    return bytes(reply) if isinstance(reply, memoryview) else reply


def gathered(chunks: list[bytes], in_place: bool = False) -> tuple[bool, list[str]]:
    """The first reply gathered, the rest decoded by hiredis (as ``Upstream`` does); with
    ``in_place``, a chunk goes into the buffer the gatherer asks for while it receives a string
    in place, as the connection's reads then do."""
    gather, reader, out = Gather(in_place), decoder(), []
    chunks = list(chunks)
    n = 0
    rest = None
    while rest is None:
        target = gather.receiving
        if target is not None:
            chunk = chunks[n]
            taken = min(len(target), len(chunk))
            target[:taken] = chunk[:taken]
            gather.filled(taken)
            if taken < len(chunk):
                chunks[n] = chunk[taken:]
                continue
            n += 1
            continue
        rest = gather.feed(chunks[n])
        n += 1
    if gather.shaped:
        out.append(repr(as_bytes(gather.reply)))
        reader.feed(rest)
    else:
        for chunk in gather.chunks:
            reader.feed(chunk)
    for chunk in chunks[n:]:
        reader.feed(chunk)
    while (reply := reader.gets()) is not False:
        out.append(repr(reply))
    return gather.shaped, out


@pytest.mark.parametrize(
    ("reply", "shaped"),
    [
        (TENSOR, True),
        (b"$%d\r\n%s\r\n" % (len(BIG), BIG), True),
        (b"*3\r\n$-1\r\n$%d\r\n%s\r\n$0\r\n\r\n" % (len(BIG), BIG), True),  # HMGET's nil
        (b"*2\r\n$1\r\na\r\n*1\r\n$%d\r\n%s\r\n" % (len(BIG), BIG), False),  # nested
        (b"-ERR no\r\n$%d\r\n%s\r\n" % (len(BIG), BIG), False),  # an error first
        (b"*100\r\n" + b"$1\r\na\r\n" * 99 + b"$%d\r\n%s\r\n" % (len(BIG), BIG), False),
        (b"*2\r\n$%d\r\n%s\r\n:1\r\n" % (len(BIG), BIG), False),  # an integer after it
    ],
)
@pytest.mark.parametrize("in_place", [False, True])
def test_any_read_boundaries(reply: bytes, shaped: bool, in_place: bool) -> None:
    stream = reply + TAIL
    expected = hiredis_replies(stream)
    rng = random.Random(3)
    sizes = [1, 2, 3, 7, 1000, 65536, 256000, len(stream)]
    splits = [list(range(size, len(stream), size)) for size in sizes[3:]]
    splits += [list(range(1, 40)) + list(range(40, len(stream), 100_000))]  # headers cut
    splits += [sorted(rng.sample(range(1, len(stream)), 5)) for _ in range(100)]
    for cuts in splits:
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert gathered(chunks, in_place) == (shaped, expected), cuts[:8]


def test_large_strings_received_in_place() -> None:
    """Asked to, the gatherer receives a large string whose rest is still to come straight into
    a buffer of its own, and gives it as a read-only memoryview; small ones stay bytes."""
    gather = Gather(in_place=True)
    assert gather.feed(TENSOR[:70_000]) is None
    target = gather.receiving
    assert target is not None and len(target) == len(TENSOR) - 2 - 70_000
    target[:1000] = TENSOR[70_000:71_000]
    gather.filled(1000)
    assert gather.receiving is not None and len(gather.receiving) == len(target) - 1000
    gather.receiving[:] = TENSOR[71_000:-2]
    gather.filled(len(target) - 1000)
    assert gather.receiving is None
    assert gather.feed(b"\r\n") == b""
    assert isinstance(gather.reply, list)
    *fields, blob = gather.reply
    assert all(type(f) is bytes for f in fields)
    assert isinstance(blob, memoryview) and blob.readonly and blob == BIG
    plain = Gather()  # not asked to: joined from the reads
    plain.feed(TENSOR[:70_000])
    assert plain.receiving is None
