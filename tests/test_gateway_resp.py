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


def gathered(chunks: list[bytes]) -> tuple[bool, list[str]]:
    """The first reply gathered, the rest decoded by hiredis (as ``Upstream`` does)."""
    gather, reader, out = Gather(), decoder(), []
    n = 0
    rest = None
    while rest is None:
        rest = gather.feed(chunks[n])
        n += 1
    if gather.shaped:
        out.append(repr(gather.reply))
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
    ],
)
def test_any_read_boundaries(reply: bytes, shaped: bool) -> None:
    stream = reply + TAIL
    expected = hiredis_replies(stream)
    rng = random.Random(3)
    sizes = [1, 2, 3, 7, 1000, 65536, 256000, len(stream)]
    splits = [list(range(size, len(stream), size)) for size in sizes[3:]]
    splits += [list(range(1, 40)) + list(range(40, len(stream), 100_000))]  # headers cut
    splits += [sorted(rng.sample(range(1, len(stream)), 5)) for _ in range(100)]
    for cuts in splits:
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert gathered(chunks) == (shaped, expected), cuts[:8]
