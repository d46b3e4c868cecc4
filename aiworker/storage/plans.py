"""Redis I/O written once for blocking and asyncio callers.

A *plan* is a generator that yields the commands it needs (a ``Commands``: one round trip, optionally
a MULTI/EXEC transaction) and receives their replies, exceptions in place of failed commands. The
logic of "read a model", "store a tensor", ... lives in one plan; ``run`` drives a plan on a
``redis.Redis`` (or a ``redis.cluster.RedisCluster``) and the asyncio client drives the same plan on
``redis.asyncio`` (``run_async`` in ``aiworker.asyncio``). Plans may also yield other instructions that only a client's driver
understands (a job to submit, a model to verify); storage plans only yield ``Commands``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from aiworker.protocol.keys import key_slot

T = TypeVar("T")
# A blocking client of either kind: one Redis, or redis-py's cluster client.
AnyRedis = redis.Redis | RedisCluster


@dataclass
class Commands:
    """Commands sent in one round trip; ``transaction`` wraps them in MULTI/EXEC."""

    commands: list[tuple[Any, ...]] = field(default_factory=list)
    transaction: bool = False

    @classmethod
    def one(cls, *command: Any) -> Commands:
        return cls([command])


Plan = Generator[Any, Any, T]


def first(replies: Sequence[Any]) -> Any:
    """The only reply of a one-command batch, raising the error it carries."""
    reply = replies[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


def call(*command: Any) -> Plan[Any]:
    """A plan running one command (``value = yield from call(...)``); errors raise."""
    replies = yield Commands.one(*command)
    return first(replies)


def execute_commands(r: AnyRedis, batch: Commands) -> list[Any]:
    """Send one batch on a blocking client; replies with exceptions in place."""
    if isinstance(r, RedisCluster):
        return execute_cluster_commands(r, batch)
    if len(batch.commands) == 1 and not batch.transaction:
        try:
            # the base method: a client's debug printing of user commands must not see these
            return [redis.Redis.execute_command(r, *batch.commands[0])]  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            return [exc]
    pipe = r.pipeline(transaction=batch.transaction)
    for command in batch.commands:
        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
    return list(pipe.execute(raise_on_error=False))


def execute_cluster_commands(cluster: RedisCluster, batch: Commands) -> list[Any]:
    """A batch on Redis Cluster. Commands go in one round trip per node; a transaction becomes one
    MULTI/EXEC per hash slot, in the order the slots first appear (a MULTI cannot span slots):
    what one key holds, e.g. a model hash, is still replaced atomically; an index set or
    statistics elsewhere follow it."""
    rc: Any = cluster  # redis-py's cluster client is untyped
    commands = batch.commands
    if len(commands) == 1 and not batch.transaction:
        command = commands[0]
        try:
            if str(command[0]).upper() == "MGET":  # keys in many slots: one GET per key
                return [rc.mget_nonatomic(list(command[1:]))]
            # the base method: a client's debug printing of user commands must not see these
            return [RedisCluster.execute_command(rc, *command)]  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            return [exc]
    if not batch.transaction:
        pipe = rc.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))
    groups: dict[int, list[int]] = {}
    for n, command in enumerate(commands):
        groups.setdefault(key_slot(command[1]), []).append(n)
    replies: list[Any] = [None] * len(commands)
    for members in groups.values():
        pipe = rc.pipeline(transaction=True)
        for n in members:
            pipe.execute_command(*commands[n])
        try:
            results = list(pipe.execute(raise_on_error=False))
        except redis.ResponseError as exc:
            results = [exc] * len(members)
        for n, result in zip(members, results, strict=True):
            replies[n] = result
    return replies


def run(r: AnyRedis, plan: Plan[T]) -> T:
    """Drive a storage plan (``Commands`` steps only) on a blocking client."""
    try:
        step = next(plan)
        while True:
            if not isinstance(step, Commands):
                raise TypeError(f"a storage plan yielded {type(step).__name__}")
            step = plan.send(execute_commands(r, step))
    except StopIteration as stop:
        result: T = stop.value
        return result
