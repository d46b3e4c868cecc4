"""Stream entries: the two encodings of a job and their decoding into one ``Job``. Pure code.

An entry is plain string fields so redis-cli can write one::

    XADD aiworker:queue:CPU * cmd "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b" reply r1

The Python client writes the compact form instead: ``job`` holds a msgpack map of the request. Both
decode to the same ``Job``. The enqueue time is the stream entry id's millisecond part (Redis' clock),
so TIMEOUT counts from enqueue without trusting the client's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from aiworker.parser import parse_command
from aiworker.protocol.errors import AIError
from aiworker.protocol.replies import FORMAT_FIELD
from aiworker.protocol.requests import Job, Request, request_from_map, request_to_map


def encode_entry(
    request: Request, reply: str | None, fmt: str | None = None
) -> dict[str, bytes | str]:
    """Stream-entry fields of the compact (client) form. ``fmt`` (``replies.MSGPACK``) asks for a
    msgpack reply with raw tensor blobs instead of JSON."""
    fields: dict[str, bytes | str] = {"job": msgpack.packb(request_to_map(request))}
    if reply:
        fields["reply"] = reply
    if fmt:
        fields[FORMAT_FIELD] = fmt
    return fields


ENQUEUED_FIELD = "enqueued"


def entry_time_ms(entry_id: str) -> int:
    try:
        return int(entry_id.split("-", 1)[0])
    except ValueError:
        return 0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def reply_key_of(fields: Mapping[Any, Any]) -> str | None:
    """The reply key of an entry, even when the rest of it is malformed."""
    for name, value in fields.items():
        if _text(name) == "reply":
            return _text(value) or None
    return None


def decode_entry(entry_id: str, fields: Mapping[Any, Any]) -> Job:
    """Decode either entry form; raises ``AIError`` (reply key still found by ``reply_key_of``)."""
    named = {_text(k): v for k, v in fields.items()}
    if "job" in named:
        try:
            data = msgpack.unpackb(named["job"], raw=False)
        except Exception:
            raise AIError("malformed job entry: 'job' is not msgpack") from None
        if not isinstance(data, dict):
            raise AIError("malformed job entry: 'job' is not a map")
        request = request_from_map(data)
    elif "cmd" in named:
        cmd = named["cmd"]
        # surrogateescape keeps a raw BLOB's bytes intact through the text parser
        request = parse_command(
            cmd.decode("utf-8", "surrogateescape") if isinstance(cmd, bytes) else str(cmd)
        )
    else:
        raise AIError("malformed job entry: expected a 'cmd' or 'job' field")
    enqueued = entry_time_ms(entry_id)
    if (
        ENQUEUED_FIELD in named
    ):  # forwarded from another queue: TIMEOUT counts from the first enqueue
        try:
            enqueued = int(named[ENQUEUED_FIELD])
        except ValueError:
            raise AIError(f"malformed job entry: {ENQUEUED_FIELD!r} is not a number") from None
    return Job(entry_id, request, reply_key_of(fields), enqueued)
