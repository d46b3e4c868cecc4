"""``storage.plans`` driven on ``redis.asyncio``: the same plans as the blocking client runs."""

from __future__ import annotations

from typing import Any, TypeVar

import redis
import redis.asyncio

from aiworker.storage.plans import Commands, Plan

T = TypeVar("T")


async def execute_commands(r: redis.asyncio.Redis, batch: Commands) -> list[Any]:
    """Send one batch; replies with exceptions in place."""
    if len(batch.commands) == 1 and not batch.transaction:
        try:
            # the base method: a client's debug printing of user commands must not see these
            return [await redis.asyncio.Redis.execute_command(r, *batch.commands[0])]  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            return [exc]
    pipe = redis.asyncio.Redis.pipeline(r, transaction=batch.transaction)
    for command in batch.commands:
        pipe.execute_command(*command)
    return list(await pipe.execute(raise_on_error=False))


async def run(r: redis.asyncio.Redis, plan: Plan[T]) -> T:
    """Drive a storage plan (``Commands`` steps only)."""
    try:
        step = next(plan)
        while True:
            if not isinstance(step, Commands):
                raise TypeError(f"a storage plan yielded {type(step).__name__}")
            step = plan.send(await execute_commands(r, step))
    except StopIteration as stop:
        result: T = stop.value
        return result
