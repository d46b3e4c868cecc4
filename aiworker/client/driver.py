"""How a blocking client runs the RedisAI methods' plans (``ops.Op``): shared by ``Client`` (one
Redis) and ``ClusterClient`` (Redis Cluster), which differ only in how a ``Commands`` of Redis
commands is sent (``_send``) and in how jobs are queued and waited for (their ``jobs.Jobs``)."""

from __future__ import annotations

from typing import Any, Protocol

from aiworker.client import job_ops
from aiworker.client.jobs import Jobs
from aiworker.client.ops import Op, Print, State, Submit, VerifyHere, chunk_size_plan, refusal_in
from aiworker.protocol.replies import Reply
from aiworker.protocol.requests import Request
from aiworker.storage.plans import Commands, drive_steps


class WaitsForReplies(Protocol):
    reply_timeout: float | None


class ClientOptions:
    """redisai-py's client options every client (blocking or asyncio, one Redis or a cluster)
    keeps the same way: ``enable_postprocess``, ``reply_timeout`` (its jobs') and ``debug``."""

    _state: State
    _jobs: WaitsForReplies
    debug: bool

    @property
    def enable_postprocess(self) -> bool:
        return not self._state.raw

    @enable_postprocess.setter
    def enable_postprocess(self, value: bool) -> None:
        self._state.raw = not value

    @property
    def reply_timeout(self) -> float | None:
        return self._jobs.reply_timeout

    @reply_timeout.setter
    def reply_timeout(self, value: float | None) -> None:
        self._jobs.reply_timeout = value

    def _print(self, command: Any) -> None:
        if self.debug:
            if isinstance(command, str):
                print(command)
            else:
                print(*command)


class Driver(ClientOptions):
    """Runs ops on a blocking client; the client supplies ``_state``, ``_jobs``, ``debug`` and
    ``_send``."""

    _jobs: Jobs

    def _send(self, commands: Commands) -> list[Any]:
        raise NotImplementedError

    def _step(self, step: Any) -> Any:
        if isinstance(step, Commands):
            return self._send(step)
        if isinstance(step, Submit):
            if step.guard and (refused := refusal_in(self._send(Commands(list(step.guard))))):
                raise refused
            return self._jobs.submit(step.queue, step.request, step.limit)
        if isinstance(step, VerifyHere):
            return step.check()
        if isinstance(step, Print):
            self._print(step.command)
            return None
        raise TypeError(f"unknown plan step {type(step).__name__}")

    def _run(self, op: Op) -> Any:
        if op.command is not None:
            self._print(op.command)
        return drive_steps(op.plan, self._step)

    # jobs (aiworker's own calls) ---------------------------------------------------------------

    def queue_of(self, request: Request) -> str:
        """The device queue ``request`` goes to (its model's or script's device)."""
        return str(self._run(Op(None, job_ops.queue_plan(self._state, request))))

    def submit(self, device: str, request: Request) -> str:
        """Enqueue ``request`` on a device queue and wait for its reply: ``"OK"`` or the error
        (``JobTimedOut`` when its TIMEOUT passed before it ran)."""
        self.submit_reply(device, request).raise_for_status()
        return "OK"

    def submit_reply(self, device: str, request: Request) -> Reply:
        """Like ``submit``, but return the worker's whole reply (a DAG's per-op results)."""
        return self._jobs.submit(device, request)

    def model_chunk_size(self) -> int:
        return int(self._run(Op(None, chunk_size_plan(self._state))))
