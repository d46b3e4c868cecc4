"""The request types a job carries (MODELEXECUTE, SCRIPTEXECUTE, DAGEXECUTE and DAG ops), and their
msgpack map form. Pure code; ``entries.py`` puts them in stream entries.

Each type answers for itself what callers would otherwise ask with ``isinstance``:

* ``names()``: every key and tensor name it carries (checked at first sight: UTF-8, prefix);
* ``written_keys()``: the Redis keys it may write (outputs, PERSIST keys, a script's KEYS);
* ``reached_keys()``: the Redis keys a script may read and write while it runs (its KEYS);
* ``written_together()``: the keys its completion writes in one step with its reply (on Redis
  Cluster they share the reply's hash slot);
* ``state_reads()``: what the worker reads before running it, as (``MODEL`` | ``SCRIPT`` |
  ``TENSOR`` | ``KIND``, key) pairs, one per use (``read_jobs.lua``'s protocol);
* ``runs_on()``: the stored object whose device decides its queue (``(MODEL, key)``,
  ``(SCRIPT, key)``), None when the request names its device itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError

# What a worker reads for a request (``state_reads``): model or script metadata, a tensor, or only
# the type and kind of a key a DAG persists to.
MODEL, SCRIPT, TENSOR, KIND = "M", "S", "T", "K"
Read = tuple[str, str]


@dataclass(frozen=True)
class ModelExecute:
    key: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    timeout_ms: int | None = None
    op: str = field(default="MODELEXECUTE", init=False)

    def reads(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op reads."""
        return self.inputs

    def writes(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op writes."""
        return self.outputs

    def names(self) -> tuple[str, ...]:
        return (self.key, *self.inputs, *self.outputs)

    def written_keys(self) -> tuple[str, ...]:
        return self.outputs

    def reached_keys(self) -> tuple[str, ...]:
        return ()

    def written_together(self) -> tuple[str, ...]:
        return self.outputs

    def state_reads(self) -> list[Read]:
        return [(MODEL, self.key), *((TENSOR, name) for name in self.inputs)]

    def runs_on(self) -> Read | None:
        return (MODEL, self.key)


@dataclass(frozen=True)
class ScriptExecute:
    key: str
    function: str
    keys: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    timeout_ms: int | None = None
    # Deprecated AI.SCRIPTRUN only: the index in ``inputs`` where its ``$`` list starts; those
    # inputs reach the function as one List[Tensor] argument after the positional tensors.
    variadic: int | None = None
    # Set by the gateway: the script reaches its declared keys only, a declared ``{tag}`` no
    # other key of the tag (the client's rights were asked of Redis for the declared keys).
    exact_keys: bool = False
    op: str = field(default="SCRIPTEXECUTE", init=False)

    def reads(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op reads."""
        return self.inputs

    def writes(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op writes."""
        return self.outputs

    def names(self) -> tuple[str, ...]:
        return (self.key, *self.inputs, *self.outputs, *self.keys)

    def written_keys(self) -> tuple[str, ...]:
        return self.outputs + self.keys

    def reached_keys(self) -> tuple[str, ...]:
        """The Redis keys it may touch while it runs (``redis.execute`` on its KEYS)."""
        return self.keys

    def written_together(self) -> tuple[str, ...]:
        return self.outputs

    def state_reads(self) -> list[Read]:
        return [(SCRIPT, self.key), *((TENSOR, name) for name in self.inputs)]

    def runs_on(self) -> Read | None:
        return (SCRIPT, self.key)


@dataclass(frozen=True)
class TensorSet:
    """AI.TENSORSET (a command, or an op of a DAG): ``blob`` in the stored layout, None for zeros."""

    key: str
    dtype: str
    shape: tuple[int, ...] = ()
    blob: bytes | None = None
    op: str = field(default="TENSORSET", init=False)

    def reads(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op reads."""
        return ()

    def writes(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op writes."""
        return (self.key,)

    def names(self) -> tuple[str, ...]:
        return (self.key,)

    def written_keys(self) -> tuple[str, ...]:
        return ()

    def reached_keys(self) -> tuple[str, ...]:
        return ()

    def state_reads(self) -> list[Read]:
        return []

    def runs_on(self) -> Read | None:
        return None

    def array(self) -> np.ndarray:
        if self.blob is None:
            return codec.zeros(self.dtype, self.shape)
        return codec.from_blob(self.dtype, self.shape, self.blob)


@dataclass(frozen=True)
class TensorGet:
    """AI.TENSORGET: ``meta`` for dtype/shape, ``data`` "BLOB", "VALUES" or "" (none)."""

    key: str
    meta: bool = True
    data: str = "BLOB"
    op: str = field(default="TENSORGET", init=False)

    def reads(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op reads."""
        return (self.key,)

    def writes(self) -> tuple[str, ...]:
        """The DAG-local tensor names this op writes."""
        return ()

    def names(self) -> tuple[str, ...]:
        return (self.key,)

    def written_keys(self) -> tuple[str, ...]:
        return ()

    def reached_keys(self) -> tuple[str, ...]:
        return ()

    def state_reads(self) -> list[Read]:
        return []

    def runs_on(self) -> Read | None:
        return None


DagOp = TensorSet | TensorGet | ModelExecute | ScriptExecute


@dataclass(frozen=True)
class DagExecute:
    """AI.DAGEXECUTE(_RO) (and the deprecated AI.DAGRUN): ops on DAG-local tensors."""

    ops: tuple[DagOp, ...]
    load: tuple[str, ...] = ()
    persist: tuple[str, ...] = ()
    routing: str | None = None
    timeout_ms: int | None = None
    readonly: bool = False
    op: str = field(default="DAGEXECUTE", init=False)

    def names(self) -> tuple[str, ...]:
        return (*self.load, *self.persist, *(name for op in self.ops for name in op.names()))

    def written_keys(self) -> tuple[str, ...]:
        return self.persist + self.reached_keys()

    def reached_keys(self) -> tuple[str, ...]:
        return tuple(key for op in self.ops for key in op.reached_keys())

    def written_together(self) -> tuple[str, ...]:
        return self.persist

    def state_reads(self) -> list[Read]:
        reads: list[Read] = [(TENSOR, key) for key in self.load]
        for op in self.ops:
            reads += [read for read in op.state_reads() if read[0] != TENSOR]
        return reads + [(KIND, key) for key in self.persist]

    def runs_on(self) -> Read | None:
        """Its first model or script op's object (a DAG goes to that device's queue)."""
        return next((found for op in self.ops if (found := op.runs_on()) is not None), None)


class _Check:
    """What a check at store time (MODELVERIFY, SCRIPTVERIFY) names: no key, read or written."""

    def names(self) -> tuple[str, ...]:
        return ()

    def written_keys(self) -> tuple[str, ...]:
        return ()

    def written_together(self) -> tuple[str, ...]:
        return ()

    def state_reads(self) -> list[Read]:
        return []

    def runs_on(self) -> Read | None:
        return None  # it names its device itself


# A model's input and output names as its framework reports them (what a MODELVERIFY reply lists
# besides its verdict; ``LoadedModel.io_names``).
IONames = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class ModelVerify(_Check):
    """MODELVERIFY: load a model blob as a worker would and report whether it loads, nothing
    stored or kept (RedisAI refused a model it could not load at MODELSTORE). ``key``: where the
    blob is staged, the ``blob`` field of a hash under ``Keys.verifying`` (a worker loads no blob
    from anywhere else: a job entry is anyone's who may XADD, a staging key only a model
    owner's). The reply carries
    the verdict in ``loaded``: ``{"status": "ok", "loaded": true, "inputs": [...], "outputs":
    [...]}`` (the names the framework reports, ``IONames``), or ``{"status": "error", "loaded":
    false, "error": <the backend's message, RedisAI's, e.g. "Invalid GraphDef">}``; a reply
    without ``loaded`` means the worker could not check (the client then warns)."""

    backend: str
    device: str
    key: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    batchsize: int = 0
    timeout_ms: int | None = None
    op: str = field(default="MODELVERIFY", init=False)


@dataclass(frozen=True)
class ScriptVerify(_Check):
    """SCRIPTVERIFY: compile a script's source as a worker would and check its entry points
    (RedisAI's messages; RedisAI compiled scripts at SCRIPTSTORE), nothing stored or kept. The
    reply's ``loaded`` says whether it compiled, as MODELVERIFY's does."""

    device: str
    source: str
    entry_points: tuple[str, ...] = ()
    timeout_ms: int | None = None
    op: str = field(default="SCRIPTVERIFY", init=False)


Request = ModelExecute | ScriptExecute | DagExecute | ModelVerify | ScriptVerify
_REQUEST_TYPES: dict[str, type[Request]] = {
    "MODELEXECUTE": ModelExecute,
    "SCRIPTEXECUTE": ScriptExecute,
    "DAGEXECUTE": DagExecute,
    "MODELVERIFY": ModelVerify,
    "SCRIPTVERIFY": ScriptVerify,
}
# Requests that check something a client is about to store: they read and write no key.
VERIFY_OPS = frozenset({"MODELVERIFY", "SCRIPTVERIFY"})
_OP_TYPES: dict[str, type[DagOp]] = {
    "TENSORSET": TensorSet,
    "TENSORGET": TensorGet,
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
    fmt: str = "json"  # the reply's encoding (protocol.replies)

    @property
    def deadline_ms(self) -> int | None:
        """Redis's time (ms) after which the job is late: it has then certainly waited more than
        its TIMEOUT (RedisAI's rule). Its entry id holds the millisecond the XADD ran in, which
        may have begun up to 1 ms before it."""
        timeout = self.request.timeout_ms
        return self.enqueued_ms + timeout + 1 if timeout else None


def request_to_map(request: Any) -> dict[str, Any]:
    """The msgpack map of a request (DAG ops nested). Shallow on purpose: ``dataclasses.asdict``
    deep-copies every value, which cost more than sending a small DAG."""
    out: dict[str, Any] = {}
    for name in _field_names(type(request)):
        value = getattr(request, name)
        if value is None or (isinstance(value, tuple) and not value):
            continue
        if name == "ops":
            value = [request_to_map(op) for op in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    """A request class's fields, remembered (``dataclasses.fields`` builds them at every call)."""
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(spec.name for spec in fields(kind))
    return names


def _optional_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _blob(value: Any) -> bytes | None:
    if value is not None and not isinstance(value, bytes):  # bytes(10**9) would allocate
        raise TypeError("blob is not bytes")
    return value  # type: ignore[no-any-return]


def _names(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_name(v) for v in value)
    return _name(value)


# How a msgpack-decoded field becomes its dataclass type; every other field is text (or texts).
_CONVERT: dict[str, Any] = {
    "ops": lambda value: tuple(_from_map(op, _OP_TYPES) for op in value),
    "timeout_ms": _optional_int,
    "variadic": _optional_int,
    "batchsize": int,
    "readonly": bool,
    "meta": bool,
    "exact_keys": bool,
    "shape": _shape,
    "blob": _blob,
}


def _name(value: Any) -> str:
    """A key or tensor name: msgpack text (bytes would be a client bug)."""
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _from_map(data: Any, types: Mapping[str, type[Any]]) -> Any:
    if not isinstance(data, Mapping):
        raise AIError("malformed job entry: an op is not a map")
    op = str(data.get("op", "")).upper()
    cls = types.get(op)
    if cls is None:
        raise AIError(f"unknown job op {op!r}")
    try:
        kwargs = {n: _CONVERT.get(n, _names)(v) for n, v in data.items() if n != "op"}
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise AIError(f"malformed {op} job: {exc}") from None


def request_from_map(data: Mapping[str, Any]) -> Request:
    request: Request = _from_map(data, _REQUEST_TYPES)
    return request
