"""One Redis connection for one worker thread's hot path, without redis-py's per-call machinery.

redis-py's ``Redis.execute_command`` costs about 80 us of CPU per round trip here (pool checkout,
retry wrapper, response callbacks); hiredis's packer and reader on the same socket cost about 20 us.
A worker makes two or three round trips per job, so that difference is most of a trivial job's
cost. ``Wire`` keeps what redis-py does well - connecting, AUTH/ACL users, TLS, SELECT, the client
handshake - by opening a redis-py ``Connection`` from the pool's own settings, then talks on its
socket with hiredis. On a lost connection it reconnects and repeats the round trip under the
pool's ``Retry`` policy: every command the hot path sends is safe to repeat (reads; an XREADGROUP
whose reply was lost leaves its entries pending to be reclaimed; completions apply at most once).

One ``Wire`` belongs to one thread; it is not thread-safe. On Redis Cluster a thread holds one
``Wire`` per master (``storage.cluster.ClusterWire``), which sends to several before it reads.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.backoff import NoBackoff
from redis.exceptions import ExecAbortError
from redis.retry import Retry

from aiworker.storage.bulk_read import BulkReader

# Arguments above this are sent as they are (no copy into the command buffer): outputs, blobs.
LARGE_ARGUMENT = 64 * 1024
# Commands above this are re-packed so that their large arguments are not copied again.
LARGE_COMMAND = 1 << 20
# Read buffer of a connection, reused: a fresh 256 KiB ``recv`` buffer per reply is an mmap.
RECV_BYTES = 64 * 1024
# The most of the reply parser's buffer kept between replies (hiredis frees it beyond 16 KiB).
KEEP_READ_BUFFER = 4 * 1024 * 1024

Command = Sequence[Any]


class JobConnection(Protocol):
    """What a worker thread's job path (and a client's job round trip) talks to Redis through:
    a ``Wire`` on a single Redis, a ``storage.cluster.ClusterWire`` on Redis Cluster. Lua goes
    through ``storage.lua.run`` on it."""

    def execute(self, *command: Any) -> Any: ...

    def pipeline(
        self,
        commands: Sequence[Command],
        routes: Any = None,
        large: bool = False,
        retry: bool = True,
    ) -> list[Any]:
        """Run commands in one round trip (one per node of a cluster); error replies come back
        as exceptions in place. ``retry`` False: a lost link raises at once, without the
        connection's retries (a read that other ways will make again)."""
        ...

    def slot(self, key: Any) -> int: ...

    def post(self, commands: Sequence[Command]) -> None:
        """Send commands whose replies nobody needs, without waiting for them (best effort)."""
        ...

    def migrating(self, slot: int) -> bool:
        """Whether ``slot`` is being resharded, as far as replies lately told (Redis Cluster)."""
        ...

    def node(self, key: Any) -> Any:
        """Which node serves ``key`` (its address on Redis Cluster; None on a single Redis)."""
        ...

    @property
    def degraded(self) -> bool:
        """A node failed a round trip lately (Redis Cluster): ``unreachable`` then says which
        keys are cut off."""
        ...

    def unreachable(self, key: Any) -> bool:
        """Whether no node serves ``key``, or its node failed a round trip lately (Redis
        Cluster; False on a single Redis, where a lost link is everything lost)."""
        ...

    # every key shares one hash slot (a single Redis): callers skip grouping keys by slot
    one_slot: bool

    def close(self) -> None: ...


class JobConnections(Protocol):
    """A process's job-path connections, one per thread."""

    def get(self) -> JobConnection: ...

    def execute(self, *command: Any) -> Any: ...

    def close(self) -> None: ...


def _as_bytes(value: Any) -> bytes | memoryview:
    if isinstance(value, (bytes, memoryview)):
        return value
    if isinstance(value, bytearray):
        return memoryview(value)
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def _pack_large(command: Command) -> list[bytes | memoryview]:
    """RESP pieces of a command with a large argument, which is sent without being copied."""
    pieces: list[bytes | memoryview] = []
    header = b"*%d\r\n" % len(command)
    for arg in command:
        data = _as_bytes(arg)
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > LARGE_ARGUMENT:
            pieces.append(header + b"$%d\r\n" % size)
            pieces.append(data)
            header = b"\r\n"
        else:
            header += b"$%d\r\n" % size + bytes(data) + b"\r\n"
    pieces.append(header)
    return pieces


# Commands that may carry a value of megabytes (a tensor's blob, a model's chunk), as callers
# spell them (no str()/upper() per command: every round trip of the job path asks).
_CARRIERS = frozenset(
    spelled
    for name in ("HSET", "SET", "XADD")
    for spelled in (name, name.lower(), name.encode(), name.lower().encode())
)


def _huge(command: Command) -> bool:
    """Whether one argument alone is over LARGE_COMMAND: hiredis would copy it, slowly (26-30 ms
    for 16 MiB), only for ``pack`` to send it in pieces anyway."""
    if command[0] not in _CARRIERS:
        return False
    for arg in command:
        kind = type(arg)
        if (kind is memoryview and arg.nbytes > LARGE_COMMAND) or (
            kind is bytes and len(arg) > LARGE_COMMAND
        ):
            return True
    return False


def pack(commands: Sequence[Command]) -> list[bytes | memoryview]:
    """Buffers to send for ``commands``: hiredis packs them (fast for many small arguments); a
    command carrying megabytes is sent in pieces instead, its large arguments uncopied."""
    if any(_huge(command) for command in commands):
        out: list[bytes | memoryview] = []
        for command in commands:
            out.extend(_pack_large(command))
        return out
    packed = [hiredis.pack_command(tuple(command)) for command in commands]
    if len(packed) == 1:
        if len(packed[0]) <= LARGE_COMMAND:
            return packed
    elif sum(len(buffer) for buffer in packed) <= LARGE_COMMAND:
        return [b"".join(packed)]
    out = []
    for command, buffer in zip(commands, packed, strict=True):
        out.extend(_pack_large(command) if len(buffer) > LARGE_COMMAND else [buffer])
    return out


def as_exception(reply: Any) -> Any:
    """redis-py's exception for an error reply (NOSCRIPT, NOPERM, WRONGTYPE ...), else the reply."""
    if isinstance(reply, hiredis.ReplyError):
        return BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return reply


def transactions(commands: Sequence[Command]) -> list[range]:
    """The positions of each MULTI ... EXEC block in ``commands``."""
    blocks, begun = [], -1
    for n, command in enumerate(commands):
        name = command[0] if command else b""
        name = (name.decode() if isinstance(name, bytes) else str(name)).upper()
        if name == "MULTI":
            begun = n
        elif name == "EXEC" and begun >= 0:
            blocks.append(range(begun, n + 1))
            begun = -1
    return blocks


def with_causes(commands: Sequence[Command], replies: list[Any]) -> list[Any]:
    """Replies with each EXECABORT replaced by the error that aborted its transaction: the
    refusal of a queued command (Redis out of memory refuses every command queued in MULTI, even
    a read) says what went wrong, "Transaction discarded" does not."""
    if not any(isinstance(reply, ExecAbortError) for reply in replies):
        return replies  # the usual case: no block to look for
    for block in transactions(commands):
        replies[block[-1]] = aborted_by(replies[block[-1]], replies[block[1] : block[-1]])
    return replies


def aborted_by(done: Any, queued: Sequence[Any]) -> Any:
    """EXEC's reply ``done``, or for EXECABORT the refusal of the first command of ``queued``
    (the replies to the commands queued in its MULTI) that Redis refused as it was queued."""
    if not isinstance(done, ExecAbortError):
        return done
    return next((reply for reply in queued if isinstance(reply, redis.ResponseError)), done)


def executed(done: Any) -> list[Any] | Exception:
    """EXEC's replies, or its error (an aborted transaction's, for a nil)."""
    if done is None:
        return redis.WatchError("the transaction was aborted")
    return done if isinstance(done, Exception) else list(done)


class PartlyAnswered(redis.ConnectionError):
    """The link was lost after Redis answered the first of a round trip's commands: ``replies``
    holds their replies (error replies as exceptions). Those commands ran and are not to be sent
    again (a job's XADD: the entry is queued, its reply is waited for on a new connection)."""

    def __init__(self, message: str, replies: list[Any]) -> None:
        super().__init__(message)
        self.replies = replies


def _kernel_timeouts(sock: socket.socket) -> None:
    """Move the socket's timeout into the kernel (SO_RCVTIMEO/SO_SNDTIMEO) and make it blocking.

    A Python socket with a timeout polls before every send and receive: two more system calls
    per round trip, about a tenth of a trivial job's CPU. A blocking socket with kernel timeouts
    waits in ``recv`` itself and still gives up (EAGAIN) when Redis stops answering."""
    timeout = sock.gettimeout()
    if timeout is None:
        return
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.settimeout(None)


# ``Wire.post``'s commands kept for the next round trip when the link was lost.
MAX_UNPOSTED = 64
# A connection idle this long is checked before it is used: Redis (its ``timeout``, CLIENT
# KILL) or a proxy may have closed it meanwhile.
IDLE_CHECK_S = 0.5


def _closed_while_idle(sock: socket.socket) -> bool:
    """Whether an idle connection is readable: Redis closed it (or sent what nothing asked
    for, out of step). Reading it then would fail a command that was never sent."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


_NO_RETRY = Retry(NoBackoff(), 0)


class Wire:
    """A private connection made from a redis-py pool's settings (URL, AUTH, TLS, timeouts).
    Used after an idle spell, it is first checked (``IDLE_CHECK_S``) and made again when Redis
    closed it: the command goes on a live connection instead of failing unsent (a job's XADD
    would be reported as perhaps queued)."""

    def __init__(
        self,
        pool: redis.ConnectionPool,
        retry: Retry | None = None,
        address: tuple[str, int] | None = None,
    ) -> None:
        # RESP2 whatever the pool speaks: the replies below are parsed as RESP2's arrays.
        self._kwargs = {**pool.connection_kwargs, "protocol": 2}
        if address is not None:  # another node of the same cluster, with the same settings
            self._kwargs.update(host=address[0], port=address[1])
        self._class = pool.connection_class
        self._connection = self._class(**self._kwargs)
        self._pid = os.getpid()
        self._retry = retry or Retry(NoBackoff(), 0)
        self._reader: hiredis.Reader | None = None
        self._buffer = bytearray(RECV_BYTES)
        self._used = 0.0  # monotonic time of the last round trip
        self._owed = 0  # replies to ``post``'s commands, not read yet
        self._unposted: list[Command] = []  # ``post``'s commands a lost link kept from Redis

    def close(self) -> None:
        self._connection.disconnect()
        self._reader = None
        self._owed = 0

    def post(self, commands: Sequence[Command]) -> None:
        """Send commands whose replies nobody needs (a reply list's removal) without waiting:
        their replies are read and dropped before the next round trip's. On a lost link they
        go with the next round trip (up to ``MAX_UNPOSTED``; best effort)."""
        self._unposted = [*self._unposted, *commands][-MAX_UNPOSTED:]
        try:
            self._post_unposted(self._sending())
        except BaseException as exc:
            self.close()  # part of a command may have gone: out of step
            if not isinstance(exc, Exception):
                raise

    def _post_unposted(self, sock: socket.socket) -> None:
        """Send what ``post`` keeps (kept until sent whole: sent again, it removes nothing more)."""
        if self._unposted:
            for buffer in pack(self._unposted):
                sock.sendall(buffer)
            self._owed += len(self._unposted)
            self._unposted = []

    def execute(self, *command: Any) -> Any:
        """Run one command; an error reply raises redis-py's exception for it."""
        reply = self.pipeline([command])[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def pipeline(
        self,
        commands: Sequence[Command],
        routes: Any = None,
        large: bool = False,
        retry: bool = True,
    ) -> list[Any]:
        """Run commands in one round trip; error replies come back as exceptions in the list.
        ``routes`` (where each command runs on a cluster) means nothing here: one node.
        ``large``: the replies carry large values, received in place (``bulk_read``).
        ``retry``: see ``JobConnection.pipeline``."""
        policy = self._retry if retry else _NO_RETRY
        replies = policy.call_with_retry(
            lambda: self._round_trip(commands, large), lambda error: self.close()
        )
        return with_causes(commands, [as_exception(reply) for reply in replies])

    one_slot = True

    @staticmethod
    def slot(key: Any) -> int:
        """A single Redis is one hash slot: every key's is 0 (``plans.one_slot``)."""
        return 0

    @staticmethod
    def migrating(slot: int) -> bool:
        return False  # no resharding on a single Redis

    @staticmethod
    def node(key: Any) -> Any:
        return None  # one node

    degraded = False

    @staticmethod
    def unreachable(key: Any) -> bool:
        return False

    def _forked(self) -> None:
        """In a forked child the socket, and the replies owed on it, are the parent's: leave
        them be (reading them would take the parent's replies) and connect anew."""
        if self._pid != os.getpid():
            self._connection = self._class(**self._kwargs)
            self._reader, self._pid = None, os.getpid()
            self._owed, self._unposted = 0, []

    def _socket(self) -> socket.socket:
        self._forked()
        return self._connected()

    def _connected(self) -> socket.socket:
        """The socket, connected first if need be (``_forked`` asked already)."""
        if self._connection._sock is None or self._reader is None:
            self._connection.connect()
            self._reader = hiredis.Reader()
            # keep a buffer that large replies grew (a fresh one each time is page faults); one
            # grown past KEEP_READ_BUFFER by a huge reply is freed once that reply is read
            self._reader.setmaxbuf(KEEP_READ_BUFFER)
            sock = self._connection._sock
            assert sock is not None
            _kernel_timeouts(sock)
        current: socket.socket | None = self._connection._sock
        assert current is not None
        return current

    def _sending(self) -> socket.socket:
        """The socket to send new commands on (nothing is awaited on it): made again when it
        was idle and Redis closed it meanwhile."""
        self._forked()
        now = time.monotonic()
        if now - self._used > IDLE_CHECK_S:
            sock = self._connection._sock
            if sock is not None and self._reader is not None:
                if self._owed:  # their replies came long ago: read them, or find it closed
                    try:
                        self._read(sock, 0, [])
                    except Exception:
                        self.close()
                if _closed_while_idle(sock):
                    self.close()
        self._used = now
        return self._connected()

    def _round_trip(self, commands: Sequence[Command], large: bool = False) -> list[Any]:
        buffers = pack(commands)  # before touching the socket: a bad argument is no lost link
        replies: list[Any] = []
        try:
            sock = self._sending()
            self._post_unposted(sock)
            for buffer in buffers:
                sock.sendall(buffer)
            self._read(sock, len(commands), replies, large)
            self._used = time.monotonic()  # a reply may take long (a blocking read)
            return replies
        except BaseException as exc:
            try:
                self._raise_lost(exc)
            except (redis.ConnectionError, redis.TimeoutError) as lost:
                if not replies:
                    raise
                answered = [as_exception(reply) for reply in replies]
                raise PartlyAnswered(str(lost), answered) from exc

    def send(self, commands: Sequence[Command]) -> None:
        """Send commands without waiting for their replies (``receive`` reads them): a cluster
        connection sends to every node before it reads from any. Raises redis-py's
        ConnectionError/TimeoutError when the link is lost (closed then)."""
        buffers = pack(commands)
        try:
            sock = self._sending()
            self._post_unposted(sock)
            for buffer in buffers:
                sock.sendall(buffer)
        except BaseException as exc:
            self._raise_lost(exc)

    def receive(
        self, count: int, replies: list[Any] | None = None, large: bool = False
    ) -> list[Any]:
        """The next ``count`` raw replies (hiredis' ReplyError for an error reply), appended to
        ``replies``: when the link is lost halfway, those read before are there (a command
        answered is not one to send again). ``large``: as for ``pipeline``."""
        replies = [] if replies is None else replies
        try:
            self._read(self._socket(), count, replies, large)
            self._used = time.monotonic()
            return replies
        except BaseException as exc:
            self._raise_lost(exc)

    def _read(
        self, sock: socket.socket, count: int, replies: list[Any], large: bool = False
    ) -> list[Any]:
        reader = self._reader
        assert reader is not None
        while self._owed:  # ``post``'s replies come first
            if reader.gets() is False:
                received = sock.recv_into(self._buffer)
                if not received:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(self._buffer, 0, received)  # type: ignore[arg-type]
            else:
                self._owed -= 1
        if large and not reader.has_data():  # nothing of these replies went to hiredis yet
            direct = BulkReader(sock, self._buffer)
            direct.replies(count, replies)
            if direct.buffered:  # Redis sent more than was asked: the link is out of step
                raise hiredis.ProtocolError("unexpected data after the replies")
            return replies
        while count:
            reply = reader.gets()
            if reply is False:
                received = sock.recv_into(self._buffer)
                if not received:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(self._buffer, 0, received)  # type: ignore[arg-type]
            else:
                replies.append(reply)
                count -= 1
        return replies

    def _raise_lost(self, exc: BaseException) -> NoReturn:
        """Raise redis-py's error for a failure on the socket; other errors (a KeyboardInterrupt
        or a signal handler's exception mid-reply) as they are. The connection is closed either
        way: its replies are out of step now."""
        if isinstance(
            exc, (TimeoutError, BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        ):
            self.close()  # the kernel's SO_RCVTIMEO/SO_SNDTIMEO expired (see _kernel_timeouts)
            raise redis.TimeoutError(f"Timeout talking to Redis: {exc!r}") from exc
        if isinstance(exc, (OSError, hiredis.ProtocolError)):
            self.close()
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
        self.close()
        raise exc


class Wires:
    """One job connection per thread, opened on the thread's first use (consumer threads, DAG
    lanes): a ``Wire`` each here, a ``storage.cluster.ClusterWire`` each on Redis Cluster."""

    def __init__(self, pool: redis.ConnectionPool, retry: Retry | None = None) -> None:
        self._pool = pool
        self._retry = retry
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[JobConnection] = []

    def _open(self) -> JobConnection:
        return Wire(self._pool, self._retry)

    def get(self) -> JobConnection:
        wire: JobConnection | None = getattr(self._local, "wire", None)
        if wire is None:
            wire = self._open()
            self._local.wire = wire
            with self._lock:
                self._all.append(wire)
        return wire

    def execute(self, *command: Any) -> Any:
        """Run one command on this thread's connection."""
        return self.get().execute(*command)

    def close(self) -> None:
        with self._lock:
            wires, self._all = self._all, []
        for wire in wires:
            wire.close()
