"""``storage.plans`` driven on ``redis.asyncio``: the same plans as the blocking client runs, on
one Redis or on Redis Cluster (``redis.asyncio.cluster.RedisCluster``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from aiworker.protocol.keys import key_slot
from aiworker.storage.cluster import cover_async
from aiworker.storage.plans import Commands, Plan, plain_error, rounds

T = TypeVar("T")
AnyAsyncRedis = redis.asyncio.Redis | RedisCluster


async def execute_commands(r: AnyAsyncRedis, batch: Commands) -> list[Any]:
    """Send one batch; replies with exceptions in place. Redis Cluster: as the blocking
    ``storage.plans.execute_commands``, one round trip per node, a transaction as one MULTI/EXEC
    per hash slot, a command that names no key on the master of its ``Commands.routes`` key."""
    if isinstance(r, RedisCluster):
        return await _execute_on_cluster(r, batch)
    if len(batch.commands) == 1 and not batch.transaction:
        try:
            # the base method: a client's debug printing of user commands must not see these
            return [await redis.asyncio.Redis.execute_command(r, *batch.commands[0])]  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            return [exc]
    pipe = redis.asyncio.Redis.pipeline(r, transaction=batch.transaction)
    for command in batch.commands:
        pipe.execute_command(*command)
    try:
        return [plain_error(reply) for reply in await pipe.execute(raise_on_error=False)]
    except redis.ResponseError as exc:  # EXECABORT: the refusal of a queued command
        plain_error(exc)  # in Redis' words
        raise


async def send_once(r: redis.asyncio.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """One round trip on a connection of ``r``'s pool, never sent again: redis-py's retry
    would send a pipeline again after a lost reply, and an XADD that ran would be queued twice.
    Error replies come back in place; a lost link raises (the connection is dropped)."""
    pool = r.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


async def _execute_on_cluster(rc: RedisCluster, batch: Commands) -> list[Any]:
    await cover_async(rc)  # the slot cache ``routes`` need, read again while it lacks a slot
    commands = batch.commands
    routes = batch.routes or [None] * len(commands)

    def where(n: int) -> dict[str, Any]:
        route = routes[n]
        return {"target_nodes": rc.get_node_from_key(route)} if route else {}

    if len(commands) == 1 and not batch.transaction:
        command = commands[0]
        try:
            if str(command[0]).upper() == "MGET":  # keys in many slots: a GET each
                return [await rc.mget_nonatomic(list(command[1:]))]
            return [await RedisCluster.execute_command(rc, *command, **where(0))]
        except redis.ResponseError as exc:
            return [exc]
    replies: list[Any] = [None] * len(commands)
    for group in rounds(batch, key_slot):
        pipe = rc.pipeline(transaction=batch.transaction)
        for n in group:
            pipe.execute_command(*commands[n], **where(n))
        try:
            results = [plain_error(reply) for reply in await pipe.execute(raise_on_error=False)]
        except redis.ResponseError as exc:  # EXECABORT: the refusal of a queued command
            results = [plain_error(exc)] * len(group)
        for n, result in zip(group, results, strict=True):
            replies[n] = result
    return replies


async def drive(plan: Plan[T], send: Callable[[Commands], Awaitable[list[Any]]]) -> T:
    """Drive a storage plan (``Commands`` steps only), each step sent by ``send``."""
    try:
        step = next(plan)
        while True:
            if not isinstance(step, Commands):
                raise TypeError(f"a storage plan yielded {type(step).__name__}")
            step = plan.send(await send(step))
    except StopIteration as stop:
        result: T = stop.value
        return result


async def run(r: AnyAsyncRedis, plan: Plan[T]) -> T:
    """Drive a storage plan on an asyncio client of either kind."""
    return await drive(plan, lambda batch: execute_commands(r, batch))
