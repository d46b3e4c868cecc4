"""Every RedisAI method of the clients, written once: an ``Op`` holds the RedisAI command it stands
for (redisai-py's checks already run) and the plan that carries it out over plain Redis.

The blocking ``Client`` and ``aiworker.asyncio.Client`` drive the same ops; their drivers execute
``storage.plans.Batch`` steps, plus the two instructions defined here: ``Submit`` (queue a job and
wait for its reply) and ``VerifyHere`` (load a model blob in this process). A method returns
redisai-py's post-processed result, or RedisAI's raw reply when the client was made with
``enable_postprocess=False`` (``State.raw``).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiworker.backends.base import io_name_backends, io_names_optional, known_backends
from aiworker.client import commands, raw
from aiworker.client.commands import text
from aiworker.client.verify import check_script_source
from aiworker.devices import parse_device
from aiworker.protocol import messages
from aiworker.protocol.errors import AIError, WrongTypeError
from aiworker.protocol.keys import Keys
from aiworker.protocol.requests import Request
from aiworker.settings import Settings
from aiworker.storage import model as model_store
from aiworker.storage import plans, stats, tensor_io
from aiworker.storage import script as script_store
from aiworker.storage.plans import Batch, Plan

# AI.CONFIG names -> (Settings field, smallest allowed value; None for text).
CONFIG_NAMES: dict[str, tuple[str, int | None]] = {
    "MODEL_CHUNK_SIZE": ("model_chunk_size", 1),
    "BACKENDSPATH": ("backends_path", None),
    "THREADS_PER_QUEUE": ("threads_per_queue", 1),
    "MODEL_EXECUTION_TIMEOUT": ("model_execution_timeout", 0),
    "INTER_OP_PARALLELISM": ("inter_op_parallelism", 0),
    "INTRA_OP_PARALLELISM": ("intra_op_parallelism", 0),
    "BACKEND_MEMORY_LIMIT": ("backend_memory_limit", 0),
}
SCAN_WARNING = (
    "Experimental: {} List API is experimental and might change in the future without any notice"
)


@dataclass
class Submit:
    """Driver instruction: queue ``request`` on device ``queue``, send back the worker's reply
    map (``limit``: seconds to wait, None for the client's rule)."""

    queue: str
    request: Request
    limit: float | None = None


@dataclass
class VerifyHere:
    """Driver instruction: load a model blob in this process (``verify.verify_model``); sends
    back True (loaded) or False (its framework is not importable here)."""

    backend: str
    blob: Any
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    batchsize: int = 0


@dataclass
class Print:
    """Driver instruction: what ``debug=True`` prints (a RedisAI command) at this point."""

    command: Sequence[Any] | str


@dataclass
class Op:
    """A RedisAI method call: its command (printed first with ``debug``; None when the plan
    yields ``Print`` itself) and the plan that carries it out."""

    command: Sequence[Any] | str | None
    plan: Plan[Any]


@dataclass
class State:
    """What ops need from a client: its key names, reply shape and the device queue cache."""

    keyspace: Keys
    raw: bool = False
    devices: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self) -> Any:
        return raw.OK if self.raw else "OK"

    def remember(self, key: str, device: str | None) -> None:
        with self.lock:
            if device is None:
                self.devices.pop(key, None)
            else:
                self.devices[key] = parse_device(device).queue

    def queue_plan(self, key: str, read: Callable[[str], Plan[Any]]) -> Plan[str]:
        """The device queue of a model or script (``read``: its metadata plan), cached: workers
        forward a job that reaches the wrong queue."""
        with self.lock:
            queue = self.devices.get(key)
        if queue is None:
            meta = yield from read(key)
            queue = parse_device(meta.device).queue
            with self.lock:
                self.devices[key] = queue
        return queue


# configuration -----------------------------------------------------------------------------


def config_value_plan(state: State, name: str) -> Plan[Any]:
    upper = name.upper()
    if upper not in CONFIG_NAMES:
        raise AIError("unsupported subcommand")
    field_name, minimum = CONFIG_NAMES[upper]
    stored = yield from plans.call("HGET", state.keyspace.config, upper)
    if stored is None:
        default = getattr(Settings(), field_name)
        return None if default == "" else default
    value = text(stored)
    return value if minimum is None else int(value)


def chunk_size_plan(state: State) -> Plan[int]:
    value = yield from config_value_plan(state, "MODEL_CHUNK_SIZE")
    return int(value)


def config(state: State, name: str, value: Any = None) -> Op:
    """AI.CONFIG: read a setting, or set it for every client (and workers started later)."""
    return Op(commands.config(name, value), _config_plan(state, name, value))


def _config_plan(state: State, name: str, value: Any) -> Plan[Any]:
    if value is None:
        current = yield from config_value_plan(state, name)
        if state.raw and isinstance(current, str):
            return current.encode()
        return current
    upper = name.upper()
    if upper not in CONFIG_NAMES:
        raise AIError("unsupported subcommand")
    minimum = CONFIG_NAMES[upper][1]
    if minimum is not None:
        try:
            value = int(value)
        except (TypeError, ValueError):
            value = minimum - 1
        if value < minimum:
            if upper == "MODEL_CHUNK_SIZE":
                raise AIError("MODEL_CHUNK_SIZE: invalid chunk size")
            raise AIError(f"{upper}: invalid value")
    yield Batch.one("HSET", state.keyspace.config, upper, value)
    return state.ok()


def loadbackend(state: State, identifier: str, path: str) -> Op:
    """AI.CONFIG LOADBACKEND: backends are plugins workers import on first use; only the name is
    checked."""

    def plan() -> Plan[Any]:
        if identifier.upper() not in known_backends():
            raise AIError("unsupported backend")
        yield from ()
        return state.ok()

    return Op(commands.loadbackend(identifier, path), plan())


# tensors -----------------------------------------------------------------------------------


def tensorset(state: State, key: Any, tensor: Any, shape: Any = None, dtype: Any = None) -> Op:
    tokens, array = commands.tensorset(key, tensor, shape, dtype)

    def plan() -> Plan[Any]:
        yield from tensor_io.write_plan(text(key), array, state.keyspace)
        return state.ok()

    return Op(tokens, plan())


def tensorget(
    state: State, key: Any, as_numpy: bool = True, mutable: bool = False, meta_only: bool = False
) -> Op:
    tokens = commands.tensorget(key, as_numpy, meta_only)

    def plan() -> Plan[Any]:
        if meta_only:
            dtype, shape = yield from tensor_io.read_meta_plan(text(key))
            if state.raw:
                return [b"dtype", dtype.encode(), b"shape", list(shape)]
            return {"dtype": dtype, "shape": list(shape)}
        array = yield from tensor_io.read_plan(text(key))
        if state.raw:
            return raw.tensor_reply(array, True, str(tokens[-1]))
        return raw.tensor_result(array, as_numpy, mutable, meta_only)

    return Op(tokens, plan())


# models ------------------------------------------------------------------------------------


def writable_plan(key: str, kind: str) -> Plan[None]:
    """RedisAI refuses to overwrite a key that holds another kind of value."""
    current, exists = yield Batch([("HGET", key, "kind"), ("EXISTS", key)])
    if isinstance(current, Exception):
        raise WrongTypeError()
    if (current is not None and text(current) != kind) or (current is None and exists):
        raise WrongTypeError()


def modelstore(
    state: State,
    key: Any,
    backend: str,
    device: str,
    data: Any,
    batch: int | None = None,
    minbatch: int | None = None,
    minbatchtimeout: int | None = None,
    tag: Any = None,
    inputs: Any = None,
    outputs: Any = None,
    *,
    verify: Callable[..., Plan[None]] | None = None,
    legacy: bool = False,
) -> Op:
    """AI.MODELSTORE (``legacy``: the deprecated AI.MODELSET's checks). As redisai-py, the current
    MODEL_CHUNK_SIZE is read first and the blob sent in chunks of it. ``verify`` is the plan that
    refuses a blob that does not load (``job_ops.verify_plan``)."""
    io_backends = set(io_name_backends())
    backends = set(known_backends())
    tokens: list[Any] = []
    if legacy:  # redisai-py's MODELSET checks came first and did not read the chunk size
        tokens = commands.modelset(
            key, backend, device, data, batch, minbatch, tag, inputs, outputs,
            backends=backends, io_backends=io_backends,
        )  # fmt: skip
    in_names = [text(n) for n in commands.listify(inputs)] if inputs is not None else []
    out_names = [text(n) for n in commands.listify(outputs)] if outputs is not None else []

    def plan() -> Plan[Any]:
        nonlocal tokens
        if not legacy:
            yield Print(commands.config("MODEL_CHUNK_SIZE"))
        size = yield from chunk_size_plan(state)
        if not legacy:
            optional = data is not None and io_names_optional(backend, data)
            tokens = commands.modelstore(
                key, backend, device, data, batch, minbatch, minbatchtimeout, tag, inputs,
                outputs, chunk_size=size, backends=backends, io_backends=io_backends,
                io_optional=optional,
            )  # fmt: skip
        yield Print(tokens)
        if not len(data):
            raise AIError(messages.MODEL_NO_BLOB)
        checked = io_backends
        if not in_names and not out_names and io_names_optional(backend, data):
            checked = {b for b in io_backends if b != backend.upper()}
        name, device_name = model_store.validate_meta(
            backend,
            device,
            known_backends=sorted(backends),
            io_backends=sorted(checked),
            batchsize=batch or 0,
            minbatchsize=minbatch or 0,
            minbatchtimeout=minbatchtimeout or 0,
            inputs=in_names,
            outputs=out_names,
        )
        yield from writable_plan(text(key), model_store.KIND_MODEL)
        if verify is not None:
            yield from verify(text(key), name, device_name, data, in_names, out_names, batch or 0)
        meta = model_store.ModelMeta(
            backend=name,
            device=device_name,
            tag=text(tag) if tag is not None else "",
            batchsize=batch or 0,
            minbatchsize=minbatch or 0,
            minbatchtimeout=minbatchtimeout or 0,
            inputs=tuple(in_names),
            outputs=tuple(out_names),
        )
        yield from model_store.store_plan(state.keyspace, text(key), meta, data, size)
        state.remember(text(key), device_name)
        return state.ok()

    return Op(None, plan())


def modelget(state: State, key: Any, meta_only: bool = False) -> Op:
    """AI.MODELGET: the blob comes back split by the *current* MODEL_CHUNK_SIZE, as RedisAI's."""

    def plan() -> Plan[Any]:
        if meta_only:
            meta = yield from model_store.read_meta_plan(text(key))
            reply = raw.model_reply(meta, None)
        else:
            meta, blob = yield from model_store.read_model_plan(text(key))
            size = yield from chunk_size_plan(state)
            reply = raw.model_reply(meta, raw.blob_reply(blob, size))
        return reply if state.raw else raw.model_result(reply)

    return Op(commands.modelget(key, meta_only), plan())


def modeldel(state: State, key: Any) -> Op:
    def plan() -> Plan[Any]:
        yield from model_store.delete_plan(state.keyspace, text(key))
        state.remember(text(key), None)
        return state.ok()

    return Op(["AI.MODELDEL", key], plan())


def _scan(state: State, kind: str) -> Op:
    warnings.warn(SCAN_WARNING.format(kind.capitalize()), UserWarning, stacklevel=4)

    def plan() -> Plan[Any]:
        if kind == "model":
            found = yield from model_store.scan_plan(state.keyspace)
        else:
            found = yield from script_store.scan_plan(state.keyspace)
        reply = [[k.encode(), tag.encode()] for k, tag in found]
        return reply if state.raw else raw.decoded(reply)

    return Op([f"AI._{kind.upper()}SCAN"], plan())


def modelscan(state: State) -> Op:
    return _scan(state, "model")


# scripts -----------------------------------------------------------------------------------


def scriptstore(
    state: State,
    key: Any,
    device: str,
    script: Any,
    entry_points: Any,
    tag: Any = None,
    legacy: bool = False,
) -> Op:
    """AI.SCRIPTSTORE (``legacy``: the deprecated AI.SCRIPTSET, without entry points). Where
    torch is installed the source is compiled and its entry points checked first, as RedisAI."""
    if legacy:
        tokens = commands.scriptset(key, device, script, tag)
        names: list[str] = []
    else:
        tokens = commands.scriptstore(key, device, script, entry_points, tag)
        names = [text(n) for n in commands.listify(entry_points)]

    def plan() -> Plan[Any]:
        device_name, source, points = script_store.validate(device, script, names, legacy)
        check_script_source(source, points)
        yield from writable_plan(text(key), script_store.KIND_SCRIPT)
        yield from script_store.store_plan(
            state.keyspace, text(key), device_name, source, points, text(tag) if tag else ""
        )
        state.remember(text(key), device_name)
        return state.ok()

    return Op(tokens, plan())


def scriptget(state: State, key: Any, meta_only: bool = False) -> Op:
    """AI.SCRIPTGET: ``device``, ``tag``, ``entry points`` (as RedisAI named it) and ``source``."""

    def plan() -> Plan[Any]:
        meta, source = yield from script_store.read_script_plan(text(key))
        reply = raw.script_reply(meta, None if meta_only else source)
        return reply if state.raw else raw.list2dict(reply)

    return Op(commands.scriptget(key, meta_only), plan())


def scriptdel(state: State, key: Any) -> Op:
    def plan() -> Plan[Any]:
        yield from script_store.delete_plan(state.keyspace, text(key))
        state.remember(text(key), None)
        return state.ok()

    return Op(["AI.SCRIPTDEL", key], plan())


def scriptscan(state: State) -> Op:
    return _scan(state, "script")


# statistics --------------------------------------------------------------------------------


def infoget(state: State, key: Any) -> Op:
    def plan() -> Plan[Any]:
        info = yield from stats.info_plan(state.keyspace, text(key))
        reply = raw.info_reply(info)
        return reply if state.raw else raw.list2dict(reply)

    return Op(["AI.INFO", key], plan())


def inforeset(state: State, key: Any) -> Op:
    def plan() -> Plan[Any]:
        yield from stats.reset_plan(state.keyspace, text(key))
        return state.ok()

    return Op(["AI.INFO", key, "RESETSTAT"], plan())
