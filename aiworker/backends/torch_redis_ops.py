"""RedisAI 1.2's Redis calls inside TorchScript scripts: ``redis.execute``, ``redis.asList`` and
``redisAI.model_execute``, registered as custom TorchScript ops (``torch.library``).

As in RedisAI, a script names them bare (``redis.execute("SET", key, value)``; the last argument
may also be a list of strings) and ``compile_script`` resolves ``redis``/``redisAI`` to these op
namespaces. A call runs one Redis command through the ``ScriptContext`` the worker gave the
running SCRIPTEXECUTE (set around the call by ``calling``; a contextvar, as scripts run on
several threads at once), and its reply becomes a TorchScript value: a string, an int, None or a
list of them. A failure raises ``Redis command returned an error: <Redis' error>``, RedisAI's text.

What a script may touch is what its request declared in KEYS (RedisAI's rule; it enforced it on a
cluster): each key a command names (where COMMAND INFO says they are, see ``command_keys``) must
be a declared key or share the hash tag of a declared ``{tag}``, and never be one of aiworker's
own keys (under its prefix: a declared tag may be shared by a stats hash, a queue partition or a
reply list); commands that reach beyond their keys (admin, blocking, pub/sub, scripting,
transactions, connection state) or into another database are refused outright. ``redis.asString``,
``redis.asInt`` and ``redis.asDouble`` are aiworker additions (RedisAI scripts wrote ``str(v)``,
``int(str(v))``); the rest is RedisAI's API.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aiworker.backends.base import ScriptContext
from aiworker.protocol import messages
from aiworker.protocol.keys import hash_tag
from aiworker.protocol.text import text

_CONTEXT: contextvars.ContextVar[ScriptContext | None] = contextvars.ContextVar(
    "aiworker_script_context", default=None
)
# The text of the last exception an op raised in this script run: torch < 2.2 (2.1 tried) loses
# it on its way through the TorchScript interpreter ("RuntimeError:" and nothing else).
_RAISED: contextvars.ContextVar[str] = contextvars.ContextVar("aiworker_op_error", default="")
ERROR_PREFIX = "Redis command returned an error: "

# Keyless commands a script may run all the same (harmless, and RedisAI scripts used them).
KEYLESS_ALLOWED = frozenset(("PING", "ECHO", "TIME"))
# ACL categories whose commands reach beyond the keys they name, or change the connection.
REFUSED_CATEGORIES = frozenset(
    ("@admin", "@dangerous", "@blocking", "@pubsub", "@connection", "@transaction", "@scripting")
)
# Commands that name another database: Redis flags none of them as such (SELECT, SWAPDB and
# MIGRATE are refused by category as well; MOVE and COPY's DB option are not).
OTHER_DATABASE = frozenset(("MOVE", "SELECT", "SWAPDB", "MIGRATE"))


@dataclass(frozen=True)
class KeySpec:
    """Where a command's keys are, as COMMAND INFO says: arguments ``first`` to ``last`` (from
    the end when negative) every ``step``; ``movable``: they depend on the arguments' values
    (``numkeys``, a STORE option...), so Redis is asked each time (COMMAND GETKEYS)."""

    first: int
    last: int
    step: int
    movable: bool

    def keys(self, args: Sequence[str]) -> list[str]:
        """The keys among ``args`` (the arguments after the command's name)."""
        count = len(args) + 1  # Redis counts the name as argument 0
        last = count + self.last if self.last < 0 else min(self.last, count - 1)
        return [args[i - 1] for i in range(self.first, last + 1, self.step)]


# COMMAND INFO, read once per command (or container|subcommand) name: the command table of the
# Redis a worker serves does not change under it.
_SPECS: dict[str, KeySpec] = {}
_CONTAINERS: set[str] = set()  # commands with subcommands (Redis 7: CONFIG, OBJECT...)


def refused(message: str) -> RuntimeError:
    return RuntimeError(ERROR_PREFIX + message)


@contextlib.contextmanager
def calling(context: ScriptContext | None) -> Iterator[None]:
    """Make ``context`` what this thread's ``redis.*`` calls use while a script runs."""
    token = _CONTEXT.set(context)
    raised = _RAISED.set("")
    try:
        yield
    finally:
        _RAISED.reset(raised)
        _CONTEXT.reset(token)


def raised_text() -> str:
    """The text of the last exception one of these ops raised in the current script run."""
    return _RAISED.get()


def _keeping_text(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def op(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as exc:
            _RAISED.set(str(exc))
            raise

    return op


def _context() -> ScriptContext:
    context = _CONTEXT.get()
    if context is None or context.redis_call is None:
        raise refused("ERR Redis commands are not available to this script run")
    return context


def key_allowed(key: str, declared: Sequence[str], exact: bool = False) -> bool:
    """A key is declared itself, or shares the hash tag a declared ``{tag}`` names (RedisAI's
    KEYS could name "a tag which all those keys share"; not when ``exact``)."""
    if key in declared:
        return True
    if exact:
        return False
    tag = hash_tag(key)
    return tag is not None and any(d == "{" + tag + "}" for d in declared)


def _command_info(call: Callable[..., Any], name: str) -> list[Any] | None:
    info = call("COMMAND", "INFO", name)
    entry = info[0] if isinstance(info, list) and info else None
    return list(entry) if entry else None


def _key_spec(call: Callable[..., Any], name: str, args: Sequence[str]) -> KeySpec:
    """The KeySpec of a command, or of its subcommand (``OBJECT|ENCODING``) for a container,
    from COMMAND INFO (cached); refuses the commands no script may run: those that name no
    key, or that reach past their keys (``REFUSED_CATEGORIES``)."""
    lookup = f"{name}|{args[0].upper()}" if name in _CONTAINERS and args else name
    spec = _SPECS.get(lookup)
    if spec is not None:
        return spec
    entry = _command_info(call, lookup)
    if entry is None:
        what = f"subcommand '{args[0]}' for" if lookup != name else "command"
        raise refused(f"ERR unknown {what} '{name.lower()}'")
    if lookup == name and len(entry) > 9 and entry[9] and args:  # Redis 7: a container
        _CONTAINERS.add(name)
        return _key_spec(call, name, args)
    flags = {text(f) for f in entry[2]} if len(entry) > 2 else set()
    categories = {text(c) for c in entry[6]} if len(entry) > 6 else set()
    first, last, step = (int(v or 0) for v in entry[3:6])
    movable = "movablekeys" in flags
    if "noscript" in flags or categories & REFUSED_CATEGORIES or (first == 0 and not movable):
        raise refused(f"ERR command '{name.lower()}' may not be called from a script")
    spec = KeySpec(first, last, step or 1, movable)
    _SPECS[lookup] = spec
    return spec


def command_keys(call: Callable[..., Any], name: str, args: Sequence[str]) -> list[str]:
    """The keys a command touches, where Redis itself says they are (COMMAND INFO's key range,
    or COMMAND GETKEYS where they depend on the arguments), refusing the commands no script may
    run: those that name no key (but ``KEYLESS_ALLOWED``), reach past their keys, or name
    another database."""
    if name in KEYLESS_ALLOWED:
        return []
    if name in OTHER_DATABASE or (name == "COPY" and any(a.upper() == "DB" for a in args[2:])):
        raise refused(f"ERR command '{name.lower()}' names another database: scripts may not")
    spec = _key_spec(call, name, args)
    if not spec.movable:
        return spec.keys(args)
    try:
        return [text(k) for k in call("COMMAND", "GETKEYS", name, *args)]
    except Exception as exc:  # e.g. wrong arity: Redis says so, as it would have to the command
        raise _as_error(exc) from None


def _as_error(exc: BaseException) -> RuntimeError:
    message = str(exc)
    head = message.split(" ", 1)[0]
    if not (head.isupper() and head.isalpha()):  # redis-py strips the ERR prefix
        message = "ERR " + message
    return refused(message)


def _reply(value: Any) -> Any:
    """A Redis reply as a TorchScript value (RedisAI: strings, ints, None, nested lists)."""
    if isinstance(value, BaseException):
        raise _as_error(value)
    if isinstance(value, (bytes, bytearray)):
        return text(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple, set)):
        return [_reply(item) for item in value]
    if isinstance(value, dict):  # a client that parsed a flat reply into a mapping
        return [_reply(item) for pair in value.items() for item in pair]
    if isinstance(value, float):
        return repr(value)
    return value


def execute(fn_name: str, args: list[str]) -> Any:
    """``redis.execute(command, *args)``: one Redis command on the declared keys."""
    context = _context()
    assert context.redis_call is not None
    name = fn_name.upper()
    for key in command_keys(context.redis_call, name, args):
        if context.keyspace.owns(key):  # a declared {tag} is shared by aiworker's own keys
            raise refused(f"ERR key '{key}' is one of aiworker's own: no script may use it")
        if not key_allowed(key, context.keys, context.exact_keys):
            raise refused(f"ERR key '{key}' is not declared in the script's KEYS")
    try:
        reply = context.redis_call(fn_name, *args)
    except Exception as exc:
        raise _as_error(exc) from None
    return _reply(reply)


def as_list(value: Any) -> list[Any]:
    """``redis.asList(reply)``: an array reply as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def as_string(value: Any) -> str:
    return "" if value is None else str(value)


def as_int(value: Any) -> int:
    return int(str(value))


def as_double(value: Any) -> float:
    return float(str(value))


def model_execute(model_key: str, inputs: list[torch.Tensor], num_outputs: int) -> list[Any]:
    """``redisAI.model_execute(key, tensors, n)``: run a stored model (declared in KEYS) on
    tensors and return its ``n`` outputs."""
    context = _CONTEXT.get()
    if context is None or context.run_model is None:
        raise RuntimeError("RedisAI models cannot be run from this script run")
    if context.keyspace.owns(model_key):  # a declared {tag} is shared by aiworker's own keys
        raise refused(f"ERR key '{model_key}' is one of aiworker's own: no model is stored there")
    if not key_allowed(model_key, context.keys, context.exact_keys):
        raise refused(f"ERR key '{model_key}' is not declared in the script's KEYS")
    device = inputs[0].device if inputs else torch.device("cpu")
    arrays = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in inputs]
    outputs = context.run_model(model_key, arrays)
    if len(outputs) != num_outputs:
        raise RuntimeError(messages.MODEL_OUTPUT_COUNT)
    return [torch.from_numpy(np.array(out, copy=True)).to(device) for out in outputs]


# registration ------------------------------------------------------------------------------

_LIBRARIES: list[torch.library.Library] = []


def _register() -> None:
    """Define the ops once per process. CONSERVATIVE alias analysis marks them as having side
    effects, so TorchScript never drops a call whose result is unused (``redis.execute("SET",
    ...)``)."""
    if _LIBRARIES:
        return
    redis_lib = torch.library.Library("redis", "DEF")  # type: ignore[no-untyped-call]
    ops: list[tuple[torch.library.Library, str, Callable[..., Any]]] = [
        (redis_lib, "execute(str fn_name, str[] args) -> Any", execute),
        (redis_lib, "asList(Any v) -> Any[]", as_list),
        (redis_lib, "asString(Any v) -> str", as_string),
        (redis_lib, "asInt(Any v) -> int", as_int),
        (redis_lib, "asDouble(Any v) -> float", as_double),
    ]
    redisai_lib = torch.library.Library("redisAI", "DEF")  # type: ignore[no-untyped-call]
    ops.append(
        (
            redisai_lib,
            "model_execute(str model_key, Tensor[] inputs, int num_outputs) -> Tensor[]",
            model_execute,
        )
    )
    for library, schema, function in ops:
        library.define(schema, alias_analysis="CONSERVATIVE")  # type: ignore[no-untyped-call]
        library.impl(schema.split("(", 1)[0], _keeping_text(function), "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
    _LIBRARIES.extend((redis_lib, redisai_lib))


_register()

# Names a script's source may use: TorchScript's own, plus RedisAI's two namespaces (matched
# case-insensitively, as RedisAI's resolver did).
_NAMES: dict[str, Any] = {
    "torch": torch,
    "math": math,
    "redis": torch.ops.redis,
    "redisai": torch.ops.redisAI,
}


def resolve(name: str) -> Any:
    """Resolution callback for compiling script source."""
    if name in ("torch", "math"):
        return _NAMES[name]
    if name.lower() in ("redis", "redisai"):
        return _NAMES[name.lower()]
    return None
