"""The reader of large replies (``storage.bulk_read``): what hiredis would return, parsed from
any split of the bytes, with large bulk strings received in place; and the worker's read of large
inputs through it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import hiredis
import numpy as np
import pytest
from conftest import stub_blob

from aiworker import Client
from aiworker.execution import limits, state
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import ModelExecute
from aiworker.storage import bulk_read, tensor_io
from aiworker.storage.bulk_read import BulkReader
from aiworker.storage.wire import Wire

LARGE = bytes(range(256)) * 1000  # 256,000 bytes: over LARGE_BULK
REPLIES = (
    b"+OK\r\n"
    b"-ERR something went wrong\r\n"
    b":42\r\n"
    b":-7\r\n"
    b"$-1\r\n"
    b"*-1\r\n"
    b"$0\r\n\r\n"
    b"$5\r\nhe\r\no\r\n"
    b"*3\r\n*2\r\n$2\r\nok\r\n:1\r\n*0\r\n$" + str(len(LARGE)).encode() + b"\r\n" + LARGE + b"\r\n"
    b"*2\r\n$3\r\nend\r\n+QUEUED\r\n"
)
COUNT = 10


def hiredis_replies(data: bytes) -> list[object]:
    reader = hiredis.Reader()
    reader.feed(data)
    out = []
    while (reply := reader.gets()) is not False:
        out.append(reply)
    return out


def plain(value: object) -> object:
    """Replies with memoryviews as bytes, errors as their text (to compare)."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, hiredis.ReplyError):
        return ("error", str(value))
    return value


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def send_in_pieces(
    sock: socket.socket, data: bytes, size: int, close: bool = False
) -> threading.Thread:
    def send() -> None:
        for start in range(0, len(data), size):
            sock.sendall(data[start : start + size])
        if close:
            sock.close()

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 4096, 65536, 1 << 20])
def test_replies_are_what_hiredis_returns_however_the_bytes_arrive(
    pair: tuple[socket.socket, socket.socket], piece: int
) -> None:
    ours, theirs = pair
    sender = send_in_pieces(theirs, REPLIES, piece)
    reader = BulkReader(ours, bytearray(4096))
    got = reader.replies(COUNT, [])
    sender.join()
    assert plain(got) == plain(hiredis_replies(REPLIES))
    assert reader.buffered == 0
    large = got[8][2]
    assert isinstance(large, memoryview) and large.readonly, "received in place, read-only"
    assert isinstance(got[7], bytes), "a small bulk is bytes, as hiredis gives it"


def test_a_large_bulk_lands_in_a_buffer_of_its_own(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Received into its own buffer: not a view of the receive buffer, which the next reply
    reuses; what arrived with its header is carried over."""
    ours, theirs = pair
    chunk = bytearray(4096)
    data = b"$" + str(len(LARGE)).encode() + b"\r\n" + LARGE + b"\r\n+after\r\n"
    sender = send_in_pieces(theirs, data, 1 << 20)
    reader = BulkReader(ours, chunk)
    blob, after = reader.replies(2, [])
    sender.join()
    assert blob.tobytes() == LARGE and after == b"after"
    assert np.frombuffer(blob, np.uint8).base is not chunk


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"?what\r\n", "reply type byte"),
        (b"$abc\r\n", "invalid literal"),
        (b"*2\r\n:1x\r\n", "invalid literal"),
        (b"$3\r\nabcXY", "terminator"),
        (b"$" + str(len(LARGE)).encode() + b"\r\n" + LARGE + b"XY", "terminator"),
        (b"+" + b"x" * (bulk_read.MAX_LINE + 10), "too long"),
    ],
)
def test_malformed_replies_raise(
    pair: tuple[socket.socket, socket.socket], data: bytes, problem: str
) -> None:
    ours, theirs = pair
    sender = send_in_pieces(theirs, data, 1 << 16)
    with pytest.raises(hiredis.ProtocolError, match=problem):
        BulkReader(ours, bytearray(4096)).replies(1, [])
    sender.join()


@pytest.mark.parametrize("cut", [3, 100, 70_000])
def test_a_connection_closed_midway_raises(
    pair: tuple[socket.socket, socket.socket], cut: int
) -> None:
    ours, theirs = pair
    data = b"$" + str(len(LARGE)).encode() + b"\r\n" + LARGE[:cut]
    sender = send_in_pieces(theirs, data, 1 << 20, close=True)
    with pytest.raises(ConnectionError):
        BulkReader(ours, bytearray(4096)).replies(1, [])
    sender.join()


# On the worker's connection ---------------------------------------------------------------


def memory_of(array: np.ndarray) -> object:
    """The object whose memory an array (a view of views) wraps."""
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base


def test_the_read_of_a_large_input_receives_it_in_place(client: Client) -> None:
    """A job's large input comes from the guarded read's MULTI straight into its own buffer:
    the decoded array is a view of it (hiredis would have made a bytes object of a copy)."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    big = np.random.default_rng(0).random((3, 224, 224), np.float32)
    tensor_io.write(client, "x", big)
    wire = Wire(client.connection_pool)
    request = ModelExecute("m", ("x", "x"), ("y",))
    cache = state.MetaCache()
    for _ in range(2):  # the first read learns that x is large
        [snapshot] = state.read(wire, [request], limits.Limits(), cache, Keys())
    array = snapshot.tensor("x")
    np.testing.assert_array_equal(array, big)
    assert not array.flags.writeable, "a stored tensor is read-only to the job"
    assert isinstance(memory_of(array), memoryview), type(memory_of(array))
    assert wire.execute("PING") == b"PONG", "the connection is in step afterwards"
    wire.close()


def test_a_read_of_small_tensors_stays_on_hiredis(client: Client) -> None:
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    tensor_io.write(client, "x", np.arange(4, dtype=np.float32))
    wire = Wire(client.connection_pool)
    [snapshot] = state.read(
        wire, [ModelExecute("m", ("x",), ("y",))], limits.Limits(), state.MetaCache(), Keys()
    )
    array = snapshot.tensor("x")
    assert array.tolist() == [0, 1, 2, 3] and isinstance(memory_of(array), bytes)
    wire.close()


def test_a_large_values_text_is_read_in_place_too(client: Client) -> None:
    """A tensor stored as VALUES text (redis-cli's way) of over 64 KB comes as a memoryview too,
    and decodes as it did from bytes."""
    client.modelstore("m", "STUB", "CPU", stub_blob("identity"))
    values = np.arange(30_000, dtype=np.int32)
    text = " ".join(map(str, values.tolist()))
    assert len(text) > bulk_read.LARGE_BULK
    client.hset("v", mapping={"kind": "tensor", "dtype": "INT32", "shape": "30000", "values": text})
    wire = Wire(client.connection_pool)
    request = ModelExecute("m", ("v",), ("y",))
    cache = state.MetaCache()
    for _ in range(2):  # the first read learns that v is large
        [snapshot] = state.read(wire, [request], limits.Limits(), cache, Keys())
    assert cache.is_large("v")
    np.testing.assert_array_equal(snapshot.tensor("v"), values)
    wire.close()


def test_the_client_receives_a_large_tensor_in_place(client: Client) -> None:
    """``Client.tensorget`` of a large tensor: its blob straight into a buffer of its own; the
    array is read-only as before, and a mutable one is a copy."""
    big = np.random.default_rng(1).random((512, 512), np.float32)  # 1 MB
    client.tensorset("big", big)
    array = client.tensorget("big")
    np.testing.assert_array_equal(array, big)
    assert isinstance(memory_of(array), memoryview) and not array.flags.writeable
    mutable = client.tensorget("big", as_numpy_mutable=True)
    assert mutable.flags.writeable and not np.shares_memory(mutable, array)
    client.tensorset("small", np.arange(3, dtype=np.int64))
    assert isinstance(memory_of(client.tensorget("small")), bytes)
