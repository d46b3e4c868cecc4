"""Models in Redis hashes: metadata validation, chunking and atomic store/read.

A model hash holds ``kind=model``, ``backend``, ``device``, ``tag``, ``batchsize``, ``minbatchsize``,
``minbatchtimeout``, ``inputs``/``outputs`` (JSON lists), ``digest`` (its version, ``digest_of``),
``size``, ``chunks`` and the blob itself split over ``chunk:0``, ``chunk:1``, ... of
MODEL_CHUNK_SIZE bytes.

Storing is one MULTI/EXEC (the hash written under a temporary key, then moved onto the model's
key by a script that refuses a key holding anything but a model, and the model's statistics
reset: ``staged``), so a reader never sees a torn or mixed model and a value written to the key
meanwhile is never overwritten; readers fetch every chunk inside one MULTI too. Workers compare the
small ``digest`` field, read alongside a job's inputs, with the one they loaded, and reload only
when it changed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from aiworker.devices import parse_device
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, LimitExceeded, WrongTypeError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import IONames
from aiworker.protocol.text import strict_text, text
from aiworker.storage import lua, plans, staged
from aiworker.storage.cluster import NOT_NOW
from aiworker.storage.plans import Commands, Plan

KIND_MODEL = "model"
# Nanoseconds since the epoch when the model was stored (modelscan's order).
STORED_FIELD = "stored"
DEFAULT_CHUNK_SIZE = 511 * 1024 * 1024
META_FIELDS = (
    "kind",
    "backend",
    "device",
    "tag",
    "batchsize",
    "minbatchsize",
    "minbatchtimeout",
    "inputs",
    "outputs",
    "digest",
    "size",
    "chunks",
)
# Reads retried when the model is replaced under them; beyond this, someone rewrites it nonstop.
READ_ATTEMPTS = 5
# More chunk fields than any model needs (with the default MODEL_CHUNK_SIZE a model has a handful):
# a hand-written ``chunks`` field must not make a reader ask for millions of fields.
MAX_CHUNKS = 1 << 16
# The largest chunk a store writes: one HSET argument, below Redis' proto-max-bulk-len (512 MB).
MAX_STORED_CHUNK = DEFAULT_CHUNK_SIZE

# The largest BATCHSIZE, MINBATCHSIZE or MINBATCHTIMEOUT a store takes: what every reader of a
# model hash reads back (18 digits, below 2**63). RedisAI took up to 2**64 - 1; a larger value
# stored here could never be run, read or deleted.
MAX_BATCH_SETTING = 10**18 - 1

# Longest metadata field (INPUTS names, tag, ...) of a model or script that a store writes and a
# worker reads: a hash written by hand may hold anything, and a worker checks before it fetches.
MAX_METADATA_FIELD_BYTES = 1 << 20

_CHUNK_BYTES = lua.load("model_size")
_BOUNDED_HMGET = lua.load("bounded_hmget")
_DELETE = lua.load("checked_delete")


# Backends whose reported input and output counts a request must match exactly
EXACT_COUNTS = frozenset({"ONNX", "TFLITE"})


@dataclass(frozen=True)
class ModelMeta:
    """Everything stored about a model except its blob."""

    backend: str
    device: str
    tag: str = ""
    batchsize: int = 0
    minbatchsize: int = 0
    minbatchtimeout: int = 0
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    digest: str = ""
    size: int = 0
    chunks: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)
    # (inputs, outputs): how many its framework reported when the store checked it, where the
    # store named none (a job's read brings them, ``JOB_FIELDS``); None when unknown
    reported: tuple[int, int] | None = None

    def counts(self) -> tuple[int, int]:
        """How many INPUTS and OUTPUTS a request must name (0: not known before it runs): those
        the store named, else those its framework reported where they are exact (a TorchScript
        ``forward`` may have arguments with defaults: checked when it runs)."""
        if not self.inputs and not self.outputs and self.reported and self.backend in EXACT_COUNTS:
            return self.reported
        return len(self.inputs), len(self.outputs)

    def to_fields(self) -> dict[str, str | int]:
        return {
            "kind": KIND_MODEL,
            "backend": self.backend,
            "device": self.device,
            "tag": self.tag,
            "batchsize": self.batchsize,
            "minbatchsize": self.minbatchsize,
            "minbatchtimeout": self.minbatchtimeout,
            "inputs": json.dumps(list(self.inputs)),
            "outputs": json.dumps(list(self.outputs)),
            "digest": self.digest,
            "size": self.size,
            "chunks": self.chunks,
            **self.extra,
        }


def meta_from_fields(fields: Sequence[Any]) -> ModelMeta:
    """Decode META_FIELDS values (in order, as HMGET returns them); WRONGTYPE if not a model."""
    return _meta(tuple(fields))


@functools.lru_cache(maxsize=256)
def _meta(fields: tuple[Any, ...]) -> ModelMeta:
    """Decoded once per stored version: every job of a model reads the same fields. Fields
    written by hand that no MODELSTORE would store get RedisAI's message for that argument."""
    values = dict(zip(META_FIELDS, (text(v) for v in fields), strict=True))
    if values["kind"] != KIND_MODEL:
        raise WrongTypeError()
    return ModelMeta(
        backend=values["backend"],
        device=values["device"],
        tag=values["tag"],
        batchsize=_whole(values["batchsize"], messages.MODEL_BAD_BATCHSIZE),
        minbatchsize=_whole(values["minbatchsize"], messages.MODEL_BAD_MINBATCHSIZE),
        minbatchtimeout=_whole(values["minbatchtimeout"], messages.MODEL_BAD_MINBATCHTIMEOUT),
        inputs=stored_names(values["inputs"], messages.MODEL_BAD_INPUT_COUNT),
        outputs=stored_names(values["outputs"], messages.MODEL_BAD_OUTPUT_COUNT),
        digest=values["digest"],
        size=_whole(values["size"], "model blob size is not a whole number"),
        # not a count: refused, with the model's name, before any chunk is read
        chunks=int(values["chunks"] or 0) if _DIGITS.fullmatch(values["chunks"] or "0") else -1,
    )


_DIGITS = re.compile(rf"[0-9]{{1,{len(str(MAX_BATCH_SETTING))}}}")


def _whole(value: str, message: str) -> int:
    """A stored count (empty: 0), or RedisAI's error for it."""
    if not value:
        return 0
    if not _DIGITS.fullmatch(value):
        raise AIError(message)
    return int(value)


def stored_names(value: str, message: str) -> tuple[str, ...]:
    """A stored JSON list of input or output names (empty: none), or RedisAI's error for it."""
    try:
        names = json.loads(value or "[]")
    except ValueError:
        raise AIError(message) from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise AIError(message)
    return tuple(names)


def meta_from_reply(reply: Sequence[Any], key: str = "") -> ModelMeta:
    """Metadata from a job read's reply (``ok`` and the JOB_FIELDS values, ``none``,
    ``wrongtype`` or ``badfield``), with RedisAI's errors for a missing key or another kind of
    key."""
    status = reply[0]
    if status == b"none":
        raise AIError(messages.MODEL_EMPTY)
    if status == b"badfield":
        raise field_too_long("model", key, text(reply[1]), int(reply[2]))
    if status != b"ok":
        raise WrongTypeError()
    return _job_meta(tuple(reply[1:]))


@functools.lru_cache(maxsize=256)
def _job_meta(fields: tuple[Any, ...]) -> ModelMeta:
    """META_FIELDS then LISTED_FIELDS values: the metadata, with the counts its framework
    reported (``ModelMeta.reported``) when the store named no inputs or outputs."""
    count = len(META_FIELDS)
    meta = _meta(fields[:count])
    if meta.inputs or meta.outputs or len(fields) != len(JOB_FIELDS):
        return meta
    listed = _with_listed(meta, fields[count:])
    if listed is meta:  # none reported, or unreadable
        return meta
    return dataclasses.replace(meta, reported=(len(listed.inputs), len(listed.outputs)))


def validate_meta(
    backend: str,
    device: str,
    *,
    known_backends: Sequence[str],
    io_backends: Sequence[str],
    batchsize: int = 0,
    minbatchsize: int = 0,
    minbatchtimeout: int = 0,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
) -> tuple[str, str]:
    """Check MODELSTORE arguments with RedisAI's rules; returns (backend, device) normalised.

    ``io_backends`` are the backends that take INPUTS/OUTPUTS names (TF); the others refuse them.
    """
    name = backend.upper()
    if name not in known_backends:
        raise AIError(messages.MODEL_UNSUPPORTED_BACKEND)
    parsed = parse_device(device)
    for value, message in (
        (batchsize, messages.MODEL_BAD_BATCHSIZE),
        (minbatchsize, messages.MODEL_BAD_MINBATCHSIZE),
        (minbatchtimeout, messages.MODEL_BAD_MINBATCHTIMEOUT),
    ):
        if not isinstance(value, int) or not 0 <= value <= MAX_BATCH_SETTING:
            raise AIError(message)
    if name == "TFLITE" and batchsize:  # TFLite models have fixed input shapes
        raise AIError(messages.MODEL_TFLITE_NO_BATCHING)
    if minbatchsize and not batchsize:
        raise AIError(messages.MODEL_MINBATCH_NEEDS_BATCH)
    if minbatchtimeout and not minbatchsize:
        raise AIError(messages.MODEL_MINBATCHTIMEOUT_NEEDS_MINBATCH)
    if name in io_backends:
        if not inputs:
            raise AIError(messages.MODEL_TF_INPUTS_REQUIRED)
        if not outputs:
            raise AIError(messages.MODEL_TF_OUTPUTS_REQUIRED)
    elif inputs or outputs:
        raise AIError(messages.MODEL_IO_NOT_TF)
    return name, parsed.name


def stored_text(what: str, value: Any) -> str:
    """A tag, an input or output name, an entry point or a script's source as stored: text, as
    every reader takes it back; ``AIError`` naming ``what`` when it is not UTF-8 (RedisAI kept
    any bytes, which aiworker could only give back altered)."""
    found = strict_text(value)
    if found is None:
        raise AIError(f"{what} is not valid UTF-8")
    return found


def split_blob(blob: bytes | bytearray | memoryview, chunk_size: int) -> list[memoryview]:
    """Zero-copy chunk views of the blob (at least one, possibly empty)."""
    if chunk_size <= 0:
        raise AIError("MODEL_CHUNK_SIZE must be a positive number of bytes")
    view = memoryview(blob).cast("B")
    chunk_size = stored_chunk_size(len(view), chunk_size)
    if not len(view):
        return [view]
    return [view[start : start + chunk_size] for start in range(0, len(view), chunk_size)]


def stored_chunk_size(size: int, chunk_size: int) -> int:
    """The chunk size a blob of ``size`` bytes is stored with: MODEL_CHUNK_SIZE, within what
    Redis takes as one argument (``MAX_STORED_CHUNK``) and what a reader fetches
    (``MAX_CHUNKS``). AI.CONFIG takes any size, as RedisAI did, whose setting only split
    MODELGET's reply (which follows the setting whatever the stored chunks are)."""
    return min(max(chunk_size, -(-size // MAX_CHUNKS)), MAX_STORED_CHUNK)


def digest_of(blob: bytes | bytearray | memoryview, meta: ModelMeta) -> str:
    """The stored version: SHA-1 of the blob and of everything a worker loads, batches and reports
    it with. Workers cache a model and its metadata by it, so a store that changes any of them (the
    same blob with other batch settings or INPUTS, say) is a new version to every worker; storing
    the same model again is not."""
    definition = [meta.backend, meta.device, meta.tag, meta.batchsize, meta.minbatchsize,
                  meta.minbatchtimeout, list(meta.inputs), list(meta.outputs)]  # fmt: skip
    digest = hashlib.sha1(json.dumps(definition).encode(), usedforsecurity=False)
    digest.update(blob)
    return digest.hexdigest()


def store_plan(
    keys: Keys,
    key: str,
    meta: ModelMeta,
    blob: bytes | bytearray | memoryview,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Plan[ModelMeta]:
    """Replace the model at ``key`` atomically and reset its statistics (a new model, as in
    RedisAI); returns the stored metadata (digest filled in). WRONGTYPE when the key holds
    anything but a model by then (``staged``: checked in the same atomic step as the write)."""
    check_field_lengths("model", meta.to_fields())
    chunks = split_blob(blob, chunk_size)
    stored = dataclasses.replace(
        meta,
        digest=digest_of(blob, meta),
        size=len(memoryview(blob).cast("B")),
        chunks=len(chunks),
    )
    flat: list[Any] = []
    for name, value in stored.to_fields().items():
        flat += [name, value]
    parts = [flat, *([f"chunk:{i}", chunk] for i, chunk in enumerate(chunks))]
    # when it was stored, for modelscan's order (the index is a set)
    parts.append([STORED_FIELD, time.time_ns()])
    # (a refused move leaves the key in the index: scans drop what is no model)
    index = [("SADD", keys.models, key)]
    yield from staged.write_plan(keys, key, KIND_MODEL, parts, keys.stats(key), index)
    return stored


def store_model(
    r: redis.Redis,
    keys: Keys,
    key: str,
    meta: ModelMeta,
    blob: bytes | bytearray | memoryview,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ModelMeta:
    return plans.run(r, store_plan(keys, key, meta, blob, chunk_size))


def check_meta_reply(values: Any) -> ModelMeta:
    """Model metadata from an HMGET of META_FIELDS (or the error a batch returned for it)."""
    if isinstance(values, Exception):  # BusyLoadingError is a ConnectionError
        if str(values).startswith("WRONGTYPE"):
            raise WrongTypeError()
        raise values
    if all(v is None for v in values):
        raise AIError(messages.MODEL_EMPTY)
    return meta_from_fields(values)


# The input and output names a model's framework reported when it was checked at store time
# (JSON lists), kept when the store named none: AI.MODELGET META lists them, as RedisAI did.
LISTED_FIELDS = ("listed_inputs", "listed_outputs")
# What a job's read fetches of a model (read_jobs.lua's MODEL, in this order)
JOB_FIELDS = (*META_FIELDS, *LISTED_FIELDS)


def listed_fields(names: IONames) -> dict[str, str]:
    """The hash fields that keep a model's reported names (``LISTED_FIELDS``); none when they
    would be longer than a worker reads (they only inform)."""
    fields = {f: json.dumps(list(part)) for f, part in zip(LISTED_FIELDS, names, strict=True)}
    if any(len(value.encode()) > MAX_METADATA_FIELD_BYTES for value in fields.values()):
        return {}
    return fields


def check_field_lengths(what: str, fields: Mapping[str, Any]) -> None:
    """Refuse to store a model's or script's metadata with a field longer than a worker reads
    (``MAX_METADATA_FIELD_BYTES``): it could be stored but never run."""
    for name, value in fields.items():
        size = len(value.encode()) if isinstance(value, str) else 0
        if size > MAX_METADATA_FIELD_BYTES:
            raise LimitExceeded(
                f"the {what}'s {name} take {size:,} bytes, more than a {what} may store "
                f"({MAX_METADATA_FIELD_BYTES:,})"
            )


def field_too_long(what: str, key: str, name: str, size: int, limit: int = 0) -> LimitExceeded:
    """The error of a job whose model or script has a stored field longer than a worker reads."""
    limit = limit or MAX_METADATA_FIELD_BYTES
    return LimitExceeded(
        f"{what} '{key}' has a '{name}' field of {size:,} bytes, more than a worker reads "
        f"({limit:,})"
    )


def read_bounded(
    r: Any, what: str, key: str, fields: Sequence[str], limits: Sequence[int]
) -> list[Any] | redis.ResponseError:
    """HMGET of ``fields``, each fetched only if at most its limit (``bounded_hmget.lua``, on a
    client or a pipeline in WATCH mode): the values, or the WRONGTYPE error in their place."""
    args = [x for pair in zip(fields, limits, strict=True) for x in pair]
    try:
        reply = _BOUNDED_HMGET(r, [key], args)
    except redis.ResponseError as exc:
        return exc
    if reply[0] == b"badfield":
        name = text(reply[1])
        raise field_too_long(what, key, name, int(reply[2]), limits[fields.index(name)])
    return list(reply[1:])


def _with_listed(meta: ModelMeta, values: Sequence[Any]) -> ModelMeta:
    """``meta`` showing the names its framework reported (``LISTED_FIELDS`` values) where it
    declares none; unreadable ones are not shown."""
    if meta.inputs or meta.outputs:
        return meta
    try:
        inputs, outputs = (json.loads(text(v)) if v is not None else [] for v in values)
    except ValueError:
        return meta
    if not all(
        isinstance(x, list) and all(isinstance(n, str) for n in x) for x in (inputs, outputs)
    ):
        return meta
    return dataclasses.replace(meta, inputs=tuple(inputs), outputs=tuple(outputs))


def read_counted_meta_plan(key: str) -> Plan[ModelMeta]:
    """The metadata as a job's read brings it: with the counts its framework reported."""
    replies = yield Commands.one("HMGET", key, *_meta_fields(listed=True))
    values = replies[0]
    check_meta_reply(values if isinstance(values, Exception) else values[: len(META_FIELDS)])
    return _job_meta(tuple(values))


def read_meta_plan(key: str, listed: bool = False) -> Plan[ModelMeta]:
    """The model's metadata, or RedisAI's errors for a missing key or another kind of key
    (``listed``: showing the names its framework reported, ``_with_listed``)."""
    replies = yield Commands.one("HMGET", key, *_meta_fields(listed))
    return checked_meta(replies[0], listed)


def _meta_fields(listed: bool) -> tuple[str, ...]:
    return JOB_FIELDS if listed else META_FIELDS


def checked_meta(values: Any, listed: bool) -> ModelMeta:
    """Model metadata from an HMGET of ``META_FIELDS`` (``listed``: of ``JOB_FIELDS``, showing
    the names its framework reported, as AI.MODELGET META lists them: ``_with_listed``)."""
    if not listed or isinstance(values, Exception):
        return check_meta_reply(values)
    count = len(META_FIELDS)
    return _with_listed(check_meta_reply(values[:count]), values[count:])


def read_meta(r: plans.AnyRedis, key: str) -> ModelMeta:
    return plans.run(r, read_meta_plan(key))


def read_model_plan(key: str, listed: bool = False) -> Plan[tuple[ModelMeta, bytes]]:
    """Metadata and blob read in one transaction, so both belong to the same stored version
    (``listed``: as ``read_meta_plan``)."""
    fields = _meta_fields(listed)
    meta = yield from read_meta_plan(key, listed)
    for _ in range(READ_ATTEMPTS):
        _check_chunk_count(key, meta.chunks)
        values, chunks = yield Commands(
            [("HMGET", key, *fields), ("HMGET", key, *_chunk_fields(meta.chunks))],
            transaction=True,
        )
        current = checked_meta(values, listed)
        if isinstance(chunks, Exception):
            raise chunks
        if current.chunks == meta.chunks or current.chunks == 0:
            return current, _join(chunks, current.chunks)
        meta = current  # replaced between the two reads with another chunk count: read again
    raise AIError("model is being replaced too often to read")


def read_model(r: redis.Redis, key: str, max_bytes: int | None = None) -> tuple[ModelMeta, bytes]:
    """Metadata and blob of one stored version.

    With ``max_bytes`` (a worker's max_model_bytes), the blob is sized from the chunks' real
    lengths, never from the hash's own ``size`` field, and refused (LimitExceeded) before any of
    it is fetched; WATCH makes sure the blob fetched is the one that was sized.
    """
    if max_bytes:
        return _read_model_within(r, key, max_bytes)
    return plans.run(r, read_model_plan(key))


def _read_model_within(r: redis.Redis, key: str, max_bytes: int) -> tuple[ModelMeta, bytes]:
    """The metadata's fields and the chunks are sized before they are fetched (a hash written
    by hand may hold anything), under WATCH: what is fetched is what was sized."""
    limits = [MAX_METADATA_FIELD_BYTES] * len(META_FIELDS)
    with r.pipeline(transaction=True) as pipe:
        for _ in range(READ_ATTEMPTS):
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                try:
                    # RedisAI's errors for a missing key or another kind of key first
                    meta = check_meta_reply(read_bounded(pipe, "model", key, META_FIELDS, limits))
                    chunks, total = _CHUNK_BYTES(pipe, [key], [MAX_CHUNKS])
                except redis.exceptions.RedisClusterException:  # see LuaScript.load
                    _BOUNDED_HMGET.load(r, key)
                    _CHUNK_BYTES.load(r, key)
                    pipe.reset()  # type: ignore[no-untyped-call]
                    continue
                _check_chunk_count(key, chunks)
                if total > max_bytes:
                    raise LimitExceeded(
                        f"model '{key}' has {total:,} bytes, more than this worker's "
                        f"max_model_bytes ({max_bytes:,})"
                    )
                pipe.multi()
                pipe.hmget(key, _chunk_fields(int(chunks)))
                (parts,) = pipe.execute()
            except redis.WatchError:
                continue  # replaced after it was sized: size the new version
            if meta.chunks != chunks:  # a hand-written hash whose count is not a number
                raise AIError(f"model '{key}' is corrupt: chunk count {meta.chunks}")
            return meta, _join(parts, meta.chunks)
    raise AIError("model is being replaced too often to read")


def _chunk_fields(chunks: int) -> list[str]:
    return [f"chunk:{i}" for i in range(chunks)] or ["chunk:0"]


def _check_chunk_count(key: str, chunks: int) -> None:
    if not 0 <= chunks <= MAX_CHUNKS:
        raise AIError(
            f"model '{key}' is corrupt: its chunk count is not a whole number from 0 to "
            f"{MAX_CHUNKS:,}"
        )


def _join(chunks: Sequence[Any], count: int) -> bytes:
    parts = chunks[:count]
    if any(c is None for c in parts):
        raise AIError("model blob is incomplete")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def delete_plan(keys: Keys, key: str) -> Plan[None]:
    """Delete the model at ``key``, with RedisAI's errors for a missing key or another kind of
    key. Only its kind is looked at: a model hash whose other fields cannot be read (written by
    hand, or by a store that took what no reader takes) is deleted too, as RedisAI deleted any
    model key it was given."""
    yield from checked_delete_plan(keys, key, KIND_MODEL)


def checked_delete_plan(keys: Keys, key: str, kind: str) -> Plan[None]:
    """Delete a model or script (``kind``) and its statistics in one script that checks the key
    as it deletes (``checked_delete.lua``), then take it out of its index."""
    deleted = yield from _DELETE.plan([key, keys.stats(key)], [kind])
    if isinstance(deleted, Exception):
        if str(deleted).startswith("WRONGTYPE"):
            raise WrongTypeError()
        raise deleted
    if not deleted:
        raise AIError(messages.MODEL_EMPTY if kind == KIND_MODEL else messages.SCRIPT_EMPTY)
    index = keys.models if kind == KIND_MODEL else keys.scripts
    plans.every((yield Commands.one("SREM", index, key)))  # a refusal (NOPERM) is its error


def scan_plan(keys: Keys, kind: str = KIND_MODEL) -> Plan[list[tuple[str, str]]]:
    """(key, tag) of every stored model (or script), dropping keys deleted behind aiworker's
    back. Models come most recently stored first, as RedisAI listed them in redisai-py's suite;
    scripts (and models stored before aiworker recorded the time) by name."""
    index = keys.models if kind == KIND_MODEL else keys.scripts
    members = yield from plans.call("SMEMBERS", index)
    names = sorted(text(k) for k in members)
    if not names:
        return []
    replies = yield Commands([("HMGET", name, "kind", "tag", STORED_FIELD) for name in names])
    found: list[tuple[int, str, str]] = []
    stale = []
    for name, result in zip(names, replies, strict=True):
        if not isinstance(result, Exception) and text(result[0]) == kind:
            stored = text(result[2]) if result[2] is not None else ""
            found.append((int(stored) if stored.isdigit() else 0, name, text(result[1])))
        elif not isinstance(result, Exception) or (
            isinstance(result, redis.ResponseError) and not isinstance(result, NOT_NOW)
        ):
            stale.append(name)  # gone, or something else now (WRONGTYPE)
        # (a cluster node that could not answer, a master lost: the model is still there)
    if stale:
        yield Commands.one("SREM", index, *stale)
    found.sort(key=lambda item: -item[0])  # stable: equal times keep the names' order
    return [(name, tag) for _stored, name, tag in found]
