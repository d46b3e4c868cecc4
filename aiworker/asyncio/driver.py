"""How an asyncio client runs the RedisAI methods' plans (``ops.Op``): shared by ``Client`` (one
Redis) and ``ClusterClient`` (Redis Cluster), which differ only in how a ``Commands`` of Redis
commands is sent and in how jobs are queued and waited for (their jobs object), as the blocking
clients share ``client.driver``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from aiworker.asyncio.plans import AnyAsyncRedis, execute_commands
from aiworker.client import job_ops
from aiworker.client.driver import ClientOptions
from aiworker.client.ops import Op, Print, Submit, VerifyHere, refusal_in
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import Request
from aiworker.storage.plans import Commands, drive_steps_async


class AsyncJobsLike(Protocol):
    reply_timeout: float | None

    async def submit(self, queue: str, request: Request, limit: float | None = None) -> Reply: ...

    async def close(self) -> None: ...


def printing(execute: Callable[..., Any]) -> Callable[..., Any]:
    """redisai-py's debug mode: every command printed before it is sent."""

    async def wrapper(*args: Any, **options: Any) -> Any:
        print(*args)
        return await execute(*args, **options)

    return wrapper


class AsyncDriver(ClientOptions):
    """Runs ops on an asyncio client; the client supplies ``_state``, ``_jobs``, ``_batches``
    (a semaphore bounding the connections its Redis commands take at once), ``_plain`` (the
    redis-py client they go through: undecoded, not printed) and ``debug``."""

    _jobs: AsyncJobsLike
    _batches: asyncio.Semaphore
    _plain: AnyAsyncRedis

    async def _send_bounded(self, batch: Commands) -> list[Any]:
        """Redis commands (an op's, or a job's wait's: heartbeats, taking an entry back),
        within the bound of ``_batches``."""
        async with self._batches:
            return await execute_commands(self._plain, batch)

    async def _step(self, step: Any) -> Any:
        if isinstance(step, Commands):
            return await self._send_bounded(step)
        if isinstance(step, Submit):
            if step.guard:
                refused = refusal_in(await self._send_bounded(Commands(list(step.guard))))
                if refused is not None:
                    raise refused
            return await self._jobs.submit(step.queue, step.request, step.limit)
        if isinstance(step, VerifyHere):
            return await asyncio.to_thread(step.check)
        if isinstance(step, Print):
            self._print(step.command)
            return None
        raise TypeError(f"unknown plan step {type(step).__name__}")

    async def _drive(self, op: Op) -> Any:
        if op.command is not None:
            self._print(op.command)
        return await drive_steps_async(op.plan, self._step)

    def _run(self, op: Op) -> Any:
        return self._drive(op)

    # jobs (aiworker's own calls) ---------------------------------------------------------------

    async def queue_of(self, request: Request) -> str:
        """The device queue ``request`` goes to (its model's or script's device)."""
        return str(await self._drive(Op(None, job_ops.queue_plan(self._state, request))))

    async def submit(self, device: str, request: Request) -> str:
        """Enqueue ``request`` on a device queue and wait for its reply: ``"OK"`` or the error."""
        (await self.submit_reply(device, request)).raise_for_status()
        return "OK"

    async def submit_reply(self, device: str, request: Request) -> Reply:
        """Like ``submit``, but return the worker's whole reply (a DAG's per-op results)."""
        return await self._jobs.submit(device, request)
