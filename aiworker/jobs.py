"""Jobs on the device streams: the request types and the stream-entry encodings. Pure code.

An entry is plain string fields so redis-cli can write one::

    XADD aiworker:queue:CPU * cmd "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b" reply r1

The Python client writes the compact form instead: ``job`` holds a msgpack map of the request. Both
decode to the same ``Job``. The enqueue time is the stream entry id's millisecond part (Redis' clock),
so TIMEOUT counts from enqueue without trusting the client's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

from aiworker.errors import AIError


@dataclass(frozen=True)
class ModelExecute:
    key: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    timeout_ms: int | None = None
    op: str = field(default="MODELEXECUTE", init=False)


@dataclass(frozen=True)
class ScriptExecute:
    key: str
    function: str
    keys: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    timeout_ms: int | None = None
    op: str = field(default="SCRIPTEXECUTE", init=False)


Request = ModelExecute | ScriptExecute
_REQUEST_TYPES: dict[str, type[ModelExecute] | type[ScriptExecute]] = {
    "MODELEXECUTE": ModelExecute,
    "SCRIPTEXECUTE": ScriptExecute,
}


@dataclass(frozen=True)
class Job:
    """One stream entry, decoded."""

    entry_id: str
    request: Request
    reply: str | None
    enqueued_ms: int

    @property
    def deadline_ms(self) -> int | None:
        timeout = self.request.timeout_ms
        return self.enqueued_ms + timeout if timeout else None


def request_to_map(request: Request) -> dict[str, Any]:
    data = asdict(request)
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in data.items() if v not in (None, ())
    }


def request_from_map(data: Mapping[str, Any]) -> Request:
    op = str(data.get("op", "")).upper()
    cls = _REQUEST_TYPES.get(op)
    if cls is None:
        raise AIError(f"unknown job op {op!r}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name == "op":
            continue
        if name == "timeout_ms":
            kwargs[name] = int(value) if value is not None else None
        elif isinstance(value, (list, tuple)):
            kwargs[name] = tuple(str(v) for v in value)
        else:
            kwargs[name] = str(value)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise AIError(f"malformed {op} job: {exc}") from None


def encode_entry(request: Request, reply: str | None) -> dict[str, bytes | str]:
    """Stream-entry fields of the compact (client) form."""
    fields: dict[str, bytes | str] = {"job": msgpack.packb(request_to_map(request))}
    if reply:
        fields["reply"] = reply
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
    from aiworker.parser import parse_command  # the parser builds on the request types above

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
        request = parse_command(_text(named["cmd"]))
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
