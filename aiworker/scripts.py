"""TorchScript scripts as DAG ops need them: read a stored script, compile it, call one function.

The interface the DAG runner depends on is ``run_script(executor, key, function, inputs, keys,
args, variadic=None) -> list[np.ndarray]``; it raises ``AIError`` with RedisAI's messages.

A script is a hash at the user's key with ``kind=script``, ``device``, ``tag``, ``entry_points``
(a JSON list) and ``source``. Functions follow RedisAI's signature
``def fn(tensors: List[Tensor], keys: List[str], args: List[str])``; a function written for the
deprecated AI.SCRIPTRUN takes its tensors positionally instead, with the inputs after SCRIPTRUN's
``$`` (``variadic``) as one List[Tensor] argument.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from aiworker import messages
from aiworker.errors import AIError, WrongTypeError

KIND_SCRIPT = "script"
META_FIELDS = ("kind", "device", "tag", "entry_points", "source")
_CACHE_SIZE = 32

_compiled: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def script_fields(reply: Any) -> dict[str, str]:
    """Decode an HMGET of META_FIELDS (or the error a pipeline returned for it)."""
    if isinstance(reply, redis.ResponseError):
        raise WrongTypeError()
    values = dict(zip(META_FIELDS, (_text(v) for v in reply), strict=True))
    if not any(values.values()):
        raise AIError(messages.SCRIPT_EMPTY)
    if values["kind"] != KIND_SCRIPT:
        raise WrongTypeError()
    return values


def read_script(r: redis.Redis, key: str) -> dict[str, str]:
    """The stored script's fields, or RedisAI's errors for a missing or other key."""
    reply: Any
    try:
        reply = r.hmget(key, list(META_FIELDS))
    except redis.ResponseError as exc:
        reply = exc
    return script_fields(reply)


def _compile(source: str) -> Any:
    """A compiled TorchScript compilation unit, cached by source digest."""
    import torch

    digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    with _lock:
        unit = _compiled.get(digest)
        if unit is not None:
            _compiled.move_to_end(digest)
            return unit
    try:
        unit = torch.jit.CompilationUnit(source)
    except Exception as exc:
        raise AIError(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from exc
    with _lock:
        _compiled[digest] = unit
        while len(_compiled) > _CACHE_SIZE:
            _compiled.popitem(last=False)
    return unit


def _entry_points(text: str) -> list[str]:
    """A JSON list, or (as some writers store it) names separated by commas or spaces."""
    try:
        names = json.loads(text or "[]")
    except ValueError:
        names = text.replace(",", " ").split()
    return [str(n) for n in names] if isinstance(names, list) else [str(names)]


def _takes_tensor_list(function: Any) -> bool:
    """True for RedisAI's ``(tensors: List[Tensor], keys: List[str], args: List[str])``."""
    arguments = function.schema.arguments
    return len(arguments) == 3 and str(arguments[0].type) == "List[Tensor]"


def run_script(
    executor: Any,
    key: str,
    function: str,
    inputs: Sequence[np.ndarray],
    keys: Sequence[str] = (),
    args: Sequence[str] = (),
    variadic: int | None = None,
) -> list[np.ndarray]:
    """Call ``function`` of the script at ``key`` on ``inputs``; its outputs as numpy arrays."""
    import torch

    from aiworker.backends.torch import to_numpy, to_torch, torch_device
    from aiworker.devices import parse_device

    fields = read_script(executor.r, key)
    entry_points = _entry_points(fields["entry_points"])
    unit = _compile(fields["source"])
    if entry_points and function not in entry_points:
        raise AIError(f"Function does not exist: {function}")
    try:
        fn = unit.find_function(function)
    except RuntimeError:
        fn = None
    if fn is None:
        raise AIError(f"Function does not exist: {function}")
    device = torch_device(parse_device(fields["device"] or "CPU"))
    tensors = [to_torch(np.asarray(x), device) for x in inputs]
    try:
        with torch.inference_mode():
            if variadic is None and _takes_tensor_list(fn):
                result = fn(tensors, list(keys), list(args))
            elif variadic is not None:
                result = fn(*tensors[:variadic], tensors[variadic:])
            else:
                result = fn(*tensors)
    except (RuntimeError, TypeError, ValueError) as exc:
        text = str(exc).strip()
        raise AIError(text.splitlines()[0] if text else repr(exc)) from exc
    return to_numpy(result)
