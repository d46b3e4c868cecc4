"""Stream entries: the two encodings of a job and their decoding into one ``Job``. Pure code.

An entry is plain string fields so redis-cli can write one::

    XADD aiworker:queue:CPU * cmd "AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b" reply r1

The Python client writes the compact form instead: ``job`` holds a msgpack map of the request, and
``fmt msgpack`` asks for a msgpack reply. Both forms decode to the same ``Job`` through the same
checks (``parser.validate``), and every key a request names is
checked at first sight: valid UTF-8, and no output under aiworker's own prefix. The enqueue time is
the stream entry id's millisecond part (Redis' clock), so TIMEOUT counts from enqueue without
trusting the client's clock. No field of an entry says who asked for it: a reply names the
stream and the id Redis gave the entry (``protocol.replies``), never what the entry claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from aiworker.protocol import messages, replies
from aiworker.protocol.errors import AIError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import (
    MODEL,
    SCRIPT,
    Request,
    request_to_map,
)
from aiworker.protocol.text import strict_text, text

# A forwarded entry's first enqueue time (ms): its TIMEOUT keeps counting from there.
# An entry carries a command or a msgpack request, never data: anything bigger is abuse (a model
# blob to check is staged in a key, ``ModelVerify``).
MAX_ENTRY_BYTES = 1 << 20
ENQUEUED_FIELD = "enqueued"
# What a forward copies of an entry (with ENQUEUED_FIELD): the request, where its reply goes and in
# which encoding. Nothing else an entry carries travels on, so a forward stays small.
FORWARDED_FIELDS = ("job", "cmd", "reply", "fmt")


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


def reply_key_of(fields: Mapping[Any, Any], keys: Keys | None = None) -> str | None:
    """The entry's reply key if it is one a reply may go to, even when the rest of the entry is
    malformed: valid UTF-8, and none of aiworker's own keys but a reply list."""
    for name, value in fields.items():
        if text(name) == "reply":
            return reply_key(value, keys)
    return None


def reply_key(value: Any, keys: Keys | None) -> str | None:
    key = strict_text(value) if value is not None else None
    if not key or (keys is not None and keys.owns(key) and not keys.is_reply(key)):
        return None
    return key


def reply_format_of(fields: Mapping[Any, Any]) -> str:
    """The encoding the requester reads its reply in (``fmt``; JSON unless it asks msgpack)."""
    for name, value in fields.items():
        if text(name) == replies.FORMAT_FIELD and text(value) == replies.MSGPACK:
            return replies.MSGPACK
    return replies.JSON


def check_names(request: Request, keys: Keys, utf8: bool = True) -> None:
    """Refuse names that are not valid UTF-8 (only a ``cmd`` can carry such: msgpack text is
    UTF-8 by definition, so ``utf8=False`` skips that check), outputs under aiworker's own
    prefix, and models or scripts there: no store puts one there, and requesters may write some
    of those keys (``tmp:``, ``reply:``), so a hash there is no model an owner stored."""
    for name in request.names() if utf8 else ():
        if strict_text(name) is None:
            shown = name.encode(errors="backslashreplace").decode()
            raise AIError(messages.NAME_NOT_UTF8.format(name=shown))
    for name in request.written_keys():
        if keys.owns(name):
            raise AIError(
                f"WRONGTYPE '{name}' is one of aiworker's own keys ({keys.prefix}*): "
                "a job may not write it"
            )
    for kind, name in request.state_reads():
        if kind in (MODEL, SCRIPT) and keys.owns(name):
            raise AIError(
                f"WRONGTYPE '{name}' is one of aiworker's own keys ({keys.prefix}*): "
                "no model or script is stored there"
            )
