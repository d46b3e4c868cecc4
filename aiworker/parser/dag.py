"""AI.DAGEXECUTE / AI.DAGEXECUTE_RO and the deprecated AI.DAGRUN / AI.DAGRUN_RO.

``AI.DAGEXECUTE [LOAD n key...] [PERSIST n key...] [ROUTING key] [TIMEOUT ms] |> op |> op ...``.
Parsing also checks the DAG's tensor names, which needs no Redis: every op input must be LOADed or
produced by an earlier op, and every PERSIST key must exist in the DAG by its end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiworker.parser.common import CHAIN, parse_int, parse_timeout
from aiworker.parser.execute import (
    parse_modelexecute,
    parse_modelrun,
    parse_scriptexecute,
    parse_scriptrun,
)
from aiworker.parser.tensor import parse_tensorget, parse_tensorset
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import (
    DagExecute,
    DagOp,
)

DAG_COMMANDS = ("AI.DAGEXECUTE", "AI.DAGEXECUTE_RO", "AI.DAGRUN", "AI.DAGRUN_RO")


def _keys(args: Sequence[str], i: int, word: str) -> tuple[tuple[str, ...], int]:
    """``LOAD|PERSIST n key...`` at ``args[i]``; returns the keys and the index after them."""
    what = "to LOAD" if word == "LOAD" else "to PERSIST"
    if len(args) - i < 3:
        raise AIError(f"missing arguments after {word} keyword in DAG command")
    count = parse_int(args[i + 1], f"invalid or negative value found in number of keys {what}")
    if count <= 0:
        raise AIError(f"invalid or negative value found in number of keys {what}")
    keys: list[str] = []
    j = i + 2
    while j < len(args) and len(keys) < count and args[j] != CHAIN:
        if word == "PERSIST" and args[j] in keys:
            raise AIError("PERSIST keys must be unique")
        keys.append(args[j])
        j += 1
    if len(keys) != count:
        suffix = "into DAG" if word == "LOAD" else "after DAG execution"
        raise AIError(
            f"number of keys {what} {suffix} does not match the number of given arguments"
        )
    return tuple(keys), j


def _split_ops(args: Sequence[str], start: int) -> list[list[str]]:
    """Ops between ``|>`` separators; a trailing ``|>`` is an argument of the op before it."""
    ops: list[list[str]] = []
    for i in range(start, len(args)):
        if args[i] == CHAIN and i < len(args) - 1:
            ops.append([])
        elif not ops:
            raise AIError(f"Invalid DAG command. Unexpected argument:  {args[i]}")
        else:
            ops[-1].append(args[i])
    return ops


def _op_parser(name: str, command: str) -> Callable[[Sequence[str]], DagOp]:
    deprecated, readonly = command.startswith("AI.DAGRUN"), command.endswith("_RO")
    if name == "AI.TENSORSET":
        return parse_tensorset
    if name == "AI.TENSORGET":
        return parse_tensorget
    if name in ("AI.MODELEXECUTE", "AI.SCRIPTEXECUTE"):
        if deprecated:
            raise AIError(f"{name} cannot be used in a deprecated AI.DAGRUN command")
        if name == "AI.MODELEXECUTE":
            return lambda a: parse_modelexecute(a, in_dag=True)
        if readonly:
            raise AIError("AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG")
        return lambda a: parse_scriptexecute(a, in_dag=True)
    if name in ("AI.MODELRUN", "AI.SCRIPTRUN"):
        if not deprecated:
            raise AIError(f"Deprecated {name} cannot be used in AI.DAGEXECUTE command")
        if name == "AI.MODELRUN":
            return lambda a: parse_modelrun(a, in_dag=True)
        # allowed in AI.DAGRUN_RO, as RedisAI did: a SCRIPTRUN declares no KEYS, so its script
        # can reach nothing in Redis
        return lambda a: parse_scriptrun(a, in_dag=True)
    raise AIError("Unsupported command within DAG")


def check_names(dag: DagExecute) -> None:
    """Every input must be LOADed or produced earlier; every PERSIST key must exist at the end."""
    available = set(dag.load)
    for op in dag.ops:
        if any(name not in available for name in op.reads()):
            raise AIError("INPUT key cannot be found in DAG")
        available.update(op.writes())
    if any(key not in available for key in dag.persist):
        raise AIError("PERSIST key cannot be found in DAG")


@dataclass
class _Header:
    """A DAG's arguments before its first op; ``end``: where the ops start."""

    load: tuple[str, ...] | None = None
    persist: tuple[str, ...] | None = None
    routing: str | None = None
    timeout: int | None = None
    end: int = 0


def _header(args: Sequence[str], command: str, until_load: bool = False) -> _Header:
    """Parse the arguments before the first op, in order (``until_load``: stop after LOAD)."""
    deprecated, readonly = command.startswith("AI.DAGRUN"), command.endswith("_RO")
    if deprecated and len(args) < 3:
        raise AIError(f"wrong number of arguments for '{command}' command")
    if not deprecated and len(args) < 5:
        raise AIError(f"missing arguments for '{command}' command")
    head = _Header()
    i = 0
    while i < len(args):
        token, word = args[i], args[i].upper()
        if word == "LOAD" and head.load is None:
            head.load, i = _keys(args, i, "LOAD")
            if until_load:
                break
        elif word == "PERSIST" and head.persist is None:
            if readonly:
                raise AIError("PERSIST cannot be specified in a read-only DAG")
            head.persist, i = _keys(args, i, "PERSIST")
        elif word == "ROUTING" and head.routing is None:
            if i + 1 >= len(args):
                raise AIError("Missing ROUTING value")
            head.routing, i = args[i + 1], i + 2
        elif word == "KEYS" and head.routing is None and not deprecated:
            # RedisAI 1.2.0-1.2.4's form of ROUTING (JRedisAI still sends it): the keys the
            # DAG is about, the first of them routing it
            keys, i = _routing_keys(args, i)
            head.routing = keys[0]
        elif word == "TIMEOUT" and head.timeout is None:
            head.timeout, i = parse_timeout(args, i + 1, "No value provided for TIMEOUT"), i + 2
        elif token == CHAIN and i < len(args) - 1:
            break
        else:
            raise AIError(f"Invalid DAG command. Unexpected argument:  {token}")
    head.end = i
    return head


def _routing_keys(args: Sequence[str], i: int) -> tuple[list[str], int]:
    """``KEYS n key...`` at ``args[i]``; returns the keys and the index after them."""
    count = parse_int(args[i + 1] if i + 1 < len(args) else "", "Invalid argument for KEYS")
    end = i + 2 + count
    if count <= 0 or end > len(args) or CHAIN in args[i + 2 : end]:
        raise AIError("Invalid argument for KEYS")
    return list(args[i + 2 : end]), end


def loaded_first(args: Sequence[str], command: str) -> tuple[str, ...]:
    """The keys RedisAI read from the keyspace before it met any error later in ``args``: it
    loaded a LOAD section's tensors as it parsed it, so a missing or wrong one was the error
    reported. Those of a well-formed LOAD after well-formed arguments, else none."""
    try:
        return _header(args, command, until_load=True).load or ()
    except AIError:
        return ()


def parse_dag(args: Sequence[str], command: str = "AI.DAGEXECUTE") -> DagExecute:
    """Parse the arguments after ``command`` (one of ``DAG_COMMANDS``)."""
    deprecated, readonly = command.startswith("AI.DAGRUN"), command.endswith("_RO")
    head = _header(args, command)
    if not deprecated and head.load is None and head.persist is None and head.routing is None:
        raise AIError(
            "AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one out of "
            "ROUTING, LOAD, PERSIST keywords"
        )
    if head.end >= len(args):
        raise AIError("DAG is empty")
    ops: list[DagOp] = []
    for tokens in _split_ops(args, head.end):
        if not tokens:
            raise AIError("Unsupported command within DAG")
        ops.append(_op_parser(tokens[0].upper(), command)(tokens[1:]))
    dag = DagExecute(
        tuple(ops),
        load=head.load or (),
        persist=head.persist or (),
        routing=head.routing,
        timeout_ms=head.timeout,
        readonly=readonly,
    )
    check_names(dag)
    return dag
