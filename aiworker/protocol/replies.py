"""The worker's reply to a job: one ``Reply`` type, built once by the worker and read once by every
client path (``Reply.raise_for_status``, ``op_results``, ``tensors``). Pure code.

A reply is a map pushed (RPUSH) onto the job's ``reply`` list:

* ``status`` (``Status``): ``ok``, ``error``, ``timedout``, or ``forwarded``;
* ``queue`` and ``id``: the stream the answered entry was read from and the id Redis gave that
  entry. Nothing else identifies a reply: a requester believes a reply only when both are those of
  its own XADD (whoever can XADD may name any reply list, but a worker reports where it read the
  entry, never what the entry claims);
* ``worker``: the worker process that answered; ``error``: the message when the status is
  ``error``, with ``bare``: true when it is a framework's own message, which RedisAI sent without
  an error code (``errors.BareMessage``); ``queue_ms``/``compute_ms``: time waiting in the queue
  and running (a DAG's: the time its model and script ops spent in their backends); ``batch``:
  ``size`` and ``requests`` when the request ran in a batch; ``loaded`` (MODELVERIFY's verdict);
* ``results`` (DAGs), one entry per op, in order: ``"OK"`` for a TENSORSET, MODELEXECUTE or
  SCRIPTEXECUTE op that succeeded; ``"NA"`` for an op that did not run because an earlier op
  failed (RedisAI's ``NA``); ``{"error": "<message>"}`` for the op that failed (and ``"bare":
  true`` when the message is a framework's own, as with ``error`` above); for a TENSORGET
  op ``{"dtype": "FLOAT", "shape": [2, 2], "format": [...]}`` (``format`` is what the op asked
  for: ``META``, ``BLOB``, ``VALUES``) plus its data, when it asked for data, as ``values``
  (numbers), ``blob`` (the stored layout) or ``key``: a tensor hash written with the reply that
  expires with it (only in JSON replies, above ``INLINE_LIMIT`` bytes).

A job that reached the queue of another device than its model's is forwarded there by the
completion, which first pushes a notice on the same list: ``{"status": "forwarded", "queue": <old
stream>, "id": <old id>, "to": {"queue": <new stream>, "id": <the id Redis gave the forwarded
entry>}}``; the final reply then names the new stream and id. The notice is JSON whatever the
entry asked for (``forward_notice``: the completion script writes the new id into it).

Replies are JSON by default, readable in redis-cli (a ``blob`` is base64 there). An entry with the
field ``fmt`` = ``msgpack`` (the Python client's) gets a msgpack reply instead, where a ``blob`` is
raw bytes and tensors always travel inline: no base64 blow-up, no extra key to read.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, BareMessage, JobFailed, JobTimedOut, WrongTypeError
from aiworker.protocol.requests import TensorGet

FORMAT_FIELD = "fmt"
JSON = "json"
MSGPACK = "msgpack"
# Above this, a JSON reply's tensor goes to a key that expires with the reply.
INLINE_LIMIT = 64 * 1024
OK = "OK"
NA = "NA"


class Status(enum.StrEnum):
    """A reply's status (a string, so ``reply.status == "ok"`` reads as in redis-cli)."""

    OK = "ok"
    ERROR = "error"
    TIMEDOUT = "timedout"  # the job's TIMEOUT passed before it ran (RedisAI's TIMEDOUT)
    FORWARDED = "forwarded"  # a notice: the job went on to another device's queue (``to``)


_STATUSES = {status.value: status for status in Status}
_FIELDS = frozenset({"status", "queue", "id", "error", "bare", "results", "to"})  # Reply's own


@dataclass(frozen=True)
class DagTensor:
    """A DAG TENSORGET op's result: ``array`` is None when the op asked for META only."""

    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray | None


@dataclass(slots=True)  # not frozen: a frozen dataclass costs microseconds per reply to build
class Reply:
    """What a worker answered about one stream entry (see the module docstring)."""

    status: Status
    queue: str
    id: str
    error: str = ""
    results: list[Any] | None = None  # a DAG's, one per op
    to: tuple[str, str] | None = None  # forwarded: (stream, id) of the entry it became
    extra: Mapping[str, Any] = field(default_factory=dict)  # worker, timings, batch, loaded ...

    def answers(self, queue: str, entry_id: str) -> bool:
        """Whether this reply is about the entry ``entry_id`` of stream ``queue``."""
        return self.queue == queue and self.id == entry_id

    def to_map(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"status": str(self.status), "queue": self.queue, "id": self.id}
        if self.status is Status.ERROR:
            reply["error"] = self.error
            if isinstance(self.error, BareMessage):
                reply["bare"] = True
        if self.to is not None:
            reply["to"] = {"queue": self.to[0], "id": self.to[1]}
        reply.update(self.extra)
        if self.results is not None:
            reply["results"] = self.results
        return reply

    def encode(self, fmt: str = JSON) -> bytes:
        """The bytes pushed onto the reply list."""
        return encode_map(self.to_map(), fmt)

    def raise_for_status(self, timedout_ok: bool = False) -> Status:
        """``Status.OK`` when the job ran, else the exception its status stands for: the job's
        error, or ``JobTimedOut`` when its TIMEOUT passed before it ran - unless ``timedout_ok``
        (RedisAI answered a single MODELEXECUTE or SCRIPTEXECUTE so with the simple string
        ``TIMEDOUT``): then ``Status.TIMEDOUT``. A DAG whose op failed is answered op by op, as
        RedisAI did (``op_results``): that is not raised here."""
        if self.status is Status.OK:
            return Status.OK
        if self.status is Status.TIMEDOUT:
            if timedout_ok:
                return Status.TIMEDOUT
            raise JobTimedOut()
        if self.status is Status.ERROR:
            failed_ops = [r for r in self.results or () if isinstance(r, dict) and "error" in r]
            if not failed_ops:
                raise error_of(self.error or "job failed")
            return Status.OK  # the DAG ran: its ops' results say which failed
        raise JobFailed(f"unexpected reply status {self.status!r}")

    def op_results(self) -> list[Any]:
        """A DAG's per-op results: ``"OK"``, ``"NA"``, a TENSORGET op's entry, or the exception of
        the op that failed (in place, not raised)."""
        if self.results is None:
            raise JobFailed("the worker's reply has no per-op results")
        return [
            error_of(_message(r["error"], r.get("bare")))
            if isinstance(r, dict) and "error" in r
            else r
            for r in self.results
        ]

    def tensors(
        self, read_key: Callable[[str], np.ndarray] | None = None
    ) -> list[DagTensor | None]:
        """Per op, its TENSORGET result decoded (None for other ops). ``read_key`` reads a tensor
        a JSON reply spilled to a key (the Python client asks msgpack replies: never spilled)."""
        return [
            decode_tensor(r, read_key) if isinstance(r, dict) and "dtype" in r else None
            for r in self.op_results()
        ]


def build_reply(
    queue: str,
    entry_id: str,
    worker: str,
    status: str,
    error: str = "",
    queue_ms: int | None = None,
    compute_ms: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Reply:
    """The reply about entry ``entry_id`` of stream ``queue``, finished with ``status``
    (``extra``: the job's reply fields, a DAG's ``results`` among them)."""
    fields: dict[str, Any] = {"worker": worker}
    if queue_ms is not None:
        fields["queue_ms"] = queue_ms
    if compute_ms:
        fields["compute_ms"] = compute_ms
    fields.update(extra or {})
    results = fields.pop("results", None)
    return Reply(_STATUSES[status], queue, entry_id, error, results, extra=fields)


def forward_notice(queue: str, entry_id: str, to_queue: str) -> tuple[bytes, int]:
    """The notice that entry ``entry_id`` of ``queue`` was forwarded to ``to_queue``, without the
    forwarded entry's id, and the byte offset where the completion script writes that id."""
    notice = Reply(Status.FORWARDED, queue, entry_id, to=(to_queue, "")).encode(JSON)
    return notice, len(notice) - len(b'"}}')


def encode_map(reply: Mapping[str, Any], fmt: str = JSON) -> bytes:
    if fmt == MSGPACK:
        return msgpack.packb(reply, use_bin_type=True)  # type: ignore[no-any-return]
    return json.dumps(reply, separators=(",", ":")).encode()


def decode_reply(raw: bytes | str) -> Reply | None:
    """The reply in ``raw`` (either encoding: JSON always starts with ``{``); None when it is not
    one: unreadable, or without a known status, its stream and its entry id. Anyone who may push
    onto a reply list can put anything there, so nothing here raises."""
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        found: Any = json.loads(data) if data[:1] == b"{" else msgpack.unpackb(data, raw=False)
    except Exception:
        return None
    if not isinstance(found, dict):
        return None
    status, queue, entry_id = found.get("status"), found.get("queue"), found.get("id")
    status = _STATUSES.get(status) if isinstance(status, str) else None
    if status is None or not isinstance(queue, str) or not isinstance(entry_id, str):
        return None
    results, to = found.get("results"), found.get("to")
    if results is not None and not isinstance(results, list):
        return None
    target = None
    if status is Status.FORWARDED:
        if not (isinstance(to, dict) and isinstance(to.get("queue"), str)
                and isinstance(to.get("id"), str)):  # fmt: skip
            return None
        target = (to["queue"], to["id"])
    extra = {name: value for name, value in found.items() if name not in _FIELDS}
    error = _message(found.get("error") or "", found.get("bare"))
    return Reply(status, queue, entry_id, error, results, target, extra)


def _message(error: Any, bare: Any) -> str:
    """A reply's error text, a ``BareMessage`` when the reply flags it so."""
    return BareMessage(str(error)) if bare is True else str(error)


def error_field(message: str) -> dict[str, Any]:
    """A failed DAG op's result: its message, flagged when it is a framework's own."""
    return (
        {"error": message, "bare": True} if isinstance(message, BareMessage) else {"error": message}
    )


def error_of(message: str) -> AIError:
    """The exception a failure message stands for (as redis-py would have raised it)."""
    if message.startswith("WRONGTYPE"):
        return WrongTypeError(message)
    return JobFailed(message)


# DAG TENSORGET results ----------------------------------------------------------------------


def tensor_format(op: TensorGet) -> list[str]:
    return (["META"] if op.meta else []) + ([op.data] if op.data else [])


def _json_safe(array: np.ndarray) -> bool:
    """JSON has no NaN or infinity: such floats travel as a blob."""
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def encode_tensor(
    array: np.ndarray, op: TensorGet, spill_key: str | None, fmt: str = JSON
) -> dict[str, Any]:
    """A TENSORGET op's result entry; when it names ``key`` the caller must write ``array`` there
    (JSON replies only)."""
    dtype = codec.dtype_of(array)
    entry: dict[str, Any] = {
        "dtype": dtype,
        "shape": list(array.shape),
        "format": tensor_format(op),
    }
    if not op.data:
        return entry
    small = fmt == MSGPACK or array.size * array.itemsize <= INLINE_LIMIT
    if op.data == "VALUES" and dtype != "STRING" and _json_safe(array) and small:
        entry["values"] = codec.to_values(array)
        return entry
    blob = bytes(codec.to_blob(array))
    if fmt == MSGPACK:
        entry["blob"] = blob
    elif len(blob) > INLINE_LIMIT and spill_key:
        entry["key"] = spill_key
    else:
        entry["blob"] = base64.b64encode(blob).decode()
    return entry


def decode_tensor(
    entry: Mapping[str, Any], read_key: Callable[[str], np.ndarray] | None = None
) -> DagTensor:
    """A TENSORGET result entry decoded (``read_key`` reads one spilled to a key)."""
    try:
        dtype = codec.parse_dtype(str(entry["dtype"]))
        shape = tuple(int(d) for d in entry["shape"])
        if "key" in entry:
            if read_key is None:
                raise JobFailed(f"the reply's tensor is in key {entry['key']!r}: read it there")
            return DagTensor(dtype, shape, read_key(str(entry["key"])))
        if "values" in entry:
            return DagTensor(dtype, shape, codec.from_values(dtype, shape, list(entry["values"])))
        if "blob" in entry:
            blob = entry["blob"]
            data = blob if isinstance(blob, (bytes, bytearray)) else base64.b64decode(blob)
            return DagTensor(dtype, shape, codec.from_blob(dtype, shape, data))
        return DagTensor(dtype, shape, None)
    except AIError:
        raise
    except Exception as exc:
        raise JobFailed(f"malformed tensor in the worker's reply: {exc}") from None
