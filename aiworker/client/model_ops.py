"""The model methods (MODELSTORE, MODELGET, MODELDEL) as ``ops.Op`` plans."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiworker.client import commands, raw
from aiworker.client.commands import text
from aiworker.client.ops import Op, Print, State, chunk_size_plan, writable_plan
from aiworker.parser.common import parse_unsigned
from aiworker.protocol import messages
from aiworker.protocol.backend_names import io_name_backends, io_names_optional, known_backends
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import IONames
from aiworker.storage import model as model_store
from aiworker.storage.plans import Plan


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
    verify: Callable[..., Plan[IONames | None]] | None = None,
    legacy: bool = False,
    blob_argument: bool = False,
) -> Op:
    """AI.MODELSTORE (``legacy``: the deprecated AI.MODELSET's checks). As redisai-py, the current
    MODEL_CHUNK_SIZE is read first and the blob sent in chunks of it. ``verify`` is the plan that
    refuses a blob that does not load (``job_ops.verify_plan``); the input and output names it
    reports are kept for MODELGET META when the store names none (RedisAI listed them).
    ``blob_argument``: the command held a BLOB argument even when it is empty (the gateway's
    ``BLOB ""``, which RedisAI handed to the framework); redisai-py sent none for empty data."""
    if isinstance(data, str):  # redis-py sent text as UTF-8, and RedisAI took it as the blob
        data = data.encode()
    io_backends = set(io_name_backends())
    backends = set(known_backends())
    tokens: list[Any] = []
    if legacy:  # redisai-py's MODELSET checks came first and did not read the chunk size
        tokens = commands.modelset(
            key, backend, device, data, batch, minbatch, tag, inputs, outputs,
            backends=backends, io_backends=io_backends,
        )  # fmt: skip
        if backend.upper() not in io_backends:  # it sent INPUTS and OUTPUTS for TF alone
            inputs = outputs = None

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
        if not len(data) and not (blob_argument and verify is not None):
            raise AIError(messages.MODEL_NO_BLOB)
        in_names = _names("INPUTS", inputs)
        out_names = _names("OUTPUTS", outputs)
        tag_text = model_store.stored_text("TAG", tag) if tag is not None else ""
        checked = io_backends
        if not in_names and not out_names and io_names_optional(backend, data):
            checked = {b for b in io_backends if b != backend.upper()}
        batchsize = _setting(batch, messages.MODEL_BAD_BATCHSIZE)
        minbatchsize = _setting(minbatch, messages.MODEL_BAD_MINBATCHSIZE)
        mintimeout = _setting(minbatchtimeout, messages.MODEL_BAD_MINBATCHTIMEOUT)
        name, device_name = model_store.validate_meta(
            backend,
            device,
            known_backends=sorted(backends),
            io_backends=sorted(checked),
            batchsize=batchsize,
            minbatchsize=minbatchsize,
            minbatchtimeout=mintimeout,
            inputs=in_names,
            outputs=out_names,
        )
        yield from writable_plan(text(key), model_store.KIND_MODEL)
        listed = None
        if verify is not None:  # an empty BLOB argument gets its framework's error
            listed = yield from verify(
                text(key), name, device_name, data, in_names, out_names, batchsize
            )
        if not len(data):  # one that loads nothing (or was not checked) is still not stored
            raise AIError(messages.MODEL_NO_BLOB)
        meta = model_store.ModelMeta(
            backend=name,
            device=device_name,
            tag=tag_text,
            batchsize=batchsize,
            minbatchsize=minbatchsize,
            minbatchtimeout=mintimeout,
            inputs=tuple(in_names),
            outputs=tuple(out_names),
            extra=model_store.listed_fields(listed) if listed and not in_names + out_names else {},
        )
        yield from model_store.store_plan(state.keyspace, text(key), meta, data, size)
        state.remember(text(key), device_name)
        return state.ok()

    return Op(None, plan())


def _names(what: str, names: Any) -> list[str]:
    """INPUTS or OUTPUTS names as stored (``model_store.stored_text``)."""
    if names is None:
        return []
    return [model_store.stored_text(f"{what} name", n) for n in commands.listify(names)]


def _setting(value: Any, message: str) -> Any:
    """A batch setting as RedisAI read the word redis-py sent: text is parsed as an unsigned
    integer (a size read from a file or the environment), None is 0, anything else is checked
    as it is (``validate_meta``)."""
    if isinstance(value, (str, bytes)):
        return parse_unsigned(text(value), message)
    return value or 0


def modelget(state: State, key: Any, meta_only: bool = False) -> Op:
    """AI.MODELGET: the blob comes back split by the *current* MODEL_CHUNK_SIZE, as RedisAI's."""

    def plan() -> Plan[Any]:
        if meta_only:
            meta = yield from model_store.read_meta_plan(text(key), listed=True)
            reply = raw.model_reply(meta, None)
        else:
            meta, blob = yield from model_store.read_model_plan(text(key), listed=True)
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
