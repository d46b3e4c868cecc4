"""RedisAI's replies as values: what ``AI.*`` commands answer, before anyone writes them in RESP
(the gateway) or prints them as redis-cli did (``aiworker exec``). Pure code.

``Status`` is a simple string (``OK``), ``ErrorReply`` an error, ``bytes`` (or ``str``) a bulk
string, ``Double`` a floating-point number, ``int`` an integer, ``None`` nil, a ``list`` an array
and a ``dict`` a map.
"""

from __future__ import annotations

from aiworker.protocol.errors import BareMessage, message_of


class Status(str):
    """A simple-string reply such as ``OK``, ``NA`` or ``TIMEDOUT``."""

    __slots__ = ()


class Double(bytes):
    """A float as RedisAI's ``RedisModule_ReplyWithDouble`` sent it: its ``%.17g`` text, a bulk
    string to a RESP2 client and a double (``,``) to a RESP3 one."""

    __slots__ = ()


class ErrorReply(str):
    """An error reply; the text is RedisAI's message as redis-py shows it (no ``ERR``)."""

    __slots__ = ()


class BareErrorReply(ErrorReply):
    """An error reply that RedisAI sent without an error code: a framework's own message."""

    __slots__ = ()


def error_reply_of(exc: BaseException) -> ErrorReply:
    """The error reply to an exception: its message, bare when it is a framework's own."""
    message = message_of(exc)
    return BareErrorReply(message) if isinstance(message, BareMessage) else ErrorReply(message)


# RedisAI messages sent without the "ERR " prefix (redis-py shows every message without it), and
# Redis' own error codes, which reach a client as Redis sent them (redis-py's exception classes
# depend on them: NoPermissionError, ReadOnlyError, ...).
_NO_ERR_PREFIX = (
    "WRONGTYPE",
    "NOAUTH",
    "NOPROTO",
    "EXECABORT",
    "OOM ",
    "NOPERM ",
    "READONLY ",
    "LOADING ",
    "WRONGPASS ",
    "BUSY ",
    "MISCONF ",
    "MASTERDOWN ",
    "NOREPLICAS ",
    "TRYAGAIN ",
    "CLUSTERDOWN ",
    "Number of keys given as",
    "Unsupported command within DAG",
    "Invalid argument: ",
    "Function ",
    "Wrong number of inputs in function",
    "Wrong inputs type in function",
    "Deprecated AI.",
    "AI.MODELEXECUTE cannot be used",
    "AI.SCRIPTEXECUTE cannot be used",
    "CROSSSLOT",
)


def wire_error(message: str) -> str:
    """The error line as Redis sent it: RedisAI's ``ERR`` prefix where it had one."""
    if isinstance(message, (BareErrorReply, BareMessage)):
        return message
    if message.startswith(_NO_ERR_PREFIX) or message.startswith("ERR "):
        return message
    return "ERR " + message
