"""Commands out of a client's byte stream, checked before anything is allocated for them.

Clients send arrays of bulk strings (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\na\\r\\n``) or, typed in
telnet, inline commands (``GET a\\r\\n``). Everything a client sends is hostile until checked, so a
small scanner reads only the headers first, as Redis does: an array longer than ``max_args``, a
bulk longer than ``max_bulk`` or a command larger than ``max_request`` is refused as soon as its
header arrives (before its bytes are buffered), with Redis' own ``Protocol error`` messages; the
connection is then closed, as Redis closes it. Complete arrays are handed to hiredis's reader, which
builds the argument lists in C; inline commands are split like ``redis-cli`` splits a line.

Most reads hold whole commands, smaller than every limit: those go to hiredis directly, and only
when it finds a command unfinished or not made of bulk strings (or an empty array) does the
scanner read them again.

An AI.* command's large argument (a tensor's blob, a model's chunk: ``LARGE_BULK`` or more,
not the command's name) whose rest is still to come is received in place (``inplace``): ``feed``
then leaves ``receiving`` set, the connection reads into it and calls ``filled``, and the argument
comes as a read-only memoryview of its buffer. Such a command's other arguments are read by the
scanner itself, not by hiredis. The buffer has the declared length, allocated once the limits
above passed (Redis too makes room for a large argument's declared length at once); its pages
are only touched as the bytes arrive, and an argument that stops coming ends the connection
after ``request_timeout`` like any unfinished command.
"""

from __future__ import annotations

import contextlib
import re

import hiredis

from aiworker.parser.lexer import to_bytes, tokenize
from aiworker.protocol.errors import AIError
from aiworker.storage.bulk_read import LARGE_BULK, new_buffer

from .inplace import Sink

# Redis' PROTO_INLINE_MAX_SIZE: the longest header line or inline command.
MAX_LINE = 64 * 1024
# The fast path's reads are at most 256 KB: no array counted in six digits or more fits whole in
# one. hiredis makes room for an array's elements when it reads the header (a ``*2147483647``
# took seconds to free, the whole gateway waiting): such a header goes to the scanner instead,
# which checks it against the limits first.
_LONG_ARRAY = re.compile(rb"\*-?\d{6}")
# Redis' limits for a client that has not authenticated yet (networking.c): a longer array or
# bulk string from it is refused at its header, before anything is buffered for it.
UNAUTHENTICATED_ARGS = 10
UNAUTHENTICATED_BULK = 16 * 1024


class ProtocolError(Exception):
    """The client broke the protocol or a limit; the message is Redis' (``Protocol error: ...``)
    and the connection is closed after it is sent. ``commands``: the whole commands before the
    broken one (``RequestReader.feed``), which Redis runs and answers first."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"Protocol error: {detail}")
        self.commands: list[list[bytes]] = []
        self.collected = False  # ``commands`` holds every command before the broken one
        # an unauthenticated limit broken: the bytes read from the refused command on (an AUTH
        # before it, not answered yet, may lift the limit: Redis reads on after running it)
        self.rest: bytes | None = None


def _count(line: bytes | bytearray) -> int | None:
    """A header's decimal number (Redis' string2ll: digits with an optional minus, no leading
    zero), else None."""
    digits = line[1:] if line[:1] == b"-" else line
    if not digits or not digits.isdigit() or len(digits) > 19:
        return None
    if digits[:1] == b"0" and len(digits) > 1:
        return None
    return int(line)


def _unauthenticated(what: str, rest: bytearray) -> ProtocolError:
    error = ProtocolError(f"unauthenticated {what} length")
    error.rest = bytes(rest)
    return error


def _is_ai_command(buf: bytearray, frame: int) -> bool:
    """Whether the array at ``buf[frame]`` (its first bulk string read) names an AI.* command."""
    eol = buf.find(b"\r\n", frame)  # the array's header, then the name's
    eol = buf.find(b"\r\n", eol + 2)
    return bytes(buf[eol + 2 : eol + 5]).upper() == b"AI."


class RequestReader(Sink):
    """Incremental reader of one client's commands: ``feed`` bytes, get the complete commands
    (each a list of ``bytes`` arguments) that they finish."""

    def __init__(self, max_bulk: int, max_args: int, max_request: int) -> None:
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_request = max_request
        # the largest read that cannot break a limit, whatever it holds
        self._small = min(self.max_bulk, self.max_request, 256 * 1024)
        self.unauthenticated = False  # Redis' lower limits apply (set by the connection)
        self._start()

    def _start(self) -> None:
        """The state of a reader that has read nothing."""
        self._buf = bytearray()
        self._pos = 0  # next header to read
        self._frame = 0  # start of the array being read
        self._left = -1  # bulk strings still to come in that array; -1: between commands
        self._reader = hiredis.Reader()
        self._whole = hiredis.Reader()  # the fast path's (see the module docstring)
        # A command with an argument received in place: its arguments so far, its bytes that
        # are no longer in ``_buf`` (for max_request), and whether the CRLF ending that
        # argument is still to come.
        self._args: list[bytes | memoryview] | None = None
        self._before = 0
        self._crlf = False
        self._target: memoryview | None = None
        self.receiving = None  # what the connection fills (``Sink``)
        # (for ``take_unfinished``) the command's size, and how many of ``_args`` are no longer
        # in ``_buf``
        self._count = 0
        self._cleared = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a command not complete yet (1 while it is received in place)."""
        return len(self._buf) or int(self._args is not None)

    def _received(self) -> None:
        """The argument is complete but for its CRLF."""
        assert self._args is not None and self._target is not None
        self._args.append(self._target.toreadonly())
        self._target = None
        self._crlf = True
        self._cleared = len(self._args)

    def take_unfinished(self) -> bytes:
        """The bytes of the command that is not complete yet, as the client sent them so far
        (for a connection that becomes a pipe to Redis); the reader starts afresh."""
        if self._args is None:
            data = bytes(self._buf)
        else:
            out: list[bytes | bytearray | memoryview] = [b"*%d\r\n" % self._count]
            tail: list[bytes | bytearray | memoryview]
            if self._target is not None and self.receiving is not None:  # being received
                whole = self._args
                have = len(self._target) - len(self.receiving)
                tail = [b"$%d\r\n" % len(self._target), self._target[:have]]
            else:  # the last argument received in place, then what ``_buf`` holds
                last = self._args[self._cleared - 1]
                whole = self._args[: self._cleared - 1]
                tail = [b"$%d\r\n" % len(last), last, self._buf]
            for arg in whole:
                out += [b"$%d\r\n" % len(arg), arg, b"\r\n"]
            data = b"".join(out + tail)
        self._start()
        return data

    def feed(self, data: bytes) -> list[list[bytes]]:
        """The commands completed by ``data``; ``ProtocolError`` when the client broke a rule
        (with the whole commands of ``data`` before the broken one: ``commands``)."""
        if (
            not self._buf
            and self._args is None
            and data[:1] == b"*"
            and len(data) <= self._small
            and data[-2:] == b"\r\n"  # else a command is unfinished: hiredis need not copy it
            and not _LONG_ARRAY.search(data)
            and not self.unauthenticated
        ):
            whole = self._whole_commands(data)
            if whole is not None:
                return whole
        buf = self._buf
        buf += data
        commands: list[list[bytes]] = []
        run = self._frame  # start of complete arrays not yet given to hiredis
        pos, left, size = self._pos, self._left, len(buf)
        try:
            while pos < size:
                if self._crlf:  # after an argument received in place
                    if size - pos < 2:
                        break
                    if buf[pos : pos + 2] != b"\r\n":
                        raise ProtocolError("expected CRLF after a bulk string")
                    self._crlf = False
                    pos += 2
                    if left == 0:
                        pos = run = self._command_done(pos, commands)
                        left = -1
                    continue
                if left < 0:  # a command starts here
                    if buf[pos] != 42:  # not '*': an inline command
                        self._flush(buf, run, pos, commands)
                        run = pos
                        eol = buf.find(b"\n", pos)
                        if eol < 0:
                            if size - pos > MAX_LINE:
                                raise ProtocolError("too big inline request")
                            break
                        line = bytes(buf[pos:eol]).rstrip(b"\r")
                        pos = run = eol + 1
                        self._frame = pos
                        self._inline(line, commands)
                        continue
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if size - pos > MAX_LINE:
                            raise ProtocolError("too big mbulk count string")
                        break
                    count = _count(buf[pos + 1 : eol])
                    if count is None or count > self.max_args:
                        raise ProtocolError("invalid multibulk length")
                    if count > UNAUTHENTICATED_ARGS and self.unauthenticated:
                        raise _unauthenticated("multibulk", buf[pos:])
                    if count < -1:  # skipped, as Redis skips it (hiredis would refuse it)
                        self._flush(buf, run, pos, commands)
                        pos = run = self._frame = eol + 2
                        continue
                    self._frame = pos
                    self._before = 0
                    pos = eol + 2
                    left = count if count > 0 else -1
                    continue
                if buf[pos] != 36:  # not '$'
                    raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if size - pos > MAX_LINE:
                        raise ProtocolError("too big bulk count string")
                    break
                length = _count(buf[pos + 1 : eol])
                if length is None or length < 0 or length > self.max_bulk:
                    raise ProtocolError("invalid bulk length")
                if length > UNAUTHENTICATED_BULK and self.unauthenticated:
                    raise _unauthenticated("bulk", buf[self._frame :])
                end = eol + 4 + length
                if self._before + end - self._frame > self.max_request:
                    raise ProtocolError("request larger than the gateway's max-request")
                if end > size:
                    body = eol + 2 + length > size  # the string itself is not all here
                    if body and length >= LARGE_BULK and self._in_place(buf, pos):
                        self._flush(buf, run, self._frame, commands)
                        return self._received_so_far(buf, eol + 2, length, left - 1, commands)
                    break
                if self._args is not None:
                    if buf[end - 2 : end] != b"\r\n":
                        raise ProtocolError("expected CRLF after a bulk string")
                    self._args.append(bytes(buf[eol + 2 : end - 2]))
                pos = end
                left -= 1
                if left == 0:
                    if self._args is not None:
                        pos = run = self._command_done(pos, commands)
                    left = -1
            if left < 0:
                self._frame = pos
            self._flush(buf, run, self._frame, commands)
            keep = self._frame
            if keep:
                del buf[:keep]
            self._pos, self._left, self._frame = pos - keep, left, 0
            return commands
        except ProtocolError as exc:
            exc.commands = commands
            if not exc.collected:  # the arrays scanned whole before the broken one
                end = pos if left < 0 else self._frame
                with contextlib.suppress(ProtocolError):
                    self._flush(buf, run, end, commands)
            raise

    def _in_place(self, buf: bytearray, pos: int) -> bool:
        """Whether the bulk string whose header is ``buf[pos:eol]`` is received in place: an
        argument of an AI.* command other than its name."""
        if self._args is not None:
            return True
        frame = self._frame
        if pos == buf.find(b"\r\n", frame) + 2:  # the command's name
            return False
        if not _is_ai_command(buf, frame):
            return False
        self._args = self._arguments(buf, frame, pos)
        self._count = int(buf[frame + 1 : buf.find(b"\r\n", frame)])
        return True

    def _arguments(self, buf: bytearray, frame: int, end: int) -> list[bytes | memoryview]:
        """The bulk strings of the array at ``buf[frame]`` up to ``end`` (read by the scanner:
        complete and within the limits)."""
        args: list[bytes | memoryview] = []
        pos = buf.find(b"\r\n", frame) + 2
        while pos < end:
            eol = buf.find(b"\r\n", pos)
            stop = eol + 2 + int(buf[pos + 1 : eol])
            if buf[stop : stop + 2] != b"\r\n":
                raise ProtocolError("expected CRLF after a bulk string")
            args.append(bytes(buf[eol + 2 : stop]))
            pos = stop + 2
        return args

    def _received_so_far(
        self, buf: bytearray, start: int, length: int, left: int, commands: list[list[bytes]]
    ) -> list[list[bytes]]:
        """Start receiving the bulk of ``length`` bytes at ``buf[start:]`` in place: what came
        of it is copied into its buffer, the connection is to fill the rest."""
        target = new_buffer(length)
        have = len(buf) - start
        target[:have] = buf[start:]
        self._before += len(buf) - self._frame + length - have
        self._target = target
        self.receiving = target[have:]
        buf.clear()
        self._pos, self._left, self._frame = 0, left, 0
        return commands

    def _command_done(self, pos: int, commands: list[list[bytes]]) -> int:
        """The command read by the scanner ends at ``pos``: it is complete; the next one starts
        there."""
        assert self._args is not None
        commands.append(self._args)  # type: ignore[arg-type]  # memoryviews among them
        self._args = None
        self._before = 0
        self._frame = pos
        return pos

    def _whole_commands(self, data: bytes) -> list[list[bytes]] | None:
        """The commands ``data`` holds when it holds only whole commands of bulk strings, each
        within ``max_args``; None when the scanner must read it (nothing is consumed then)."""
        reader, commands, size = self._whole, [], 0
        reader.feed(data)
        try:
            while (args := reader.gets()) is not False:
                if not args or type(args) is not list or len(args) > self.max_args:
                    break
                b"".join(args)  # TypeError unless every argument is a string
                size += len(hiredis.pack_command(tuple(args)))
                commands.append(args)
            else:
                # their RESP form is the whole read: nothing is left unfinished, and every
                # string is a bulk string (hiredis reads +simple and =verbatim ones as bytes too)
                if size == len(data):
                    return commands
        except (hiredis.ProtocolError, TypeError):
            pass
        self._whole = hiredis.Reader()
        return None

    def _flush(self, buf: bytearray, start: int, end: int, commands: list[list[bytes]]) -> None:
        """Hand complete arrays ``buf[start:end]`` to hiredis and collect the commands."""
        if end <= start:
            return
        reader = self._reader
        reader.feed(buf, start, end - start)  # type: ignore[arg-type]
        try:
            while (args := reader.gets()) is not False:
                if args:
                    commands.append(args)
        except hiredis.ProtocolError as exc:
            error = ProtocolError(str(exc))
            error.collected = True  # ``commands`` has what came before it
            raise error from None

    def _inline(self, line: bytes, commands: list[list[bytes]]) -> None:
        try:
            tokens = tokenize(line.decode("utf-8", "surrogateescape"))
        except AIError:
            raise ProtocolError("unbalanced quotes in request") from None
        if len(tokens) > self.max_args:
            raise ProtocolError("invalid multibulk length")
        if tokens:
            commands.append([to_bytes(token) for token in tokens])
