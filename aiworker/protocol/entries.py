"""Stream entries: the two encodings of a job and their decoding into one ``Job``. Pure code.

An entry is plain string fields so redis-cli can write one::

    XADD aiworker:queue:CPU * cmd "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b" reply r1

The Python client writes the compact form instead: ``job`` holds a msgpack map of the request, and
``fmt msgpack`` asks for a msgpack reply. Both forms decode to the same ``Job`` through the same
checks (``parser.validate``), and every key a request names is
checked at first sight: valid UTF-8, and no output under aiworker's own prefix. The enqueue time is
the stream entry id's millisecond part (Redis' clock), so TIMEOUT counts from enqueue without
trusting the client's clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

from aiworker.parser import parse_command
from aiworker.parser.validate import check
from aiworker.protocol import replies
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import (
    DagExecute,
    Job,
    ModelExecute,
    ModelVerify,
    Request,
    ScriptExecute,
    request_from_map,
    request_to_map,
)

ENQUEUED_FIELD = "enqueued"
# A forwarded entry's id on the queue its requester wrote it to: the id its reply carries.
ORIGIN_FIELD = "origin"
# The Python client's request id on Redis Cluster: entries of one request on one queue (an XADD
# that redis-py's cluster client sent again during a failover) complete once.
REQUEST_ID_FIELD = "rid"


def encode_entry(
    request: Request, reply: str | None, fmt: str | None = None
) -> dict[str, bytes | str]:
    """Stream-entry fields of the compact (client) form. ``fmt`` (``replies.MSGPACK``) asks for a
    msgpack reply with raw tensor blobs instead of JSON."""
    fields: dict[str, bytes | str] = {"job": msgpack.packb(request_to_map(request))}
    if reply:
        fields["reply"] = reply
    if fmt:
        fields[replies.FORMAT_FIELD] = fmt
    return fields


def entry_time_ms(entry_id: str) -> int:
    try:
        return int(entry_id.split("-", 1)[0])
    except ValueError:
        return 0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _strict_text(value: Any) -> str | None:
    """``value`` as text if it is valid UTF-8, else None."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    text = str(value)
    try:
        text.encode()
    except UnicodeEncodeError:
        return None
    return text


def reply_key_of(fields: Mapping[Any, Any], keys: Keys | None = None) -> str | None:
    """The entry's reply key if it is one a reply may go to, even when the rest of the entry is
    malformed: valid UTF-8, and none of aiworker's own keys but a reply list."""
    for name, value in fields.items():
        if _text(name) == "reply":
            return _reply_key(value, keys)
    return None


def _reply_key(value: Any, keys: Keys | None) -> str | None:
    key = _strict_text(value) if value is not None else None
    if not key or (keys is not None and keys.owns(key) and not keys.is_reply(key)):
        return None
    return key


def reply_format_of(fields: Mapping[Any, Any]) -> str:
    """The encoding the requester reads its reply in (``fmt``; JSON unless it asks msgpack)."""
    for name, value in fields.items():
        if _text(name) == replies.FORMAT_FIELD and _text(value) == replies.MSGPACK:
            return replies.MSGPACK
    return replies.JSON


def key_names(request: Request) -> Iterator[str]:
    """Every key and tensor name a request carries."""
    if isinstance(request, ModelVerify):
        return
    if isinstance(request, DagExecute):
        yield from request.load
        yield from request.persist
        for op in request.ops:
            yield op.key
            if isinstance(op, (ModelExecute, ScriptExecute)):
                yield from op.inputs
                yield from op.outputs
            if isinstance(op, ScriptExecute):
                yield from op.keys
        return
    yield request.key
    yield from request.inputs
    yield from request.outputs
    if isinstance(request, ScriptExecute):
        yield from request.keys


def written_keys(request: Request) -> tuple[str, ...]:
    """The Redis keys a request may write: outputs, a DAG's PERSIST keys, and the KEYS a script
    may reach with ``redis.execute``."""
    if isinstance(request, DagExecute):
        scripts = [op.keys for op in request.ops if isinstance(op, ScriptExecute)]
        return request.persist + tuple(key for keys in scripts for key in keys)
    if isinstance(request, ModelVerify):
        return ()
    if isinstance(request, ScriptExecute):
        return request.outputs + request.keys
    return request.outputs


def check_names(request: Request, keys: Keys, text: bool = True) -> None:
    """Refuse names that are not valid UTF-8 (only a ``cmd`` can carry such: msgpack text is
    UTF-8 by definition, so ``text=False`` skips that check), and outputs under aiworker's own
    prefix."""
    for name in key_names(request) if text else ():
        if _strict_text(name) is None:
            shown = name.encode(errors="backslashreplace").decode()
            raise AIError(f"key name '{shown}' is not valid UTF-8")
    for name in written_keys(request):
        if keys.owns(name):
            raise AIError(
                f"WRONGTYPE '{name}' is one of aiworker's own keys ({keys.prefix}*): "
                "a job may not write it"
            )


def decode_request(job: Any, cmd: Any) -> Request:
    """The request of an entry's ``job`` (msgpack) or ``cmd`` (RedisAI command) field."""
    if job is not None:
        try:
            data = msgpack.unpackb(job, raw=False)
        except Exception:
            raise AIError("malformed job entry: 'job' is not msgpack") from None
        if not isinstance(data, dict):
            raise AIError("malformed job entry: 'job' is not a map")
        return check(request_from_map(data))  # the rules a command typed in redis-cli meets
    if cmd is not None:
        # surrogateescape keeps a raw BLOB's bytes intact through the text parser
        return parse_command(
            cmd.decode("utf-8", "surrogateescape") if isinstance(cmd, bytes) else str(cmd)
        )
    raise AIError("malformed job entry: expected a 'cmd' or 'job' field")


def decode_entry(entry_id: str, fields: Mapping[Any, Any], keys: Keys | None = None) -> Job:
    """Decode either entry form; raises ``AIError`` (the reply key is still found by
    ``reply_key_of``)."""
    keys = keys or Keys()
    named = {_text(k): v for k, v in fields.items()}
    request = decode_request(named.get("job"), named.get("cmd"))
    check_names(request, keys, text="job" not in named)
    enqueued = entry_time_ms(entry_id)
    if ENQUEUED_FIELD in named:  # forwarded from another queue: TIMEOUT counts from the first
        try:
            enqueued = int(named[ENQUEUED_FIELD])
        except ValueError:
            raise AIError(f"malformed job entry: {ENQUEUED_FIELD!r} is not a number") from None
    reply = _reply_key(named.get("reply"), keys)
    fmt = reply_format_of(named)
    origin = _text(named[ORIGIN_FIELD]) if ORIGIN_FIELD in named else entry_id
    return Job(entry_id, request, reply, enqueued, fmt, origin)
