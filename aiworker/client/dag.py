"""The client's DAG builder: ``Client.dag(...)`` returns a ``Dag`` to chain ops on, then ``execute``.

As redisai-py 1.3: a DAG made without LOAD, PERSIST or ROUTING is the deprecated flavour
(AI.DAGRUN, with a ``DeprecationWarning``): it takes ``modelrun`` (and ``scriptrun``) and refuses
``modelexecute``/``scriptexecute`` with redisai-py's ``RuntimeError``; a read-only DAG refuses
PERSIST and ``scriptexecute``. Ops are written as RedisAI command tokens and parsed by the parser
the worker uses, so a DAG fails with RedisAI's messages before anything is sent. ``execute``
queues the DAG on the device of its first model or script op and returns one result per op:
``"OK"``, the tensor a ``tensorget`` asked for, ``"NA"`` for ops that did not run after an earlier
op failed, or the exception of a failed op (returned in the list, not raised).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import redis

from aiworker.client import commands, raw
from aiworker.client.commands import listify, text
from aiworker.client.deprecated import deprecated_call
from aiworker.client.job_ops import submit_plan
from aiworker.client.ops import Op, State
from aiworker.parser import parse_dag
from aiworker.protocol import tensor as codec
from aiworker.protocol.replies import DagTensor
from aiworker.protocol.requests import DagExecute, DagOp, TensorSet
from aiworker.storage.plans import Plan

Post = Callable[[Any, DagTensor | None], Any]
DEPRECATED_FLAVOUR = (
    "Creating Dag without any of LOAD, PERSIST and ROUTING arguments"
    "is allowed only in deprecated AI.DAGRUN or AI.DAGRUN_RO commands"
)
NO_EXECUTE = (
    "You are using deprecated version of DAG, that does not supports {}."
    "The new version requires giving at least one of LOAD, PERSIST and ROUTING"
    "arguments when constructing the Dag"
)
READONLY_PERSIST = "READONLY requests cannot write (duh!) and should not have PERSISTing values"


def _common(result: Any, tensor: DagTensor | None) -> Any:
    """OK / NA pass through; a failed op's exception (``Reply.op_results``) is its result."""
    return result


def _tensor(
    data: str, as_numpy: bool, mutable: bool, meta_only: bool, result: Any, tensor: DagTensor | None
) -> Any:
    """A TENSORGET op's result post-processed as ``Client.tensorget``'s, except that
    ``meta_only`` keeps the data field the op fetched, as redisai-py's DAG did."""
    if tensor is None or tensor.array is None:
        return result
    if meta_only and not mutable:
        return raw.list2dict(raw.tensor_reply(tensor.array, True, data))
    return raw.tensor_result(tensor.array, as_numpy, mutable, meta_only)


class Dag:
    """A chain of DAG ops (RedisAI's AI.DAGEXECUTE, or AI.DAGRUN in the deprecated flavour)."""

    def __init__(
        self,
        state: State,
        runner: Callable[[Op], Any],
        load: Any = None,
        persist: Any = None,
        routing: Any = None,
        timeout: int | None = None,
        readonly: bool = False,
        deprecated: bool | None = None,
    ) -> None:
        self._state = state
        self._runner = runner
        self._deprecated = (
            load is None and persist is None and routing is None
            if deprecated is None
            else deprecated
        )
        self._readonly = readonly
        if readonly and persist:
            raise RuntimeError(READONLY_PERSIST)
        if self._deprecated and deprecated is None:
            warnings.warn(DEPRECATED_FLAVOUR, DeprecationWarning, stacklevel=3)
        self._head: list[Any] = [self.name]
        if load is not None:
            self._head += ["LOAD", len(listify(load)), *listify(load)]
        if persist is not None:
            self._head += ["PERSIST", len(listify(persist)), *listify(persist)]
        if routing is not None:
            self._head += ["ROUTING", routing]
        if timeout is not None:
            self._head += ["TIMEOUT", timeout]
        self._ops: list[list[Any]] = []  # each op's tokens, TENSORSET data included
        self._tensors: dict[int, TensorSet] = {}  # op index -> its TENSORSET with data
        self._post: list[Post] = []
        self._refused: tuple[int, Exception] | None = None  # the first op RedisAI would refuse

    @property
    def name(self) -> str:
        name = "AI.DAGRUN" if self._deprecated else "AI.DAGEXECUTE"
        return name + ("_RO" if self._readonly else "")

    # ops -----------------------------------------------------------------------------------

    def tensorset(self, key: Any, tensor: Any, shape: Any = None, dtype: Any = None) -> Dag:
        """Set a DAG-local tensor (from numpy, or values with ``shape`` and ``dtype``)."""
        try:
            tokens, array = commands.tensorset(key, tensor, shape, dtype)
        except redis.ResponseError as exc:  # RedisAI's refusal of its values: from execute
            if self._refused is None:
                self._refused = (len(self._ops), exc)
            return self._add(["AI.TENSORSET", key], _common)
        blob = bytes(codec.to_blob(array))
        self._tensors[len(self._ops)] = TensorSet(text(key), str(tokens[2]), array.shape, blob)
        return self._add(tokens, _common)

    def tensorget(
        self, key: Any, as_numpy: bool = True, as_numpy_mutable: bool = False,
        meta_only: bool = False,
    ) -> Dag:  # fmt: skip
        """Return a DAG-local tensor, post-processed like ``Client.tensorget``."""
        # redisai-py passed as_numpy_mutable where meta_only belongs: its mutable array came
        # with META alone (and crashed); the op always fetches the data, a blob for an array
        blob = as_numpy is True or bool(as_numpy_mutable)
        tokens = commands.tensorget(key, blob)
        data = "BLOB" if blob else "VALUES"
        return self._add(tokens, partial(_tensor, data, as_numpy, as_numpy_mutable, meta_only))

    def modelexecute(self, key: Any, inputs: Any, outputs: Any) -> Dag:
        if self._deprecated:
            raise RuntimeError(NO_EXECUTE.format("MODELEXECUTE"))
        return self._add(commands.modelexecute(key, inputs, outputs, None), _common)

    def modelrun(self, key: Any, inputs: Any, outputs: Any) -> Dag:
        """Deprecated (as in redisai-py 1.2): AI.MODELRUN in the deprecated flavour, else
        ``modelexecute``."""
        deprecated_call("modelrun", "Use modelexecute instead")
        if not self._deprecated:
            return self.modelexecute(key, inputs, outputs)
        return self._add(commands.modelrun(key, inputs, outputs), _common)

    def scriptexecute(
        self,
        key: Any,
        function: Any,
        keys: Any = None,
        inputs: Any = None,
        args: Any = None,
        outputs: Any = None,
    ) -> Dag:
        if self._readonly:
            raise RuntimeError("AI.SCRIPTEXECUTE cannot be used in readonly mode")
        if self._deprecated:
            raise RuntimeError(NO_EXECUTE.format("SCRIPTEXECUTE"))
        tokens = commands.scriptexecute(key, function, keys, inputs, args, outputs, None)
        return self._add(tokens, _common)

    def scriptrun(self, key: Any, function: Any, inputs: Any, outputs: Any) -> Dag:
        """AI.SCRIPTRUN in the deprecated flavour (an aiworker addition: redisai-py's DAG had no
        script op there); else ``scriptexecute``."""
        deprecated_call("scriptrun", "Use scriptexecute instead")
        if not self._deprecated:
            return self.scriptexecute(key, function, inputs=inputs, outputs=outputs)
        return self._add(commands.scriptrun(key, function, inputs, outputs), _common)

    def _add(self, tokens: Sequence[Any], post: Post) -> Dag:
        self._ops.append(list(tokens))
        self._post.append(post)
        return self

    # running -------------------------------------------------------------------------------

    def command(self) -> list[Any]:
        """The RedisAI command this DAG stands for, TENSORSET data included."""
        tokens = list(self._head)
        for op in self._ops:
            tokens += ["|>", *op]
        return tokens

    def request(self) -> DagExecute:
        """The parsed request (RedisAI's errors raised here, before anything is sent: those of
        the ops before an op whose values it refused, then that one's)."""
        if self._refused is None:
            return self._parsed(len(self._ops))
        index, error = self._refused
        if index:
            self._parsed(index)
        raise error

    def _parsed(self, count: int) -> DagExecute:
        """The request of the first ``count`` ops."""
        tokens = [text(t) for t in self._head]
        for index, op in enumerate(self._ops[:count]):
            if index in self._tensors:  # the parser sees the op without its data
                tensor = self._tensors[index]
                op = ["AI.TENSORSET", tensor.key, tensor.dtype, *map(str, tensor.shape)]
                op = op if tensor.shape else [*op, "VALUES", "0"]
            tokens += ["|>", *(text(t) for t in op)]
        parsed = parse_dag(tokens[1:], tokens[0])
        ops: tuple[DagOp, ...] = tuple(self._tensors.get(i, op) for i, op in enumerate(parsed.ops))
        return dataclasses.replace(parsed, ops=ops)

    def execute(self) -> Any:
        """Run the DAG through a worker; one result per op (see the module docstring). On the
        asyncio client this returns an awaitable."""
        request = self.request()
        return self._runner(Op(self.command(), self._plan(request)))

    def run(self) -> Any:
        """Deprecated alias of ``execute`` (redisai-py 1.2)."""
        deprecated_call("run", "Use execute instead")
        return self.execute()

    def _plan(self, request: DagExecute) -> Plan[list[Any]]:
        reply = yield from submit_plan(self._state, request)
        reply.raise_for_status()
        results = zip(self._post, reply.op_results(), reply.tensors(), strict=True)
        return [post(result, tensor) for post, result, tensor in results]
