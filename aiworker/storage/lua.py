"""Every server-side Lua script aiworker runs lives in ``storage/lua/<name>.lua``; this is the one
loader and the one way to call them (redis-py's ``register_script`` is the model). Each file starts
with a header comment saying its KEYS and ARGV. A line ``-- @include <part>`` is replaced by
``lua/<part>.lua``: code that several scripts share (the completion's checks and writes) has one
source.

A call (``Call``: a script, its KEYS, its ARGV) is made by ``calls_plan``, a storage plan driven
on whatever sends commands (``run`` on a worker's job connection, ``LuaScript.plan`` inside other
plans, ``LuaScript.__call__`` on a redis-py client):

* by SHA-1 (EVALSHA); on NOSCRIPT (a restart, a promoted replica) the script is loaded where it
  ran (SCRIPT LOAD, which the least-privilege worker user may send) and run again;
* in its keys' hash slot: every key a script touches is passed in KEYS and the call goes to the
  master of its first key's slot (``by_slot`` groups keys for callers that read or write in
  several). A single Redis is the one-slot case, not a second path;
* a script that declares ``-- @keys-in-argv N`` also takes its keys as arguments: when the worker
  user's ACL denies a declared key, Redis refuses the whole script before it runs (NOPERM), so the
  call is made once more with every key but the first at ARGV[N] (a count, then the keys), and the
  script's own ACL check names the key it may not touch. Normal calls send a 0 there;
* a call with ``stages`` (key, tensor fields) writes them first with plain HSETs, runs the script
  and deletes them, in one MULTI: a large value copied into Lua and out again costs Redis ten
  times the HSET, so the script only RENAMEs a stage into place; none is left whatever it did.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import redis
from redis.cluster import ClusterPipeline, RedisCluster

from aiworker.storage import plans
from aiworker.storage.plans import Commands, Plan
from aiworker.storage.wire import as_exception


class LuaScript:
    """One script: its source, its SHA-1, and where it takes keys as arguments (if it does)."""

    def __init__(self, name: str, source: str, keys_in_argv: int | None = None) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self.keys_in_argv = keys_in_argv  # ARGV index (1-based) of the count of keys given there
        _BY_SHA[self.sha] = self

    def __call__(self, r: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run on a redis-py client, or on a pipeline in WATCH mode (a cluster's too: both take
        ``execute_command``); an error reply raises."""

        def one_by_one(batch: Commands) -> list[Any]:
            replies: list[Any] = []
            routes = batch.routes or [None] * len(batch.commands)
            for command, route in zip(batch.commands, routes, strict=True):
                try:
                    replies.append(r.execute_command(*command, **_routed(r, command, route)))
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies

        return plans.first(plans.drive(calls_plan([Call(self, keys, args)]), one_by_one))

    def load(self, r: Any, near: Any = None) -> None:
        """Load the script where ``r`` sends commands: on Redis Cluster the master of ``near``
        (every master without it). A cluster pipeline in WATCH mode cannot send SCRIPT LOAD
        itself (no key to route it by): its callers load on the client, then run again."""
        r.execute_command("SCRIPT", "LOAD", self.source, **_routed(r, ("SCRIPT",), near))

    def plan(self, keys: Sequence[Any], args: Sequence[Any] = (), load: bool = False) -> Plan[Any]:
        """The same call as a plan step: its reply, or the error in its place. ``load``: the
        script is known to be missing where it runs (NOSCRIPT): load it in the same round trip."""
        call = Call(self, keys, args)
        if load:
            replies = yield from calls_plan([call], load)
            return replies[0]
        # ``calls_plan`` for one call without stages, built directly (the hot path of a
        # client's tensorset): NOSCRIPT and NOPERM are handled by the same ``_again``
        replies = yield Commands([call.command()], routes=[call.route])
        if isinstance(replies[0], redis.ResponseError):
            replies = yield from _again([call], replies)
        return replies[0]


_BY_SHA: dict[str, LuaScript] = {}


def _routed(r: Any, command: Sequence[Any], route: Any) -> dict[str, Any]:
    """redis-py options that send a SCRIPT LOAD on a Redis Cluster client to the node of its
    call's key only: redis-py sends it to every master, so one lost master failed every load
    (a worker's first run of a model) on the live ones too."""
    if command[0] != "SCRIPT":
        return {}
    if isinstance(r, ClusterPipeline):  # redis-py would ask a node where to send it: none
        raise redis.exceptions.RedisClusterException("SCRIPT LOAD in a cluster pipeline")
    if route is None or not isinstance(r, RedisCluster):
        return {}
    return {"target_nodes": r.get_node_from_key(route)}  # type: ignore[no-untyped-call]


def loads_for(commands: Sequence[Sequence[Any]], loaded: set[str]) -> list[tuple[Any, ...]]:
    """A SCRIPT LOAD of each of aiworker's scripts the commands call by SHA and not in ``loaded``
    (which gains them): queued before them in a client's MULTI, where a call cannot be sent again
    in its place after a NOSCRIPT (the commands after it in the transaction would run before
    it). SCRIPT LOAD, not EVAL: a user granted ``evalsha`` and ``script|load``
    (docs/security.md) may send it."""
    shas = dict.fromkeys(
        c[1] for c in commands if c[0] == "EVALSHA" and c[1] in _BY_SHA and c[1] not in loaded
    )
    loaded.update(shas)
    return [("SCRIPT", "LOAD", _BY_SHA[sha].source) for sha in shas]


@dataclass(frozen=True)
class Call:
    """One script call: KEYS, and ARGV without the keys-as-arguments slot (filled in here)."""

    script: LuaScript
    keys: Sequence[Any]
    args: Sequence[Any] = ()
    near: Any = None  # a key in the same slot as ``keys`` (routed by: one seen before is cheaper)
    stages: Sequence[tuple[str, Mapping[str, Any]]] = ()  # (key, fields) written first

    @property
    def route(self) -> Any:
        """The key whose hash slot the call runs in (None: any node)."""
        if self.near is not None:
            return self.near
        return self.keys[0] if self.keys else None

    def command(self) -> tuple[Any, ...]:
        at = self.script.keys_in_argv
        if at is None:
            return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)
        head, tail = self.args[: at - 1], self.args[at - 1 :]
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *head, 0, *tail)

    def unit(self, evalsha: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The commands that make the call (``evalsha``: its EVALSHA): with stages, a MULTI of
        their HSETs, the script, and their DEL."""
        if not self.stages:
            return [evalsha]
        writes = [("HSET", key, *[x for pair in f.items() for x in pair]) for key, f in self.stages]
        dels = ("DEL", *(key for key, _fields in self.stages))
        return [("MULTI",), *writes, evalsha, dels, ("EXEC",)]

    def reply_of(self, got: Sequence[Any]) -> Any:
        """The script's reply among the replies to ``unit`` (an error refusing the MULTI when
        it was queued, e.g. NOPERM: then nothing ran)."""
        if not self.stages:
            return got[0]
        for queued in got[:-1]:
            if isinstance(queued, Exception):
                return queued
        done = got[-1]
        return done if isinstance(done, Exception) else as_exception(done[len(self.stages)])

    def keys_as_arguments(self) -> tuple[Any, ...]:
        """The call with every key but the first passed in ARGV (see the module docstring)."""
        at = self.script.keys_in_argv
        assert at is not None
        head, tail, rest = self.args[: at - 1], self.args[at - 1 :], self.keys[1:]
        return ("EVALSHA", self.script.sha, 1, self.keys[0], *head, len(rest), *rest, *tail)


def calls_plan(calls: Sequence[Call], load: bool = False) -> Plan[list[Any]]:
    """Run ``calls`` in one round trip (per node): their replies in order, errors in place
    (``load``: each script loaded first, in that round trip)."""
    replies = yield from _units(calls, [call.command() for call in calls], load)
    return (yield from _again(calls, replies))


def _units(
    calls: Sequence[Call], evalshas: Sequence[tuple[Any, ...]], loads: bool = False
) -> Plan[list[Any]]:
    """Send each call's unit with its EVALSHA from ``evalshas`` (after a SCRIPT LOAD of it with
    ``loads``), each to its call's master, in one round trip; the script replies in order."""
    commands: list[tuple[Any, ...]] = []
    routes: list[Any] = []
    spans: list[tuple[int, int]] = []
    for call, evalsha in zip(calls, evalshas, strict=True):
        unit = call.unit(evalsha)
        if loads:
            commands.append(("SCRIPT", "LOAD", call.script.source))
            routes.append(call.route)
        spans.append((len(commands), len(commands) + len(unit)))
        commands += unit
        routes += [call.route] * len(unit)
    got = yield Commands(commands, routes=routes)
    return [call.reply_of(got[a:b]) for call, (a, b) in zip(calls, spans, strict=True)]


def _again(calls: Sequence[Call], replies: list[Any]) -> Plan[list[Any]]:
    """The calls Redis refused with NOSCRIPT or (for a script that takes keys as arguments)
    NOPERM, made again as the module docstring says; ``replies`` with their new replies."""
    if not any(isinstance(reply, redis.ResponseError) for reply in replies):
        return replies
    missing = [
        n for n, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)
    ]
    if missing:  # load where it ran, and run again
        chosen = [calls[n] for n in missing]
        got = yield from _units(chosen, [call.command() for call in chosen], loads=True)
        for n, reply in zip(missing, got, strict=True):
            replies[n] = reply
    denied = [
        n
        for n, reply in enumerate(replies)
        if isinstance(reply, redis.exceptions.NoPermissionError)
        and calls[n].script.keys_in_argv is not None
        and len(calls[n].keys) > 1
    ]
    if denied:
        chosen = [calls[n] for n in denied]
        got = yield from _units(chosen, [call.keys_as_arguments() for call in chosen])
        for n, reply in zip(denied, got, strict=True):
            replies[n] = reply
    return replies


class Sender(Protocol):
    """What ``run`` sends on: a job connection (``storage.wire.JobConnection``)."""

    def pipeline(self, commands: Sequence[Sequence[Any]], routes: Any = None) -> list[Any]: ...


def run(conn: Sender, calls: Sequence[Call]) -> list[Any]:
    """Run ``calls`` on a job connection, each in its keys' slot, one round trip per node;
    replies in order, errors in place."""
    if not calls:
        return []

    def send(batch: Commands) -> list[Any]:
        return conn.pipeline(batch.commands, batch.routes)

    if any(call.stages for call in calls):
        return plans.drive(calls_plan(calls), send)
    replies = conn.pipeline([call.command() for call in calls], [call.route for call in calls])
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            break
    else:
        return replies  # the common case, without the plan's machinery
    return plans.drive(_again(calls, list(replies)), send)


def run_one(conn: Sender, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """One call on a job connection; an error reply raises."""
    return plans.first(run(conn, [Call(script, keys, args)]))


_INCLUDE = re.compile(r"^-- @include (\w+)$", re.M)
_KEYS_IN_ARGV = re.compile(r"^-- @keys-in-argv (\d+)$", re.M)


def _source(name: str) -> str:
    return resources.files("aiworker.storage").joinpath("lua", f"{name}.lua").read_text()


@functools.cache
def load(name: str, flags: str = "") -> LuaScript:
    """The script in ``lua/<name>.lua``, its ``-- @include`` lines replaced by the parts;
    ``flags``: a variant declaring those script flags (``allow-oom``) in a shebang line."""
    source = _INCLUDE.sub(lambda match: _source(match.group(1)), _source(name))
    if flags:
        source = f"#!lua flags={flags}\n{source}"
    found = _KEYS_IN_ARGV.search(source)
    return LuaScript(name, source, int(found.group(1)) if found else None)
