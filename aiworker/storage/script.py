"""Scripts in Redis hashes: validation and atomic store/read (RedisAI's AI.SCRIPT* commands).

A script hash holds ``kind=script``, ``device``, ``tag``, ``entry_points`` (a JSON list),
``source`` (TorchScript text) and ``digest`` (its version, ``digest_of``: workers reload only a
changed script). A store replaces the hash and resets the script's statistics in one MULTI/EXEC, as
RedisAI's SCRIPTSTORE created a fresh AI.INFO entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from aiworker.devices import parse_device
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, WrongTypeError
from aiworker.protocol.keys import Keys
from aiworker.protocol.text import text
from aiworker.storage import model as model_store
from aiworker.storage import plans, staged
from aiworker.storage.plans import Commands, Plan

KIND_SCRIPT = "script"
META_FIELDS = ("kind", "device", "tag", "entry_points", "digest")
SCRIPT_CORRUPT = "script is corrupt: its entry points are not a list of names"


@dataclass(frozen=True)
class ScriptMeta:
    """Everything stored about a script except its source."""

    device: str
    tag: str = ""
    entry_points: tuple[str, ...] = ()
    digest: str = ""


def meta_from_fields(fields: Sequence[Any]) -> ScriptMeta:
    """Decode META_FIELDS values (HMGET order); WRONGTYPE when the hash is not a script."""
    values = dict(zip(META_FIELDS, (text(v) for v in fields), strict=True))
    if values["kind"] != KIND_SCRIPT:
        raise WrongTypeError()
    return ScriptMeta(
        device=values["device"],
        tag=values["tag"],
        entry_points=model_store.stored_names(values["entry_points"], SCRIPT_CORRUPT),
        digest=values["digest"],
    )


def meta_from_reply(reply: Sequence[Any], key: str = "") -> ScriptMeta:
    """Metadata from a read script's reply (``ok`` and the META_FIELDS values, ``none``,
    ``wrongtype`` or ``badfield``), with RedisAI's errors for a missing key or another kind of
    key."""
    status = reply[0]
    if status == b"none":
        raise AIError(messages.SCRIPT_EMPTY)
    if status == b"badfield":
        raise model_store.field_too_long("script", key, text(reply[1]), int(reply[2]))
    if status != b"ok":
        raise WrongTypeError()
    return meta_from_fields(reply[1:])


def validate(
    device: str, source: str | bytes | None, entry_points: Sequence[Any], legacy: bool = False
) -> tuple[str, str, tuple[str, ...]]:
    """Check SCRIPTSTORE arguments; returns (device, source text, entry points).

    ``legacy``: deprecated AI.SCRIPTSET, which stored no entry points (any function runs)."""
    if (not entry_points and not legacy) or any(not name for name in entry_points):
        raise AIError(messages.SCRIPT_NO_ENTRY_POINTS)
    if source is None:  # an empty one compiles: RedisAI stored it (a SCRIPTSET's functions: none)
        raise AIError(messages.SCRIPT_NO_SOURCE)
    names = tuple(model_store.stored_text("ENTRY_POINTS name", name) for name in entry_points)
    source_text = model_store.stored_text("SOURCE", source)
    try:
        parsed = parse_device(device)
    except AIError:
        raise AIError(messages.SCRIPT_BAD_DEVICE) from None  # RedisAI's text for scripts
    return parsed.name, source_text, names


def digest_of(source: str, device: str, entry_points: Sequence[str], tag: str) -> str:
    """The stored version: SHA-1 of the source and of what a worker compiles and checks it with
    (a store of the same source with other entry points is a new version to every worker)."""
    definition = json.dumps([device, list(entry_points), tag, source])
    return hashlib.sha1(definition.encode(), usedforsecurity=False).hexdigest()


def store_plan(
    keys: Keys,
    key: str,
    device: str,
    source: str,
    entry_points: Sequence[str],
    tag: str = "",
) -> Plan[ScriptMeta]:
    """Replace the script at ``key`` atomically (and reset its statistics); WRONGTYPE when the
    key holds anything but a script by then (``staged``: checked in the same atomic step)."""
    meta = ScriptMeta(
        device, tag, tuple(entry_points), digest_of(source, device, entry_points, tag)
    )
    fields = {
        "kind": KIND_SCRIPT,
        "device": meta.device,
        "tag": meta.tag,
        "entry_points": json.dumps(list(meta.entry_points)),
        "digest": meta.digest,
    }
    model_store.check_field_lengths("script", fields)
    fields["source"] = source
    flat: list[Any] = []
    for name, value in fields.items():
        flat += [name, value]
    index = [("SADD", keys.scripts, key)]  # (a refused move leaves it: scans drop it)
    yield from staged.write_plan(keys, key, KIND_SCRIPT, [flat], keys.stats(key), index)
    return meta


def store_script(
    r: redis.Redis,
    keys: Keys,
    key: str,
    device: str,
    source: str,
    entry_points: Sequence[str],
    tag: str = "",
) -> ScriptMeta:
    return plans.run(r, store_plan(keys, key, device, source, entry_points, tag))


def check_reply(values: Any) -> ScriptMeta:
    """Script metadata from an HMGET reply (or the error a pipeline returned for it)."""
    if isinstance(values, Exception):  # BusyLoadingError is a ConnectionError
        if str(values).startswith("WRONGTYPE"):
            raise WrongTypeError()
        raise values
    if all(v is None for v in values):
        raise AIError(messages.SCRIPT_EMPTY)
    return meta_from_fields(values)


def read_meta_plan(key: str) -> Plan[ScriptMeta]:
    """The script's metadata; RedisAI's errors for a missing key or another kind of key."""
    replies = yield Commands.one("HMGET", key, *META_FIELDS)
    return check_reply(replies[0])


def read_meta(r: plans.AnyRedis, key: str) -> ScriptMeta:
    return plans.run(r, read_meta_plan(key))


def read_script_plan(key: str) -> Plan[tuple[ScriptMeta, str]]:
    """Metadata and source of one stored version (one HMGET)."""
    replies = yield Commands.one("HMGET", key, *META_FIELDS, "source")
    values = replies[0]
    if isinstance(values, Exception):
        check_reply(values)  # raises WRONGTYPE
        raise values
    return check_reply(values[:-1]), text(values[-1])


def read_script(r: plans.AnyRedis, key: str) -> tuple[ScriptMeta, str]:
    return plans.run(r, read_script_plan(key))


def read_script_within(r: Any, key: str, max_source: int) -> tuple[ScriptMeta, str]:
    """Metadata and source, as a worker reads them: each field's length checked before it is
    fetched (metadata fields ``model.MAX_METADATA_FIELD_BYTES``, the source ``max_source``,
    a worker's max_model_bytes)."""
    fields = (*META_FIELDS, "source")
    limits = [model_store.MAX_METADATA_FIELD_BYTES] * len(META_FIELDS) + [max_source]
    values = model_store.read_bounded(r, "script", key, fields, limits)
    if isinstance(values, Exception):
        check_reply(values)  # raises WRONGTYPE
        raise values
    return check_reply(values[:-1]), text(values[-1])


def delete_plan(keys: Keys, key: str) -> Plan[None]:
    yield from model_store.checked_delete_plan(keys, key, KIND_SCRIPT)


def scan_plan(keys: Keys) -> Plan[list[tuple[str, str]]]:
    """(key, tag) of every stored script, dropping keys deleted behind aiworker's back."""
    return (yield from model_store.scan_plan(keys, KIND_SCRIPT))
