"""The asyncio client: ``aiworker.client.api``'s methods, each returning an awaitable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio

from aiworker.asyncio.jobs import AsyncJobs
from aiworker.asyncio.plans import execute_commands
from aiworker.client import job_ops
from aiworker.client.api import AICommands
from aiworker.client.ops import Op, Print, State, Submit, VerifyHere
from aiworker.client.waiting import DEFAULT_REPLY_TIMEOUT_S
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import Request
from aiworker.settings import Settings
from aiworker.storage.plans import Commands, drive_steps_async
from aiworker.storage.redis_options import client_kwargs

OWN_OPTIONS = ("prefix", "reply_timeout", "debug", "enable_postprocess", "max_concurrency")


def _printing(execute: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **options: Any) -> Any:
        print(*args)
        return await execute(*args, **options)

    return wrapper


class Client(AICommands, redis.asyncio.Redis):  # type: ignore[misc]
    """``aiworker.Client``'s API on ``redis.asyncio``: ``await con.tensorset(...)``,
    ``await con.modelexecute(...)``, ``await con.dag(...)...execute()``, plus every redis-py
    asyncio command. Same arguments as the blocking client (``debug``, ``enable_postprocess``,
    ``prefix``, ``reply_timeout``); jobs always share the client's one reply list."""

    def __init__(
        self,
        debug: Any = False,
        enable_postprocess: bool = True,
        *args: Any,
        prefix: str = DEFAULT_PREFIX,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT_S,
        max_concurrency: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.debug = bool(debug)
        # however many coroutines call at once, at most this many connections carry their reads
        # and writes (jobs add one writer and one reader)
        self._batches = asyncio.Semaphore(max_concurrency)
        self._state = State(Keys(prefix), raw=not enable_postprocess)
        plain = redis.asyncio.Redis(connection_pool=self.connection_pool)
        self._jobs = AsyncJobs(plain, self._state.keyspace, reply_timeout)
        if self.debug:
            self.execute_command = _printing(super().execute_command)  # type: ignore[method-assign]

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Client:  # type: ignore[override]
        own = {k: kwargs.pop(k) for k in OWN_OPTIONS if k in kwargs}
        pool = redis.asyncio.ConnectionPool.from_url(url, **kwargs)
        client = cls(connection_pool=pool, **own)
        client.auto_close_connection_pool = True
        return client

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Client:
        kwargs = {**client_kwargs(settings), **kwargs}
        return cls.from_url(settings.redis_url, prefix=settings.prefix, **kwargs)

    @property  # type: ignore[override]
    def enable_postprocess(self) -> bool:
        return not self._state.raw

    @enable_postprocess.setter
    def enable_postprocess(self, value: bool) -> None:
        self._state.raw = not value

    # running ops -----------------------------------------------------------------------------

    def _print(self, command: Any) -> None:
        if self.debug:
            print(command) if isinstance(command, str) else print(*command)

    async def _step(self, step: Any) -> Any:
        if isinstance(step, Commands):
            async with self._batches:
                return await execute_commands(self, step)
        if isinstance(step, Submit):
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
        return str(await self._drive(Op(None, job_ops.queue_plan(self._state, request))))

    async def submit(self, device: str, request: Request) -> str:
        (await self.submit_reply(device, request)).raise_for_status()
        return "OK"

    async def submit_reply(self, device: str, request: Request) -> Reply:
        return await self._jobs.submit(device, request)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self._jobs.close()
        await super().aclose(close_connection_pool)
