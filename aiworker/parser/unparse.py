"""Typed requests -> RedisAI command tokens, the inverse of the parser. Pure code.

A request that arrives already structured (the Python client's msgpack entries) never passed
through the parser. ``validate`` writes it back as the command it stands for and parses that, so
both entry forms meet exactly the same rules and messages (a read-only DAG with PERSIST, an op
reading a name nothing produced, a SCRIPTEXECUTE in a read-only DAG, ...). TENSORSET data is left
out of the tokens: the request keeps its own blob, checked against its shape when it is used.
"""

from __future__ import annotations

from aiworker.parser import parse_command
from aiworker.protocol.requests import (
    DagExecute,
    DagOp,
    ModelExecute,
    Request,
    ScriptExecute,
    TensorGet,
    TensorSet,
)


def _counted(word: str, names: tuple[str, ...]) -> list[str]:
    return [word, str(len(names)), *names] if names else []


def _timeout(timeout_ms: int | None) -> list[str]:
    return ["TIMEOUT", str(timeout_ms)] if timeout_ms is not None else []


def _model(op: ModelExecute, deprecated: bool) -> list[str]:
    if deprecated:
        return ["AI.MODELRUN", op.key, "INPUTS", *op.inputs, "OUTPUTS", *op.outputs]
    return [
        "AI.MODELEXECUTE",
        op.key,
        *(_counted("INPUTS", op.inputs) or ["INPUTS", "0"]),
        *(_counted("OUTPUTS", op.outputs) or ["OUTPUTS", "0"]),
        *_timeout(op.timeout_ms),
    ]


def _script(op: ScriptExecute, deprecated: bool) -> list[str]:
    if deprecated or op.variadic is not None:
        split = len(op.inputs) if op.variadic is None else op.variadic
        variadic = ["$", *op.inputs[split:]] if op.variadic is not None else []
        return [
            "AI.SCRIPTRUN",
            op.key,
            op.function,
            *_timeout(op.timeout_ms),
            "INPUTS",
            *op.inputs[:split],
            *variadic,
            "OUTPUTS",
            *op.outputs,
        ]
    tokens = ["AI.SCRIPTEXECUTE", op.key, op.function]
    for word, names in (("KEYS", op.keys), ("INPUTS", op.inputs), ("ARGS", op.args)):
        tokens += _counted(word, names)
    return [*tokens, *_counted("OUTPUTS", op.outputs), *_timeout(op.timeout_ms)]


def _op(op: DagOp, deprecated: bool) -> list[str]:
    if isinstance(op, TensorSet):
        dims = [str(d) for d in op.shape] or ["VALUES", "0"]  # a 0-d tensor has one value
        return ["AI.TENSORSET", op.key, op.dtype, *dims]
    if isinstance(op, TensorGet):
        words = (["META"] if op.meta else []) + ([op.data] if op.data else [])
        return ["AI.TENSORGET", op.key, *(words or ["META"])]
    if isinstance(op, ModelExecute):
        return _model(op, deprecated)
    return _script(op, deprecated)


def _dag(dag: DagExecute) -> list[str]:
    # The deprecated AI.DAGRUN is the only DAG form without LOAD, PERSIST or ROUTING.
    deprecated = not (dag.load or dag.persist or dag.routing is not None)
    name = ("AI.DAGRUN" if deprecated else "AI.DAGEXECUTE") + ("_RO" if dag.readonly else "")
    tokens = [name, *_counted("LOAD", dag.load), *_counted("PERSIST", dag.persist)]
    if dag.routing is not None:
        tokens += ["ROUTING", dag.routing]
    tokens += _timeout(dag.timeout_ms)
    for op in dag.ops:
        tokens += ["|>", *_op(op, deprecated)]
    return tokens


def tokens_of(request: Request) -> list[str]:
    """The RedisAI command a request stands for (TENSORSET data left out)."""
    if isinstance(request, DagExecute):
        return _dag(request)
    if isinstance(request, ModelExecute):
        return _model(request, deprecated=False)
    return _script(request, deprecated=False)


def validate(request: Request) -> None:
    """Apply the parser's rules to a structured request; raises ``AIError`` with its message."""
    parse_command(tokens_of(request))
