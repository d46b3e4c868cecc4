"""The rules a request must meet whatever form it arrived in. Pure code.

The text parser meets most of RedisAI's rules while reading the tokens; what is left - the
structure of a request - is checked here, for commands typed in redis-cli and for the Python
client's structured (msgpack) entries alike, so that both forms get the same errors: a read-only DAG
with PERSIST or a script op, an op reading a name nothing produced, a TIMEOUT inside a DAG, ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiworker.parser.dag import check_names
from aiworker.parser.execute import DAG_TIMEOUT
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import (
    DagExecute,
    ModelExecute,
    ModelVerify,
    Request,
    ScriptExecute,
    ScriptVerify,
    TensorGet,
    TensorSet,
)

TIMEOUT_INVALID = "Invalid value for TIMEOUT"


def _timeout(timeout_ms: int | None, in_dag: bool) -> None:
    if timeout_ms is None:
        return
    if in_dag:
        raise AIError(DAG_TIMEOUT)
    if timeout_ms <= 0:
        raise AIError(TIMEOUT_INVALID)


def _model(op: ModelExecute, in_dag: bool, readonly: bool) -> None:
    if not op.inputs:
        raise AIError("Input count must be a positive integer")
    if not op.outputs:
        raise AIError("Output count must be a positive integer")
    _timeout(op.timeout_ms, in_dag)


def _script(op: ScriptExecute, in_dag: bool, readonly: bool) -> None:
    if readonly and op.keys:  # the script could write through them (a SCRIPTRUN has none)
        raise AIError("AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG")
    if not op.function:
        raise AIError("function name not specified")
    if op.variadic is not None and not 0 <= op.variadic <= len(op.inputs):
        raise AIError("Invalid argument for the variadic inputs")
    _timeout(op.timeout_ms, in_dag)


def _tensor(op: TensorSet | TensorGet, in_dag: bool, readonly: bool) -> None:
    """Tensor ops carry no rule of their own here (the parser checked their arguments)."""


def _dag(dag: DagExecute, in_dag: bool, readonly: bool) -> None:
    if dag.readonly and dag.persist:
        raise AIError("PERSIST cannot be specified in a read-only DAG")
    if len(set(dag.persist)) != len(dag.persist):
        raise AIError("PERSIST keys must be unique")
    _timeout(dag.timeout_ms, in_dag=False)
    if not dag.ops:
        raise AIError("DAG is empty")
    for op in dag.ops:
        rule = _OP_RULES.get(op.op)
        if rule is None:
            raise AIError("Unsupported command within DAG")
        rule(op, True, dag.readonly)
    check_names(dag)


def _verify(request: ModelVerify, in_dag: bool, readonly: bool) -> None:
    if not request.backend:  # an empty blob is the framework's to refuse, with its error
        raise AIError("MODELVERIFY needs a backend")


def _verify_script(request: ScriptVerify, in_dag: bool, readonly: bool) -> None:
    """No rule: an empty source compiles (RedisAI stored it); entry points are checked there."""


# op -> its rules (arguments: the request, inside a DAG, in a read-only DAG)
_OP_RULES: dict[str, Callable[[Any, bool, bool], None]] = {
    "MODELEXECUTE": _model,
    "SCRIPTEXECUTE": _script,
    "TENSORSET": _tensor,
    "TENSORGET": _tensor,
}
_REQUEST_RULES: dict[str, Callable[[Any, bool, bool], None]] = {
    "MODELEXECUTE": _model,
    "SCRIPTEXECUTE": _script,
    "DAGEXECUTE": _dag,
    "MODELVERIFY": _verify,
    "SCRIPTVERIFY": _verify_script,
}


def check(request: Request) -> Request:
    """Raise RedisAI's error when ``request`` breaks a rule; return it otherwise."""
    rule = _REQUEST_RULES.get(request.op)
    if rule is None:
        raise AIError(f"unsupported command in a job: {type(request).__name__}")
    rule(request, False, False)
    return request
