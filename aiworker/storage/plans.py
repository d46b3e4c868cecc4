"""Redis I/O written once for blocking and asyncio callers.

A *plan* is a generator that yields the commands it needs (a ``Commands``: one round trip, optionally
a MULTI/EXEC transaction) and receives their replies, exceptions in place of failed commands. The
logic of "read a model", "store a tensor", ... lives in one plan; ``run`` drives a plan on a
``redis.Redis`` (or a ``redis.cluster.RedisCluster``), ``drive`` on anything that sends a
``Commands`` (a worker's job connection). Plans may also yield other instructions that only a
client's driver understands (a job to submit, a model to verify); storage plans only yield
``Commands``. The clients' drivers (sync, asyncio, the gateway's) carry out their steps through
``drive_steps`` and ``drive_steps_async``.

On Redis Cluster a command goes to the master of its key's hash slot; a command that names no key
of its own (SCRIPT LOAD, WAIT) names in ``Commands.routes`` the key whose master must run it. A
single Redis is the one-slot case: ``by_slot`` puts every key in one group there.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from aiworker.protocol.keys import key_slot
from aiworker.storage.cluster import LOST, command_key, cover

T = TypeVar("T")
# A blocking client of either kind: one Redis, or redis-py's cluster client.
AnyRedis = redis.Redis | RedisCluster
# A key's hash slot where it matters (Redis Cluster), or one slot for all (a single Redis).
SlotOf = Callable[[Any], int]


@dataclass
class Commands:
    """Commands sent in one round trip; ``transaction`` wraps them in MULTI/EXEC (one per hash
    slot on Redis Cluster). ``routes``: per command, the key whose node runs it (None: the
    command's own key). ``large``: the replies hold tensors, whose large bulk strings a driver may
    receive in place and give as read-only memoryviews."""

    commands: list[tuple[Any, ...]] = field(default_factory=list)
    transaction: bool = False
    routes: list[Any] | None = None
    large: bool = False

    @classmethod
    def one(cls, *command: Any) -> Commands:
        return cls([command])


Plan = Generator[Any, Any, T]


def one_slot(key: Any) -> int:
    """The slot of every key on a single Redis: there is only one."""
    return 0


def by_slot(keys: Sequence[Any], slot: SlotOf) -> list[list[int]]:
    """The positions of ``keys`` grouped by hash slot, groups in the order their slots first
    appear: what one Lua call or one MULTI may touch. One group on a single Redis."""
    groups: dict[int, list[int]] = {}
    for n, key in enumerate(keys):
        groups.setdefault(slot(key), []).append(n)
    return list(groups.values())


def rounds(batch: Commands, slot: SlotOf) -> list[list[int]]:
    """The positions of a batch's commands by pipeline: a transaction's by hash slot (one
    MULTI/EXEC each: one cannot span slots), any other's all in one."""
    if not batch.transaction:
        return [list(range(len(batch.commands)))]
    return by_slot([command_key(command) for command in batch.commands], slot)


def first(replies: Sequence[Any]) -> Any:
    """The only reply of a one-command batch, raising the error it carries."""
    reply = replies[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


def every(replies: Sequence[Any]) -> Sequence[Any]:
    """The replies of a batch that must all succeed, raising the first error among them (on
    Redis Cluster a transaction is one per slot: one may be refused while the others ran)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def call(*command: Any) -> Plan[Any]:
    """A plan running one command (``value = yield from call(...)``); errors raise."""
    replies = yield Commands.one(*command)
    return first(replies)


def call_once(*command: Any) -> Plan[Any]:
    """``call`` of a command whose first argument is its key, sent to that key's master without
    redis-py's retries (it retries no command sent to a node it was told): a master lost for
    good fails it at once instead of after ~13 s. For best-effort writes."""
    replies = yield Commands([command], routes=[command[1]])
    return first(replies)


def execute_commands(r: AnyRedis, batch: Commands) -> list[Any]:
    """Send one batch on a blocking client; replies with exceptions in place. Redis Cluster:
    one round trip per node, a transaction as one MULTI/EXEC per hash slot (a MULTI cannot span
    slots: what one key holds, e.g. a model hash, is still replaced atomically; an index set or
    statistics elsewhere follow it)."""
    rc: Any = r  # redis-py's cluster client is untyped
    cluster = isinstance(r, RedisCluster)
    # the base class' method: a client's debug printing of user commands must not see these
    base: Any = RedisCluster if cluster else redis.Redis
    commands = batch.commands
    routes = batch.routes or [None] * len(commands)
    if cluster:
        cover(rc)  # a slot unserved for a while and served again is in the map again

    def where(n: int) -> dict[str, Any]:
        route = routes[n]
        if not cluster or not route or commands[n][0] == "SCRIPT":
            # SCRIPT LOAD goes to every master (redis-py's own routing of it): a call an ASK sent
            # on runs where it lands
            return {}
        return {"target_nodes": rc.get_node_from_key(route)}

    def load_first(group: list[int]) -> list[int]:
        """A cluster's SCRIPT LOADs, sent on their own (a cluster pipeline cannot send one
        command to every master before redis-py 8); the rest of ``group``."""
        rest = []
        for n in group:
            if commands[n][0] != "SCRIPT":
                rest.append(n)
                continue
            try:
                try:
                    replies[n] = base.execute_command(r, *commands[n])
                except LOST:
                    if not routes[n]:
                        raise
                    # a master lost (no replica to promote) failed the load on all of them:
                    # load it where the call runs, at least
                    node = rc.get_node_from_key(routes[n])
                    replies[n] = base.execute_command(r, *commands[n], target_nodes=node)
            except redis.ResponseError as exc:
                replies[n] = exc
        return rest

    if len(commands) == 1 and not batch.transaction:
        command = commands[0]
        try:
            if cluster and str(command[0]).upper() == "MGET":  # keys in many slots: a GET each
                return [rc.mget_nonatomic(list(command[1:]))]
            return [base.execute_command(r, *command, **where(0))]
        except redis.ResponseError as exc:
            return [exc]
    replies: list[Any] = [None] * len(commands)
    for group in rounds(batch, key_slot if cluster else one_slot):
        if cluster:
            group = load_first(group)
            if not group:
                continue
        pipe = rc.pipeline(transaction=batch.transaction)
        for n in group:
            pipe.execute_command(*commands[n], **where(n))
        try:
            results = [plain_error(result) for result in pipe.execute(raise_on_error=False)]
        except redis.ResponseError as exc:  # EXECABORT: the refusal of a queued command
            results = [plain_error(exc)] * len(group)
        for n, result in zip(group, results, strict=True):
            replies[n] = result
    return replies


# What redis-py puts before the error of a pipeline's command ("Command # 3 (EVALSHA <sha> 2
# key...) of pipeline caused error: "): it shows aiworker's own commands (a blob as "<memory at
# 0x...>") to clients, who are answered in Redis' own words, as RedisAI's were.
_PIPELINE_NOTE = re.compile(r"Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def plain_error(reply: Any) -> Any:
    """``reply``; an error a redis-py pipeline reported, in Redis' words (the same exception,
    its type kept, without redis-py's note naming the command)."""
    if isinstance(reply, redis.ResponseError) and reply.args and isinstance(reply.args[0], str):
        found = _PIPELINE_NOTE.match(reply.args[0])
        if found is not None:
            reply.args = (reply.args[0][found.end() :], *reply.args[1:])
    return reply


def drive(plan: Plan[T], send: Callable[[Commands], list[Any]]) -> T:
    """Drive a storage plan (``Commands`` steps only), each step sent by ``send``."""
    try:
        step = next(plan)
        while True:
            if not isinstance(step, Commands):
                raise TypeError(f"a storage plan yielded {type(step).__name__}")
            step = plan.send(send(step))
    except StopIteration as stop:
        result: T = stop.value
        return result


def drive_steps(plan: Plan[T], step: Callable[[Any], Any]) -> T:
    """Drive a client's plan: ``step`` carries out each step it yields; an exception a step
    raises goes back into the plan (it decides what, say, a lost Redis means)."""
    try:
        current = next(plan)
        while True:
            try:
                result = step(current)
            except Exception as exc:
                current = plan.throw(exc)
                continue
            current = plan.send(result)
    except StopIteration as stop:
        out: T = stop.value
        return out


async def drive_steps_async(plan: Plan[T], step: Callable[[Any], Awaitable[Any]]) -> T:
    """``drive_steps`` for an asyncio client: ``step`` is awaited."""
    try:
        current = next(plan)
        while True:
            try:
                result = await step(current)
            except Exception as exc:
                current = plan.throw(exc)
                continue
            current = plan.send(result)
    except StopIteration as stop:
        out: T = stop.value
        return out


def run(r: AnyRedis, plan: Plan[T]) -> T:
    """Drive a storage plan on a blocking client."""
    return drive(plan, lambda batch: execute_commands(r, batch))
