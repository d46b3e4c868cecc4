"""HybridPacker: large values go to the socket without a copy; small commands use hiredis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import spawn_worker, stub_blob

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.protocol import tensor as codec
from aiworker.storage.connection import LARGE_ARGUMENT, HybridPacker, connect

MIB = 1024 * 1024


def one_mib_view() -> memoryview:
    data = np.random.default_rng(1).integers(0, 256, MIB, dtype=np.uint8)
    return memoryview(data)


def packer_of(r: object) -> HybridPacker:
    packer = r.connection_pool.connection_kwargs["command_packer"]  # type: ignore[attr-defined]
    assert isinstance(packer, HybridPacker)
    return packer


@pytest.mark.parametrize("how", ["connect", "client"])
def test_one_mib_memoryview_arrives_intact(redis_server: RedisServer, how: str) -> None:
    r = connect(redis_server.url) if how == "connect" else Client.from_url(redis_server.url)
    try:
        r.flushall()
        view = one_mib_view()
        assert r.hset("big", "blob", view) == 1  # type: ignore[arg-type]
        assert r.hget("big", "blob") == view.tobytes()
        assert r.hstrlen("big", "blob") == MIB
        # the same connection still handles small commands (hiredis path)
        assert r.set("small", "v")
        assert r.get("small") == b"v"
        assert r.hset("h", mapping={"a": 1, "b": 2.5, "c": b"x"}) == 3
        assert r.hgetall("h") == {b"a": b"1", b"b": b"2.5", b"c": b"x"}
    finally:
        r.close()


def test_large_arguments_are_not_copied(redis_server: RedisServer) -> None:
    r = connect(redis_server.url)
    try:
        view = one_mib_view()
        packed = packer_of(r).pack("HSET", "big", "blob", view)
        assert any(part is view for part in packed)
        assert sum(len(p) for p in packed if p is not view) < 1024  # only the framing is built
    finally:
        r.close()


def test_tensor_blob_goes_out_zero_copy(redis_server: RedisServer) -> None:
    array = np.arange(MIB // 4, dtype=np.float32)
    blob = codec.encode_fields(array)["blob"]
    client = Client.from_url(redis_server.url)
    try:
        packed = packer_of(client).pack("HSET", "t", "blob", blob)
        assert any(part is blob for part in packed)
        client.tensorset("t", array)
        assert np.array_equal(client.tensorget("t"), array)
    finally:
        client.close()


def test_the_job_connection_never_copies_a_huge_value(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value over a MiB (a large tensor's staged write, a large output) goes out as it is from
    the job connection too: hiredis's packer, which copies it (26-30 ms for 16 MiB), never sees
    it, alone or in a MULTI with other commands."""
    import hiredis

    from aiworker.storage import wire

    view = memoryview(np.zeros(2 * MIB // 4, np.float32)).cast("B")
    packer = hiredis.pack_command

    def small_only(command: tuple[object, ...]) -> bytes:
        assert all(not isinstance(a, memoryview) or a.nbytes <= MIB for a in command)
        return packer(command)

    monkeypatch.setattr(wire.hiredis, "pack_command", small_only)
    pieces = wire.pack([("MULTI",), ("HSET", "t", "blob", view), ("EXEC",)])
    assert any(piece is view for piece in pieces)
    client = Client.from_url(redis_server.url)
    try:
        array = np.arange(2 * MIB // 4, dtype=np.float32)
        client.tensorset("t", array)
        assert np.array_equal(client.tensorget("t"), array)
    finally:
        client.close()


def test_small_commands_are_packed_into_one_buffer(redis_server: RedisServer) -> None:
    r = connect(redis_server.url)
    try:
        packer = packer_of(r)
        packed = packer.pack("SET", "k", b"v" * 100)
        joined = b"".join(bytes(p) for p in packed)
        assert joined == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\n" + b"v" * 100 + b"\r\n"
        # just under the threshold: still one buffer, a copy of the value
        small = memoryview(b"z" * LARGE_ARGUMENT)
        packed = packer.pack("SET", "k", small)
        assert all(part is not small for part in packed)
    finally:
        r.close()


def test_python_packer_fallback_for_types_hiredis_refuses(redis_server: RedisServer) -> None:
    r = connect(redis_server.url)
    try:
        r.flushall()
        r.set("n", 3)
        r.set("f", 1.25)
        assert (r.get("n"), r.get("f")) == (b"3", b"1.25")
        assert r.hset("h", "ba", bytearray(b"abc")) == 1  # type: ignore[arg-type]
        assert r.hget("h", "ba") == b"abc"
    finally:
        r.close()


def test_a_worker_and_a_client_reach_redis_over_its_unix_socket(tmp_path: Path) -> None:
    """A sidecar next to Redis connects through the server's Unix socket (``unix://``): no TCP
    option (keepalive) may be passed to that connection."""
    socket = tmp_path / "redis.sock"
    with RedisServer(extra_args=["--unixsocket", str(socket), "--unixsocketperm", "700"]):
        url = f"unix://{socket}"
        proc = spawn_worker(url, "--device", "CPU")
        client = Client.from_url(url, reply_timeout=30)
        try:
            client.modelstore("m", "STUB", "CPU", stub_blob("add"))
            client.tensorset("a", np.array([2, 3], dtype=np.float32))
            client.modelexecute("m", ["a", "a"], ["out"])
            assert client.tensorget("out").tolist() == [4, 6]
        finally:
            client.close()
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()


def test_a_server_interrupted_while_it_starts_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while `aiworker up` waits for its Redis to answer: the server it started in a
    session of its own (out of the terminal's reach) is stopped, not left running."""

    server = RedisServer(start_new_session=True)
    started = []

    def interrupted(*args: object, **kwargs: object) -> None:
        started.append(server.process)
        raise KeyboardInterrupt

    monkeypatch.setattr(redis.Redis, "info", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert started[0] is not None and started[0].poll() is not None
