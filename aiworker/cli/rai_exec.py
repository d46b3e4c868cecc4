"""Run one AI.* command written in RedisAI syntax through a ``Client``; reply as RedisAI would.

Used by ``aiworker exec``. The command is parsed by ``aiworker.parser``; queueable commands
(MODELEXECUTE, SCRIPTEXECUTE, DAGs and their deprecated forms) go to a worker, the others are
plain reads and writes by the client. The reply has RedisAI's shape (``resp_format`` types), so it
prints exactly as redis-cli printed RedisAI's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aiworker.cli.common import quiet
from aiworker.cli.resp_format import ErrorReply
from aiworker.cli.resp_format import Status as SimpleString
from aiworker.client.cluster import ClusterClient
from aiworker.client.raw import info_reply, tensor_reply
from aiworker.client.sync import Client
from aiworker.parser import Command, parse
from aiworker.parser.commands import (
    ConfigCommand,
    InfoGet,
    ModelDel,
    ModelGet,
    ModelScan,
    ModelStore,
    ScriptDel,
    ScriptGet,
    ScriptScan,
    ScriptStore,
)
from aiworker.protocol.errors import AIError, AIWorkerError
from aiworker.protocol.replies import DagTensor, Status
from aiworker.protocol.requests import DagExecute, ModelExecute, ScriptExecute, TensorGet, TensorSet
from aiworker.storage import tensor_io

OK = SimpleString("OK")


def execute(client: Client | ClusterClient, command: str | Sequence[str | bytes]) -> Any:
    """The RESP-shaped reply to ``command``; RedisAI's errors come back as ``ErrorReply``."""
    try:
        return _run(client, parse(command))
    except AIWorkerError as exc:
        return ErrorReply(str(exc))


def _run(client: Client | ClusterClient, cmd: Command) -> Any:
    handler = _HANDLERS.get(type(cmd))
    if handler is None:
        raise AIError(f"unsupported command {type(cmd).__name__}")
    return handler(client, cmd)


def _tensorset(client: Client | ClusterClient, cmd: TensorSet) -> Any:
    client.tensorset(cmd.key, cmd.array())
    return OK


def _tensorget(client: Client | ClusterClient, cmd: TensorGet) -> Any:
    return tensor_reply(tensor_io.read(client, cmd.key), cmd.meta, cmd.data)


def _modelstore(client: Client | ClusterClient, cmd: ModelStore) -> Any:
    client.modelstore(
        cmd.key,
        cmd.backend,
        cmd.device,
        cmd.blob,
        batch=cmd.batchsize,
        minbatch=cmd.minbatchsize,
        minbatchtimeout=cmd.minbatchtimeout,
        tag=cmd.tag,
        inputs=list(cmd.inputs) or None,
        outputs=list(cmd.outputs) or None,
    )
    return OK


def _modeldel(client: Client | ClusterClient, cmd: ModelDel) -> Any:
    client.modeldel(cmd.key)
    return OK


def _modelscan(client: Client | ClusterClient, cmd: ModelScan) -> Any:
    return [[key.encode(), tag.encode()] for key, tag in quiet(client.modelscan)]


def _modelget(client: Client | ClusterClient, cmd: ModelGet) -> Any:
    info = client.modelget(cmd.key, meta_only=not cmd.blob)
    if not cmd.meta:
        return info["blob"]
    reply: list[Any] = []
    for name in ("backend", "device", "tag", "batchsize", "minbatchsize"):
        reply += [name.encode(), _bulk(info[name])]
    reply += [b"inputs", [n.encode() for n in info["inputs"]]]
    reply += [b"outputs", [n.encode() for n in info["outputs"]]]
    reply += [b"minbatchtimeout", info["minbatchtimeout"]]
    if cmd.blob:
        reply += [b"blob", info["blob"]]
    return reply


def _bulk(value: Any) -> Any:
    return value if isinstance(value, int) else str(value).encode()


def _script_method(client: Client | ClusterClient, name: str) -> Any:
    """One of the client's script methods (scriptstore, scriptget, ...)."""
    method = getattr(client, name, None)
    if method is None:
        raise AIError(f"{name} is not available in this build")
    return method


def _scriptstore(client: Client | ClusterClient, cmd: ScriptStore) -> Any:
    store = _script_method(client, "scriptstore")
    store(cmd.key, cmd.device, cmd.source, list(cmd.entry_points) or None, tag=cmd.tag)
    return OK


def _scriptdel(client: Client | ClusterClient, cmd: ScriptDel) -> Any:
    _script_method(client, "scriptdel")(cmd.key)
    return OK


def _scriptscan(client: Client | ClusterClient, cmd: ScriptScan) -> Any:
    scan = _script_method(client, "scriptscan")
    return [[str(key).encode(), str(tag).encode()] for key, tag in quiet(scan)]


def _scriptget(client: Client | ClusterClient, cmd: ScriptGet) -> Any:
    info = _script_method(client, "scriptget")(cmd.key, meta_only=not cmd.source)
    if not cmd.meta:
        return str(info["source"]).encode()
    entry_points = info.get("entry points", [])
    reply: list[Any] = [b"device", _bulk(info["device"]), b"tag", _bulk(info.get("tag", ""))]
    reply += [
        b"Entry Points",
        [e if isinstance(e, bytes) else str(e).encode() for e in entry_points],
    ]
    if cmd.source:
        reply += [b"source", str(info["source"]).encode()]
    return reply


def _info(client: Client | ClusterClient, cmd: InfoGet) -> Any:
    if cmd.reset:
        client.inforeset(cmd.key)
        return OK
    return info_reply(client.infoget(cmd.key))


def _config(client: Client | ClusterClient, cmd: ConfigCommand) -> Any:
    if cmd.action == "LOADBACKEND":
        # backends are Python plugins that workers import on first use: nothing to load here
        return OK
    if cmd.action == "GET":
        if cmd.name not in _config_names():
            return None
        value = client.config(cmd.name)
        return value if isinstance(value, int) or value is None else str(value).encode()
    client.config(cmd.name, cmd.value)
    return OK


def _config_names() -> set[str]:
    from aiworker.client.ops import CONFIG_NAMES

    return set(CONFIG_NAMES)


def _queued(client: Client | ClusterClient, cmd: ModelExecute | ScriptExecute) -> Any:
    reply = client.submit_reply(client.queue_of(cmd), cmd)
    if reply.raise_for_status(timedout_ok=True) is Status.TIMEDOUT:
        return SimpleString("TIMEDOUT")
    return OK


def _dag(client: Client | ClusterClient, cmd: DagExecute) -> Any:
    reply = client.submit_reply(client.queue_of(cmd), cmd)
    if reply.raise_for_status(timedout_ok=True) is Status.TIMEDOUT:
        return SimpleString("TIMEDOUT")
    read = lambda key: tensor_io.read(client, key)  # noqa: E731
    entries = zip(cmd.ops, reply.op_results(), reply.tensors(read), strict=True)
    return [_dag_entry(op, result, tensor) for op, result, tensor in entries]


def _dag_entry(op: Any, result: Any, tensor: DagTensor | None) -> Any:
    if isinstance(result, Exception):
        return ErrorReply(str(result))
    if tensor is not None and op.op == "TENSORGET":
        if tensor.array is None:
            return [b"dtype", tensor.dtype.encode(), b"shape", list(tensor.shape)]
        return tensor_reply(tensor.array, op.meta, op.data)
    return SimpleString(str(result))


# what answers each command (by its parsed type)
_HANDLERS: dict[type[Any], Callable[[Any, Any], Any]] = {
    ModelExecute: _queued,
    ScriptExecute: _queued,
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
    ConfigCommand: _config,
}
