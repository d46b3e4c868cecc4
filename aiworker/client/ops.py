"""Every RedisAI method of the clients, written once: an ``Op`` holds the RedisAI command it stands
for (redisai-py's checks already run) and the plan that carries it out over plain Redis. This
module has the shared types, configuration, tensors, scans and statistics; ``model_ops``,
``script_ops`` and ``job_ops`` the rest.

The blocking ``Client`` and ``aiworker.asyncio.Client`` drive the same ops; their drivers execute
``storage.plans.Commands`` steps, plus the instructions defined here: ``Submit`` (queue a job and
wait for its reply), ``VerifyHere`` (check a model or script in this process) and ``Print``
(``debug``). A method returns redisai-py's post-processed result, or RedisAI's raw reply when the
client was made with ``enable_postprocess=False`` (``State.raw``).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from aiworker.client import commands, raw
from aiworker.client.commands import text
from aiworker.client.verify import check_script_source, verify_model
from aiworker.devices import parse_device
from aiworker.protocol.backend_names import known_backends
from aiworker.protocol.errors import AIError, WrongTypeError
from aiworker.protocol.keys import REMEMBERED_KEY_LENGTH, Keys
from aiworker.protocol.requests import IONames, Request
from aiworker.settings import REDIS_CONFIG, Settings, whole_number
from aiworker.storage import model as model_store
from aiworker.storage import plans, stats, tensor_io
from aiworker.storage import script as script_store
from aiworker.storage.plans import Commands, Plan

# AI.CONFIG names -> (Settings field, smallest and largest value; None for text). A worker
# setting takes the values a worker reads from the shared hash (``REDIS_CONFIG``): one beyond
# them was stored and answered, and every worker ignored it. MODEL_CHUNK_SIZE takes any positive
# size, as RedisAI did.
CONFIG_NAMES: dict[str, tuple[str, tuple[int, int | None] | None]] = {
    "MODEL_CHUNK_SIZE": ("model_chunk_size", (1, None)),
    "BACKENDSPATH": ("backends_path", None),
    **{
        name: (field_name, (low, high))
        for name, (field_name, low, high) in REDIS_CONFIG.items()
        if name != "MODEL_CHUNK_SIZE"
    },
}
SCAN_WARNING = (
    "Experimental: {} List API is experimental and might change in the future without any notice"
)


@dataclass
class Submit:
    """Driver instruction: queue ``request`` on device ``queue``, send back the worker's reply
    map (``limit``: seconds to wait, None for the client's rule). ``guard``: commands Redis must
    accept for the request to be queued (the gateway's questions about the client's rights):
    sent before its XADD, in its MULTI where a driver can (their refusal aborts it), and the
    first refusal raised (``refusal_in``)."""

    queue: str
    request: Request
    limit: float | None = None
    guard: tuple[tuple[Any, ...], ...] = ()


# What a guard's reply may be that keeps a job from being queued.
REFUSALS = (redis.exceptions.NoPermissionError, redis.exceptions.ReadOnlyError)


def refusal_in(replies: Sequence[Any]) -> Exception | None:
    """The first refusal among a guard's replies (``Submit.guard``), else None: any other reply
    (a value, WRONGTYPE) means Redis let the command be run."""
    return next((reply for reply in replies if isinstance(reply, REFUSALS)), None)


class VerifyHere:
    """Driver instruction: check in this process what is about to be stored (``check``); sends
    back something true (it loads or compiles: a model's reported input and output names, or
    True; ``AIError`` with RedisAI's message when it does not) or something false (its framework
    is not importable here). The gateway sends back False without checking: it never loads a
    framework, a live worker checks instead."""

    def check(self) -> Any:
        raise NotImplementedError


@dataclass
class VerifyModelHere(VerifyHere):
    """Load a model blob (``verify.verify_model``)."""

    backend: str
    blob: Any
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    batchsize: int = 0

    def check(self) -> IONames | None:
        return verify_model(self.backend, self.blob, self.inputs, self.outputs, self.batchsize)


@dataclass
class VerifyScriptHere(VerifyHere):
    """Compile a script and check its entry points (``verify.check_script_source``)."""

    source: str
    entry_points: tuple[str, ...] = ()

    def check(self) -> bool:
        return check_script_source(self.source, self.entry_points)


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


# Device queues a client (the gateway's too) remembers, at most: the least recently used go first,
# and keys longer than REMEMBERED_KEY_LENGTH are read every time. Models and scripts stored and
# deleted under new names (by another client, or by DEL) cannot make a long-running process hold
# more than this.
MAX_REMEMBERED_DEVICES = 10_000


@dataclass
class State:
    """What ops need from a client: its key names, reply shape and the device queue cache."""

    keyspace: Keys
    raw: bool = False
    devices: OrderedDict[str, str] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # told why a model or script is stored unchecked, in place of its warning (the gateway's
    # clients cannot be shown one: it logs it)
    unverified: Callable[[str], None] | None = None

    def ok(self) -> Any:
        return raw.OK if self.raw else "OK"

    def remember(self, key: str, device: str | None) -> None:
        with self.lock:
            if device is None:
                self.devices.pop(key, None)
            else:
                self._keep(key, parse_device(device).queue)

    def cached(self, key: str) -> str | None:
        with self.lock:
            queue = self.devices.get(key)
            if queue is not None:
                self.devices.move_to_end(key)
            return queue

    def _keep(self, key: str, queue: str) -> None:
        """Remember ``key``'s queue (``MAX_REMEMBERED_DEVICES``); with the lock held."""
        if len(key) > REMEMBERED_KEY_LENGTH:
            return
        self.devices[key] = queue
        self.devices.move_to_end(key)
        if len(self.devices) > MAX_REMEMBERED_DEVICES:
            self.devices.popitem(last=False)

    def queue_plan(self, key: str, read: Callable[[str], Plan[Any]]) -> Plan[str]:
        """The device queue of a model or script (``read``: its metadata plan), cached: workers
        forward a job that reaches the wrong queue (``followed`` learns where), and a queue no
        live worker serves is read again (``forget``). Another client may store the key anew
        on another device at any time."""
        queue = self.cached(key)
        if queue is None:
            meta = yield from read(key)
            queue = parse_device(meta.device).queue
            with self.lock:
                self._keep(key, queue)
        return queue

    def forget(self, key: str, queue: str) -> None:
        """No live worker serves ``queue``: the next job reads ``key``'s device again (unless a
        job learnt another queue meanwhile)."""
        with self.lock:
            if self.devices.get(key) == queue:
                del self.devices[key]

    def followed(self, key: str, queue: str, stream: str) -> None:
        """A job for ``key`` sent to ``queue`` was answered from ``stream``: another queue's
        when a worker forwarded it to the device ``key`` is stored for now, which later jobs
        go to directly."""
        device = self.keyspace.device_of(stream)
        if device != queue:
            with self.lock:
                self._keep(key, device)


# configuration -----------------------------------------------------------------------------


def config_value_plan(state: State, name: str) -> Plan[Any]:
    """A setting's current value; None for a name AI.CONFIG does not know (as redisai-py got
    from RedisAI)."""
    upper = name.upper()
    if upper not in CONFIG_NAMES:
        return None
    field_name, bounds = CONFIG_NAMES[upper]
    stored = yield from plans.call("HGET", state.keyspace.config, upper)
    if stored is not None and bounds is None:
        return text(stored)
    number = None if stored is None else _whole_number(text(stored), bounds)
    if number is None:  # unset, or what no AI.CONFIG wrote (an HSET): workers ignore it too
        default = getattr(Settings(), field_name)
        return None if default == "" else default
    return number


def _whole_number(value: str, bounds: tuple[int, int | None] | None) -> int | None:
    """``value`` as a whole number within ``bounds`` (a setting that is no text), else None."""
    return None if bounds is None else whole_number(value, *bounds)


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
    bounds = CONFIG_NAMES[upper][1]
    if bounds is not None:
        value = _whole_number(text(value), bounds)
        if value is None:
            if upper == "MODEL_CHUNK_SIZE":
                raise AIError("MODEL_CHUNK_SIZE: invalid chunk size")
            raise AIError(f"{upper}: invalid value")
    yield from plans.call("HSET", state.keyspace.config, upper, value)  # a refusal raises
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


# models and scripts ------------------------------------------------------------------------


def writable_plan(key: str, kind: str) -> Plan[None]:
    """RedisAI refuses to overwrite a key that holds another kind of value."""
    current, exists = yield Commands([("HGET", key, "kind"), ("EXISTS", key)])
    for reply in (current, exists):  # a refusal (NOPERM) is no answer about the key's type
        if isinstance(reply, Exception) and not str(reply).startswith("WRONGTYPE"):
            raise reply
    if isinstance(current, Exception):
        raise WrongTypeError()
    if (current is not None and text(current) != kind) or (current is None and exists):
        raise WrongTypeError()


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
