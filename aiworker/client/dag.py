"""The client's DAG builder: ``Client.dag(...)`` returns a ``Dag`` to chain ops on, then ``execute``.

Ops are written as RedisAI command tokens and parsed by the same parser the worker uses, so a DAG
built here fails with the same messages, before anything is sent. ``execute`` queues the DAG on the
device of its first model or script op and returns one result per op: ``"OK"``, the tensor a
``tensorget`` asked for (numpy by default), ``"NA"`` for ops that did not run after an earlier op
failed, or the exception of a failed op (returned in the list, not raised, as redisai-py did).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import redis

from aiworker.parser import parse_dag
from aiworker.protocol import replies as dag_results
from aiworker.protocol.errors import AIError, JobTimedOut
from aiworker.protocol.requests import DagExecute, DagOp, ModelExecute, ScriptExecute, TensorSet
from aiworker.storage import tensor as codec
from aiworker.storage import tensor_io


class Client(Protocol):
    """What the DAG builder needs from ``aiworker.Client`` (named here to keep imports one-way)."""

    def submit_reply(self, device: str, request: Any) -> dict[str, Any]: ...
    def _model_queue(self, key: str) -> str: ...
    def _script_queue(self, key: str) -> str: ...
    def hgetall(self, name: Any) -> Any: ...


Post = Callable[[Any], Any]


def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value.decode() if isinstance(value, bytes) else value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


def _common(result: Any) -> Any:
    """OK / NA pass through; a failed op becomes its exception."""
    if isinstance(result, dict) and "error" in result:
        return dag_results.error_of(str(result["error"]))
    return result


class Dag:
    """A chain of DAG ops (RedisAI's AI.DAGEXECUTE, or AI.DAGRUN when ``deprecated``)."""

    def __init__(
        self,
        client: Client,
        load: str | Sequence[str] | None = None,
        persist: str | Sequence[str] | None = None,
        routing: str | None = None,
        timeout: int | None = None,
        readonly: bool = False,
        deprecated: bool = False,
    ) -> None:
        self._client = client
        self._load = _names(load)
        self._persist = _names(persist)
        self._routing = routing
        self._timeout = timeout
        self._readonly = readonly
        self._deprecated = deprecated
        self._ops: list[list[str]] = []
        self._tensors: dict[int, TensorSet] = {}  # op index -> its TENSORSET with data
        self._post: list[Post] = []

    # ops -----------------------------------------------------------------------------------

    def tensorset(
        self,
        key: str,
        tensor: np.ndarray | Sequence[Any] | int | float | None,
        shape: Sequence[int] | None = None,
        dtype: str | None = None,
    ) -> Dag:
        """Set a DAG-local tensor (from numpy, or values with ``shape`` and ``dtype``)."""
        array = codec.as_array(tensor, dtype=dtype, shape=shape)
        op = TensorSet(key, codec.dtype_of(array), array.shape, bytes(codec.to_blob(array)))
        # the parser sees the op without its data (already validated); execute puts it back
        self._tensors[len(self._ops)] = op
        dims = [str(d) for d in op.shape] or ["VALUES", "0"]
        return self._add(["AI.TENSORSET", key, op.dtype, *dims], _common)

    def tensorget(
        self,
        key: str,
        as_numpy: bool = True,
        as_numpy_mutable: bool = False,
        meta_only: bool = False,
    ) -> Dag:
        """Return a DAG-local tensor, post-processed like ``Client.tensorget``."""
        fmt = [] if meta_only else ["BLOB"] if as_numpy or as_numpy_mutable else ["VALUES"]
        post = partial_tensor(self._client, as_numpy, as_numpy_mutable, meta_only)
        return self._add(["AI.TENSORGET", key, "META", *fmt], post)

    def modelexecute(
        self, key: str, inputs: str | Sequence[str], outputs: str | Sequence[str]
    ) -> Dag:
        ins, outs = _names(inputs), _names(outputs)
        if self._deprecated:
            return self._add(["AI.MODELRUN", key, "INPUTS", *ins, "OUTPUTS", *outs], _common)
        tokens = ["AI.MODELEXECUTE", key, "INPUTS", str(len(ins)), *ins]
        return self._add([*tokens, "OUTPUTS", str(len(outs)), *outs], _common)

    def scriptexecute(
        self,
        key: str,
        function: str,
        keys: str | Sequence[str] | None = None,
        inputs: str | Sequence[str] | None = None,
        args: str | Sequence[str] | None = None,
        outputs: str | Sequence[str] | None = None,
    ) -> Dag:
        if self._deprecated:
            ins, outs = _names(inputs), _names(outputs)
            tokens = ["AI.SCRIPTRUN", key, function, "INPUTS", *ins, "OUTPUTS", *outs]
            return self._add(tokens, _common)
        tokens = ["AI.SCRIPTEXECUTE", key, function]
        for word, values in (
            ("KEYS", keys),
            ("INPUTS", inputs),
            ("ARGS", args),
            ("OUTPUTS", outputs),
        ):
            names = _names(values)
            if names:
                tokens += [word, str(len(names)), *names]
        return self._add(tokens, _common)

    def _add(self, tokens: list[str], post: Post) -> Dag:
        self._ops.append(tokens)
        self._post.append(post)
        return self

    # running -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The RedisAI command this DAG stands for (TENSORSET data left out)."""
        name = "AI.DAGRUN" if self._deprecated else "AI.DAGEXECUTE"
        tokens = [name + ("_RO" if self._readonly else "")]
        for word, keys in (("LOAD", self._load), ("PERSIST", self._persist)):
            if keys:
                tokens += [word, str(len(keys)), *keys]
        if self._routing is not None:
            tokens += ["ROUTING", self._routing]
        if self._timeout is not None:
            tokens += ["TIMEOUT", str(self._timeout)]
        for op in self._ops:
            tokens += ["|>", *op]
        return tokens

    def request(self) -> DagExecute:
        """The parsed request (RedisAI's errors raised here, before anything is sent)."""
        tokens = self.command()
        parsed = parse_dag(tokens[1:], tokens[0])
        ops: tuple[DagOp, ...] = tuple(self._tensors.get(i, op) for i, op in enumerate(parsed.ops))
        return dataclasses.replace(parsed, ops=ops)

    def execute(self) -> list[Any]:
        """Run the DAG through a worker; one result per op (see the module docstring)."""
        request = self.request()
        reply = self._client.submit_reply(self._queue(request), request)
        if reply.get("status") == "timedout":
            raise JobTimedOut()
        results = reply.get("results")
        if results is None:
            raise dag_results.error_of(str(reply.get("error") or "DAG failed"))
        return [post(result) for post, result in zip(self._post, results, strict=True)]

    run = execute  # redisai-py's older name

    def _queue(self, request: DagExecute) -> str:
        return queue_of(self._client, request)


def queue_of(client: Client, request: ModelExecute | ScriptExecute | DagExecute) -> str:
    """The device queue a request goes to: its model's or script's device; for a DAG, that of its
    first model or script op (CPU for tensor-only DAGs). A missing or wrong key gives CPU: the
    worker answers with RedisAI's error for it."""
    try:
        if isinstance(request, ModelExecute):
            return client._model_queue(request.key)
        if isinstance(request, ScriptExecute):
            return client._script_queue(request.key)
    except (AIError, redis.ResponseError):
        return "CPU"
    for op in request.ops:
        if isinstance(op, (ModelExecute, ScriptExecute)):
            return queue_of(client, op)
    return "CPU"


def partial_tensor(client: Client, as_numpy: bool, mutable: bool, meta_only: bool) -> Post:
    """Post-processing of a TENSORGET op's result, like ``Client.tensorget``'s."""

    def post(result: Any) -> Any:
        if not isinstance(result, dict) or "dtype" not in result:
            return _common(result)
        dtype, shape, array = dag_results.decode_tensor(
            result, lambda key: tensor_io.read(cast(redis.Redis, client), key)
        )
        if meta_only or array is None:
            return {"dtype": dtype, "shape": list(shape)}
        if mutable:
            return np.array(array, copy=True)
        if as_numpy:
            return array
        return {"dtype": dtype, "shape": list(shape), "values": codec.to_values(array)}

    return post
