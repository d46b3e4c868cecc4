"""Decoding a stream entry into a ``Job``: the structured (msgpack) form through the protocol's
decoder, a ``cmd`` typed in redis-cli through this parser, both through the same checks
(``validate``). The worker holds entries; this is what it calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from aiworker.parser import parse_command
from aiworker.parser.validate import check
from aiworker.protocol.entries import (
    ENQUEUED_FIELD,
    check_names,
    entry_time_ms,
    reply_format_of,
    reply_key,
)
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import Job, Request, request_from_map
from aiworker.protocol.text import text


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


# The longest a forwarded job may have waited in the queue it came from: older claims are forged.
MAX_FORWARDED_AGE_MS = 24 * 3600 * 1000
# How far a forwarded job's first queue's clock may run ahead of its new queue's (Redis Cluster).
CLOCK_SKEW_MS = 60_000


def decode_entry(entry_id: str, fields: Mapping[Any, Any], keys: Keys | None = None) -> Job:
    """Decode either entry form; raises ``AIError`` (the reply key is still found by
    ``reply_key_of``)."""
    keys = keys or Keys()
    named = {text(k): v for k, v in fields.items()}
    request = decode_request(named.get("job"), named.get("cmd"))
    check_names(request, keys, utf8="job" not in named)
    enqueued = entry_time_ms(entry_id)
    if ENQUEUED_FIELD in named:  # forwarded from another queue: TIMEOUT counts from the first
        try:
            first = int(named[ENQUEUED_FIELD])
        except ValueError:
            raise AIError(f"malformed job entry: {ENQUEUED_FIELD!r} is not a number") from None
        # anyone may write the field: only a time before this entry's (give or take the clocks of
        # two cluster nodes), and within a forward's reach, is believed (a forged one reached
        # the queue-time metrics and hooks)
        if enqueued - MAX_FORWARDED_AGE_MS <= first <= enqueued + CLOCK_SKEW_MS:
            enqueued = first
    reply = reply_key(named.get("reply"), keys)
    fmt = reply_format_of(named)
    return Job(entry_id, request, reply, enqueued, fmt)
