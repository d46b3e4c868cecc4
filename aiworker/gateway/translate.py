"""Each AI.* command carried out over aiworker's hashes and streams, replying as RedisAI 1.2.7 did.

``reply_plan`` is a plan (``storage.plans``) built from the client's own plans (``client.ops``,
``model_ops``, ``script_ops``, ``job_ops``), so the blocking, cluster and asyncio clients all drive
it: the gateway on its clients' connections, ``aiworker exec`` on the blocking client.
It returns the reply as ``resp`` values: bulk strings for every text field, integers for dims and
counters, ``Status`` for RedisAI's simple strings (``OK``, ``NA``, ``TIMEDOUT``), ``ErrorReply`` for
a failed DAG op; a failed command raises (``error_reply`` gives its reply).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from aiworker.client import job_ops, model_ops, ops, raw, script_ops
from aiworker.client.ops import CONFIG_NAMES, State
from aiworker.parser import Command
from aiworker.parser.commands import (
    ConfigCommand,
    InfoGet,
    ModelDel,
    ModelGet,
    ModelScan,
    ModelStore,
    ModuleInfo,
    ScriptDel,
    ScriptGet,
    ScriptScan,
    ScriptStore,
)
from aiworker.parser.dag import DAG_COMMANDS, loaded_first
from aiworker.protocol import messages, replies
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import DagExecute, ModelExecute, ScriptExecute, TensorGet, TensorSet
from aiworker.protocol.resp import ErrorReply, Status, error_reply_of
from aiworker.storage import health, stats, tensor_io
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage.plans import Plan

from . import access

OK = Status("OK")
STORES = (ModelStore, ScriptStore)


@dataclass(frozen=True)
class KeyFirst:
    """A command whose arguments are wrong after keys RedisAI read before it met them: a key of
    AI.TENSORSET or AI.TENSORGET (it opened the key first), the LOAD keys of a DAG (it loaded
    them as it parsed). A key holding something else than a tensor, or an empty one where a
    tensor is read, is the error it reported; else ``error``, the arguments' own."""

    keys: tuple[str, ...]
    read: bool  # each key must hold a tensor (AI.TENSORSET: an empty key will do)
    error: AIError
    # AI.MODELEXECUTE: ``keys`` is its model, and these the INPUTS and OUTPUTS counts that parsed
    # before the wrong argument (None: not reached), each compared with the model's as it came
    counts: tuple[int | None, int | None] | None = None


def key_first(tokens: Sequence[str], error: AIError) -> KeyFirst | None:
    """What a failed parse of ``tokens`` (a command, its name first) becomes where RedisAI read
    keys before the wrong arguments (and after its arity check), else None."""
    name, argc = tokens[0].upper(), len(tokens)
    if name == "AI.TENSORSET" and argc >= 4:
        return KeyFirst((tokens[1],), False, error)
    if name == "AI.TENSORGET" and 2 <= argc <= 4:
        return KeyFirst((tokens[1],), True, error)
    if name == "AI.MODELEXECUTE" and argc >= 8:
        return KeyFirst((tokens[1],), True, error, _counts_parsed(tokens[2:]))
    if name in DAG_COMMANDS:
        loaded = loaded_first(tokens[1:], name)
        return KeyFirst(loaded, True, error) if loaded else None
    return None


def _counts_parsed(args: Sequence[str]) -> tuple[int | None, int | None]:
    """MODELEXECUTE's INPUTS and OUTPUTS counts (``args`` after its key) where they parse."""

    def count(word: str, at: int) -> int | None:
        if at + 1 >= len(args) or args[at].upper() != word:
            return None
        value = args[at + 1]
        return int(value) if value.isdigit() and int(value) > 0 else None

    inputs = count("INPUTS", 0)
    if inputs is None or 2 + inputs > len(args):
        return inputs, None
    return inputs, count("OUTPUTS", 2 + inputs)


def _key_first(state: State, cmd: KeyFirst) -> Plan[Any]:
    if cmd.counts is not None:  # the model was read first, then each count met
        inputs, outputs = (yield from model_store.read_counted_meta_plan(cmd.keys[0])).counts()
        if cmd.counts[0] is not None and inputs and cmd.counts[0] != inputs:
            raise AIError(messages.MODEL_INPUT_COUNT)
        if cmd.counts[1] is not None and outputs and cmd.counts[1] != outputs:
            raise AIError(messages.MODEL_OUTPUT_COUNT)
        raise cmd.error
    for key in cmd.keys:
        try:
            yield from tensor_io.read_meta_plan(key)
        except AIError as exc:
            if cmd.read or str(exc) != messages.TENSOR_EMPTY:
                raise
    raise cmd.error


def reply_plan(state: State, cmd: Command | KeyFirst) -> Plan[Any]:
    """Carry out ``cmd``; the plan returns RedisAI's reply (``state`` must be ``raw``)."""
    return (yield from _HANDLERS[type(cmd)](state, cmd))


def _tensorset(state: State, cmd: TensorSet) -> Plan[Any]:
    yield from tensor_io.write_plan(cmd.key, cmd.array(), state.keyspace)
    return OK


def _info(state: State, cmd: InfoGet) -> Plan[Any]:
    if cmd.reset:
        yield from stats.reset_plan(state.keyspace, cmd.key)
        return OK
    return raw.info_reply((yield from stats.info_plan(state.keyspace, cmd.key)))


def _module_info(state: State, cmd: ModuleInfo) -> Plan[Any]:
    """The backends are those the live workers have loaded (RedisAI loaded one on first use)."""
    backends: dict[str, str] = {}
    for status in (yield from health.live_workers_plan(state.keyspace)):
        for name, version in (status.get("backends") or {}).items():
            backends.setdefault(str(name), str(version))
    return raw.module_info_reply(backends)


def _tensorget(state: State, cmd: TensorGet) -> Plan[Any]:
    if not cmd.data:  # META alone: the blob is not read
        dtype, shape = yield from tensor_io.read_meta_plan(cmd.key)
        return [b"dtype", dtype.encode(), b"shape", list(shape)]
    array = yield from tensor_io.read_plan(cmd.key)
    if cmd.data != "BLOB":
        return raw.tensor_reply(array, cmd.meta, cmd.data)
    blob = codec.to_blob(array)  # the stored bytes themselves (a view), checked by the codec
    if not cmd.meta:
        return blob
    return [b"dtype", codec.dtype_of(array).encode(), b"shape", list(array.shape), b"blob", blob]


def _modelstore(state: State, cmd: ModelStore) -> Plan[Any]:
    op = model_ops.modelstore(
        state, cmd.key, cmd.backend, cmd.device, cmd.blob, batch=cmd.batchsize,
        minbatch=cmd.minbatchsize, minbatchtimeout=cmd.minbatchtimeout, tag=cmd.tag,
        inputs=list(cmd.inputs) or None, outputs=list(cmd.outputs) or None,
        verify=partial(job_ops.verify_plan, state), blob_argument=True,
    )  # fmt: skip
    yield from op.plan
    return OK


def _modeldel(state: State, cmd: ModelDel) -> Plan[Any]:
    yield from model_ops.modeldel(state, cmd.key).plan
    return OK


def _modelscan(state: State, cmd: ModelScan) -> Plan[Any]:
    found = yield from model_store.scan_plan(state.keyspace)
    return [[key.encode(), tag.encode()] for key, tag in found]


def _modelget(state: State, cmd: ModelGet) -> Plan[Any]:
    reply = yield from model_ops.modelget(state, cmd.key, meta_only=not cmd.blob).plan
    return reply if cmd.meta else reply[-1]


def _scriptstore(state: State, cmd: ScriptStore) -> Plan[Any]:
    op = script_ops.scriptstore(
        state, cmd.key, cmd.device, cmd.source, list(cmd.entry_points), cmd.tag or None,
        legacy=cmd.deprecated, client_checks=False,
    )  # fmt: skip
    yield from op.plan
    return OK


def _scriptdel(state: State, cmd: ScriptDel) -> Plan[Any]:
    yield from script_ops.scriptdel(state, cmd.key).plan
    return OK


def _scriptscan(state: State, cmd: ScriptScan) -> Plan[Any]:
    found = yield from script_store.scan_plan(state.keyspace)
    return [[key.encode(), tag.encode()] for key, tag in found]


def _scriptget(state: State, cmd: ScriptGet) -> Plan[Any]:
    reply = yield from script_ops.scriptget(state, cmd.key, meta_only=not cmd.source).plan
    return reply if cmd.meta else reply[-1]


def _config(state: State, cmd: ConfigCommand) -> Plan[Any]:
    if cmd.action == "LOADBACKEND":
        yield from ops.loadbackend(state, cmd.name, cmd.value or "").plan
        return OK
    if cmd.action == "GET":
        if cmd.name not in CONFIG_NAMES:
            return None
        value = yield from ops.config_value_plan(state, cmd.name)
        return value if isinstance(value, int) or value is None else str(value).encode()
    yield from ops.config(state, cmd.name, cmd.value).plan
    return OK


def _job(state: State, cmd: ModelExecute | ScriptExecute) -> Plan[Any]:
    reply = yield from job_ops.submit_plan(state, access.exact(cmd), access.probes(cmd))
    if reply.raise_for_status(timedout_ok=True) is replies.Status.TIMEDOUT:
        return Status("TIMEDOUT")
    return OK


def _dag(state: State, cmd: DagExecute) -> Plan[Any]:
    reply = yield from job_ops.submit_plan(state, access.exact(cmd), access.probes(cmd))
    if reply.raise_for_status(timedout_ok=True) is replies.Status.TIMEDOUT:
        return Status("TIMEDOUT")
    entries = zip(cmd.ops, reply.op_results(), reply.tensors(), strict=True)
    return [_dag_entry(op, result, tensor) for op, result, tensor in entries]


def _dag_entry(op: Any, result: Any, tensor: replies.DagTensor | None) -> Any:
    """One op's part of a DAG's reply: OK/NA, the op's error, or a TENSORGET's tensor."""
    if isinstance(result, Exception):
        return error_reply_of(result)
    if tensor is not None and op.op == "TENSORGET":
        if tensor.array is None:
            return [b"dtype", tensor.dtype.encode(), b"shape", list(tensor.shape)]
        return raw.tensor_reply(tensor.array, op.meta, op.data)
    return Status(str(result))


# what carries out each command (by its parsed type)
_HANDLERS: dict[type[Any], Callable[[State, Any], Plan[Any]]] = {
    ModelExecute: _job,
    ScriptExecute: _job,
    DagExecute: _dag,
    TensorSet: _tensorset,
    TensorGet: _tensorget,
    ModelStore: _modelstore,
    ModelGet: _modelget,
    ModelDel: _modeldel,
    ModelScan: _modelscan,
    ScriptStore: _scriptstore,
    ScriptGet: _scriptget,
    ScriptDel: _scriptdel,
    ScriptScan: _scriptscan,
    InfoGet: _info,
    ModuleInfo: _module_info,
    ConfigCommand: _config,
    KeyFirst: _key_first,
}


# errors --------------------------------------------------------------------------------------

# redis-py strips these codes from the errors it raises; the client must see them again (a
# cluster client retries on CLUSTERDOWN and TRYAGAIN). MASTERDOWN's class is CLUSTERDOWN's too.
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (redis.exceptions.NoPermissionError, "NOPERM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
)


def error_reply(exc: BaseException) -> ErrorReply:
    """The error reply for an exception raised while carrying out a command."""
    if isinstance(exc, redis.exceptions.SlotNotCoveredError):
        # redis-py's slot map has no master for the key's slot: what a node answers then
        return ErrorReply("CLUSTERDOWN Hash slot not served")
    message = str(exc) or type(exc).__name__
    if isinstance(exc, redis.exceptions.AuthenticationError):
        if "required" in message:
            return ErrorReply("NOAUTH " + message)
        return ErrorReply("WRONGPASS " + message)
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return ErrorReply(f"{code} {message}")
    if isinstance(exc, redis.exceptions.ConnectionError):
        return ErrorReply(f"gateway: Redis unreachable ({message})")
    if isinstance(exc, redis.exceptions.TimeoutError):
        return ErrorReply(f"gateway: Redis timed out ({message})")
    return error_reply_of(exc)
