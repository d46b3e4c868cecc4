"""The client methods that become jobs (MODELEXECUTE, SCRIPTEXECUTE, their deprecated forms, the
one-round-trip ``run``) and the checks at store time (MODELVERIFY, SCRIPTVERIFY), as ``ops.Op``
plans."""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from aiworker.client import commands, raw, waiting
from aiworker.client.commands import text
from aiworker.client.ops import Op, State, Submit, VerifyHere, VerifyModelHere, VerifyScriptHere
from aiworker.client.verify import UnverifiedModelWarning, UnverifiedScriptWarning
from aiworker.devices import parse_device
from aiworker.parser import parse_command
from aiworker.protocol import replies
from aiworker.protocol import tensor as codec
from aiworker.protocol.entries import MAX_ENTRY_BYTES
from aiworker.protocol.errors import AIError, JobFailed, NoLiveWorker, ReplyTimeout
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import (
    MODEL,
    DagExecute,
    IONames,
    ModelExecute,
    ModelVerify,
    Request,
    ScriptVerify,
    TensorGet,
    TensorSet,
)
from aiworker.storage import health
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage.plans import Commands, Plan

# How long a check at store time may take a worker; the largest blob staged for one (a model's
# blob, in a key under aiworker:verify:, which only model owners may write), and the largest
# script source sent in one (in its stream entry, as every job: at most 1 MiB).
VERIFY_TIMEOUT_S = 15.0
MAX_VERIFY_BYTES = 256 * 1024 * 1024
MAX_VERIFY_SOURCE = MAX_ENTRY_BYTES - 64 * 1024


def job_result(state: State, reply: Reply) -> Any:
    """RedisAI's reply to MODELEXECUTE/SCRIPTEXECUTE: ``OK``, ``TIMEDOUT`` (RedisAI answered a
    request whose TIMEOUT passed with this simple string, not an error), or the error raised."""
    return raw.simple(reply.raise_for_status(timedout_ok=True), state.raw)


def queue_plan(state: State, request: Request, strict: bool = False) -> Plan[str]:
    """The device queue a request goes to: its model's or script's device; for a DAG, that of its
    first model or script op (CPU for tensor-only DAGs). A missing or wrong key raises RedisAI's
    error when ``strict`` (nothing is queued), else gives CPU: the worker answers with it."""
    found = request.runs_on()
    if found is None:
        return "CPU"
    what, key = found
    reader = model_store.read_meta_plan if what == MODEL else script_store.read_meta_plan
    try:
        return (yield from state.queue_plan(key, reader))
    except AIError:
        if strict:
            raise
        return "CPU"


def submit_plan(
    state: State, request: Request, guard: tuple[tuple[Any, ...], ...] = ()
) -> Plan[Reply]:
    """Queue ``request`` on its device and wait for the reply; a single MODELEXECUTE or
    SCRIPTEXECUTE on a missing or wrong key fails before anything is queued (``guard``:
    ``Submit.guard``)."""
    return (yield from _sent_plan(state, request, request.op != "DAGEXECUTE", guard))


def _sent_plan(
    state: State, request: Request, strict: bool, guard: tuple[tuple[Any, ...], ...] = ()
) -> Plan[Reply]:
    """``submit_plan`` (``strict``: as for ``queue_plan``). The device comes from the state's
    cache, which may be stale: another client stored the model or script anew on another
    device. A worker's forward is learnt from the reply; where no live worker serves the cached
    queue any more, the device is read again and a job the wait took back unread is sent once
    more, to its queue now (never a job a worker may have run)."""
    found = request.runs_on()
    key = found[1] if found is not None else ""
    cached = bool(key) and state.cached(key) is not None
    queue = yield from queue_plan(state, request, strict)
    try:
        reply: Reply = yield Submit(queue, request, guard=guard)
    except NoLiveWorker as exc:
        if key:
            state.forget(key, queue)
        if not (cached and exc.unread):
            raise
        stale = exc
    else:
        if key:
            state.followed(key, queue, reply.queue)
        return reply
    fresh = yield from queue_plan(state, request, strict)
    if fresh == queue:
        raise stale
    reply = yield Submit(fresh, request, guard=guard)
    state.followed(key, fresh, reply.queue)
    return reply


def _job(state: State, tokens: list[Any]) -> Op:
    request = parse_command([text(t) for t in tokens])

    def plan() -> Plan[Any]:
        reply = yield from submit_plan(state, request)
        return job_result(state, reply)

    return Op(tokens, plan())


def modelexecute(state: State, key: Any, inputs: Any, outputs: Any, timeout: Any = None) -> Op:
    return _job(state, commands.modelexecute(key, inputs, outputs, timeout))


def modelrun(state: State, key: Any, inputs: Any, outputs: Any) -> Op:
    return _job(state, commands.modelrun(key, inputs, outputs))


def scriptexecute(
    state: State,
    key: Any,
    function: Any,
    keys: Any = None,
    inputs: Any = None,
    args: Any = None,
    outputs: Any = None,
    timeout: Any = None,
) -> Op:
    return _job(state, commands.scriptexecute(key, function, keys, inputs, args, outputs, timeout))


def scriptrun(state: State, key: Any, function: Any, inputs: Any, outputs: Any) -> Op:
    return _job(state, commands.scriptrun(key, function, inputs, outputs))


# the one-round-trip call -------------------------------------------------------------------


def run(
    state: State,
    model_key: str,
    inputs: Mapping[str, Any],
    outputs: Sequence[str],
    timeout: int | None = None,
) -> Op:
    """One DAG request: the inputs travel inside the job (TENSORSET ops), the model runs once and
    the outputs come back in the reply (TENSORGET ops); no key but the model is touched."""
    sets = []
    for name, value in inputs.items():
        array = np.asarray(value)
        commands.array_dtype(array)  # redisai-py's TypeError for unsupported types
        array = codec.as_array(array)
        sets.append(
            TensorSet(name, codec.dtype_of(array), array.shape, bytes(codec.to_blob(array)))
        )
    outs = tuple(commands.listify(outputs))
    # RedisAI's errors for the MODELEXECUTE op (no inputs or outputs), before anything is sent
    parse_command([text(t) for t in commands.modelexecute(model_key, tuple(inputs), outs, None)])
    ops: list[Any] = [*sets, ModelExecute(model_key, tuple(inputs), tuple(map(str, outs)))]
    ops += [TensorGet(str(name), meta=True, data="BLOB") for name in outs]
    request = DagExecute(ops=tuple(ops), timeout_ms=timeout, readonly=True)
    tokens: list[Any] = ["AI.DAGEXECUTE_RO", "ROUTING", model_key]
    if timeout is not None:
        tokens += ["TIMEOUT", timeout]
    for op in sets:
        tokens += ["|>", "AI.TENSORSET", op.key, op.dtype, *op.shape, "BLOB", op.blob]
    tokens += ["|>", "AI.MODELEXECUTE", model_key, "INPUTS", len(sets), *inputs]
    tokens += ["OUTPUTS", len(outs), *outs]
    for name in outs:
        tokens += ["|>", "AI.TENSORGET", name, "META", "BLOB"]

    def plan() -> Plan[dict[str, np.ndarray]]:
        reply = yield from _sent_plan(state, request, strict=True)
        reply.raise_for_status()
        for result in reply.op_results():  # the op that failed, if one did
            if isinstance(result, Exception):
                raise result
        found: dict[str, np.ndarray] = {}
        for name, tensor in zip(outs, reply.tensors()[len(sets) + 1 :], strict=True):
            if tensor is None or tensor.array is None:
                raise JobFailed(f"the worker's reply has no tensor for output {name}")
            found[str(name)] = tensor.array
        return found

    return Op(tokens, plan())


# checking a model at store time ------------------------------------------------------------


def verify_plan(
    state: State,
    key: str,
    backend: str,
    device: str,
    blob: Any,
    inputs: Sequence[str],
    outputs: Sequence[str],
    batchsize: int,
) -> Plan[IONames | None]:
    """Refuse a blob that does not load, as RedisAI did at MODELSTORE (``_checked``); the input
    and output names its framework reports, when it was checked."""
    data = memoryview(blob).cast("B")

    def request() -> Plan[ModelVerify]:
        """The blob staged where the worker reads it (a worker loads only blobs there: one
        that took them from a job entry let anyone who may XADD have it load anything)."""
        staged = state.keyspace.verifying(secrets.token_hex(16))
        expire_ms = int(VERIFY_TIMEOUT_S * 2000)  # gone even if this client is not there
        staging = [("HSET", staged, "blob", data), ("PEXPIRE", staged, expire_ms)]
        for reply in (yield Commands(staging, True)):
            if isinstance(reply, Exception):  # NOPERM (not a model owner's), OOM, READONLY
                raise reply
        return ModelVerify(backend, device, staged, tuple(inputs), tuple(outputs), batchsize)

    here = VerifyModelHere(backend, blob, tuple(inputs), tuple(outputs), batchsize)
    return (yield from _checked(
        state, f"model {key}", device, here, request, len(data) > MAX_VERIFY_BYTES,
        f"larger than {MAX_VERIFY_BYTES} bytes to stage for a worker", f"backend {backend}",
        UnverifiedModelWarning,
    ))  # fmt: skip


def verify_script_plan(
    state: State, key: str, device: str, source: str, entry_points: Sequence[str]
) -> Plan[None]:
    """Refuse a script that does not compile or lacks an entry point, as RedisAI did at
    SCRIPTSTORE (``_checked``: SCRIPTVERIFY when a worker checks it)."""
    points = tuple(entry_points)

    def request() -> Plan[ScriptVerify]:
        return ScriptVerify(device, source, points)
        yield  # (nothing to stage: the source travels in the job's entry)

    yield from _checked(
        state, f"script {key}", device, VerifyScriptHere(source, points), request,
        len(source.encode()) > MAX_VERIFY_SOURCE,
        f"larger than {MAX_VERIFY_SOURCE} bytes to send to a worker", "torch",
        UnverifiedScriptWarning,
    )  # fmt: skip


def _checked(
    state: State,
    what: str,
    device: str,
    here: VerifyHere,
    request: Callable[[], Plan[ModelVerify | ScriptVerify]],
    too_big: bool,
    size_text: str,
    framework: str,
    warning: type[Warning],
) -> Plan[IONames | None]:
    """Check ``what`` here when its framework is importable; else ask a live worker serving the
    device (the reply's ``loaded`` is its verdict); else let it be stored with ``warning``. A
    model's reported input and output names when it was checked. ``too_big``: it is
    ``size_text`` (too big to ask a worker)."""
    found = yield here
    if found:
        return found if isinstance(found, tuple) else None
    queue = parse_device(device).queue
    why = f"{framework} cannot be imported in this process"
    if too_big:
        why += f" and it is {size_text}"
    else:
        statuses = yield from health.live_workers_plan(state.keyspace, health.LIVE_FOR_S)
        if not waiting.serves(statuses, queue):
            why += f" and no live worker serves queue {queue}"
        else:
            check = yield from request()
            try:
                reply: Reply = yield Submit(queue, check, limit=VERIFY_TIMEOUT_S)
                loaded, message = reply.extra.get("loaded"), reply.error
            except (ReplyTimeout, NoLiveWorker):
                loaded, message = None, f"no answer from queue {queue}"
            if isinstance(check, ModelVerify):
                yield Commands.one("DEL", check.key)  # (its refusal is no concern: it expires)
            # a verdict carries "loaded"; any other answer (a worker without this check, an
            # entry it refused) means it could not be checked
            if loaded is True:
                return listed_names(reply.extra)
            if loaded is False:
                raise replies.error_of(message or f"{what} does not load")
            why += f" and the worker serving queue {queue} could not check it ({message})"
    message = f"{what} was stored without being verified: {why}"
    if state.unverified is not None:
        state.unverified(message)
    else:
        warnings.warn(message, warning, stacklevel=2)
    return None


# The most names a worker's check may report for a model (each at most MAX_NAME_CHARS long).
MAX_LISTED_NAMES = 4096
MAX_NAME_CHARS = 1024


def listed_names(extra: Mapping[str, Any]) -> IONames | None:
    """The input and output names a worker's MODELVERIFY reported (``inputs``, ``outputs``);
    None when it reported none, or anything but lists of short strings."""
    inputs, outputs = extra.get("inputs"), extra.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        return None
    names = [*inputs, *outputs]
    if len(names) > MAX_LISTED_NAMES:
        return None
    if not all(isinstance(n, str) and len(n) <= MAX_NAME_CHARS for n in names):
        return None
    return tuple(inputs), tuple(outputs)
