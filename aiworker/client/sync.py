"""``aiworker.Client``: redisai-py's API on stock Redis (a ``redis.Redis`` subclass).

``Client(debug=False, enable_postprocess=True, *args, **kwargs)`` as redisai-py: the first
positional argument is ``debug``, the rest go to ``redis.Redis``. Tensors, models and statistics
are plain hash reads and writes; ``modelexecute`` and friends append a job to the model's device
stream and wait for the worker's reply (``jobs.Jobs``). Errors RedisAI reported as server errors
raise ``ResponseError`` subclasses with RedisAI's messages; redisai-py's own checks raise its
``ValueError``/``TypeError``/``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from aiworker.client import job_ops
from aiworker.client.api import AICommands
from aiworker.client.jobs import Jobs
from aiworker.client.ops import Op, Print, State, Submit, VerifyHere, chunk_size_plan
from aiworker.client.pipeline import Pipeline
from aiworker.client.verify import verify_model
from aiworker.client.waiting import DEFAULT_REPLY_TIMEOUT_S
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.protocol.replies import raise_for_reply
from aiworker.protocol.requests import Request
from aiworker.settings import Settings
from aiworker.storage.connection import install_packer
from aiworker.storage.plans import Batch, execute_batch
from aiworker.storage.redis_options import client_kwargs

# Commands of the hot methods (tensorset, tensorget, model metadata) whose raw replies are the
# ones redis-py returns (HGETALL is turned into its dict), sent without redis-py's machinery.
FAST_COMMANDS = frozenset({"EVALSHA", "HMGET", "HGET", "HGETALL"})
OWN_OPTIONS = ("prefix", "reply_timeout", "shared_replies", "debug", "enable_postprocess")


def _printing(execute: Callable[..., Any]) -> Callable[..., Any]:
    """redisai-py's debug mode: every command printed before it is sent."""

    def wrapper(*args: Any, **options: Any) -> Any:
        print(*args)
        return execute(*args, **options)

    return wrapper


class Client(AICommands, redis.Redis):
    """Drop-in for ``redisai.Client``: every redis-py command plus the RedisAI methods.

    ``debug`` prints each command as redisai-py did; ``enable_postprocess=False`` returns RedisAI's
    raw replies. ``prefix`` names aiworker's own keys (it must match the workers');
    ``reply_timeout`` (seconds) bounds the wait for a job without TIMEOUT (None: no limit);
    ``shared_replies`` makes all threads' jobs share one reply list and one reader thread (see
    ``jobs``).
    """

    def __init__(
        self,
        debug: Any = False,
        enable_postprocess: bool = True,
        *args: Any,
        prefix: str = DEFAULT_PREFIX,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT_S,
        shared_replies: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        install_packer(self)
        self.debug = bool(debug)
        self._state = State(Keys(prefix), raw=not enable_postprocess)
        plain = redis.Redis(connection_pool=self.connection_pool)
        self._jobs = Jobs(plain, self._state.keyspace, reply_timeout, shared_replies)
        if self.debug:
            self.execute_command = _printing(super().execute_command)  # type: ignore[method-assign]

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Client:  # type: ignore[override]
        own = {k: kwargs.pop(k) for k in OWN_OPTIONS if k in kwargs}
        pool = redis.ConnectionPool.from_url(url, **kwargs)
        client = cls(connection_pool=pool, **own)
        client.auto_close_connection_pool = True
        return client

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Client:
        """A client for ``settings.redis_url`` with its prefix and TLS files."""
        kwargs = {**client_kwargs(settings), **kwargs}
        return cls.from_url(settings.redis_url, prefix=settings.prefix, **kwargs)

    @property  # type: ignore[override]
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

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        """A redis-py pipeline that also takes the RedisAI methods (tensorset, tensorget,
        modelexecute, ...), with redisai-py's result shapes."""
        return Pipeline(self, transaction=transaction, shard_hint=shard_hint)

    # running ops -----------------------------------------------------------------------------

    def _print(self, command: Any) -> None:
        if self.debug:
            if isinstance(command, str):
                print(command)
            else:
                print(*command)

    def _step(self, step: Any) -> Any:
        if isinstance(step, Batch):
            if len(step.commands) == 1 and not step.transaction and not self.debug:
                command = step.commands[0]
                if str(command[0]).upper() in FAST_COMMANDS:
                    return [self._fast(command)]
            return execute_batch(self, step)
        if isinstance(step, Submit):
            return self._jobs.submit(step.queue, step.request, step.limit)
        if isinstance(step, VerifyHere):
            return verify_model(step.backend, step.blob, step.inputs, step.outputs, step.batchsize)
        if isinstance(step, Print):
            self._print(step.command)
            return None
        raise TypeError(f"unknown plan step {type(step).__name__}")

    def _fast(self, command: tuple[Any, ...]) -> Any:
        """One command on this thread's own connection (see ``storage.wire``); the error it
        returns in place of a reply, as ``execute_batch`` does."""
        try:
            reply = self._jobs.wires.get().execute(*command)
        except redis.ResponseError as exc:
            return exc
        if str(command[0]).upper() == "HGETALL":  # redis-py's shape
            return dict(zip(reply[::2], reply[1::2], strict=True))
        return reply

    def _run(self, op: Op) -> Any:
        if op.command is not None:
            self._print(op.command)
        plan = op.plan
        try:
            step = next(plan)
            while True:
                try:
                    result = self._step(step)
                except Exception as exc:
                    step = plan.throw(exc)
                    continue
                step = plan.send(result)
        except StopIteration as stop:
            return stop.value

    # jobs (aiworker's own calls) ---------------------------------------------------------------

    def queue_of(self, request: Request) -> str:
        """The device queue ``request`` goes to (its model's or script's device)."""
        return str(self._run(Op(None, job_ops.queue_plan(self._state, request))))

    def submit(self, device: str, request: Request) -> str:
        """Enqueue ``request`` on a device queue and wait for its reply: ``"OK"`` or the error."""
        return raise_for_reply(self.submit_reply(device, request))

    def submit_reply(self, device: str, request: Request) -> dict[str, Any]:
        """Like ``submit``, but return the worker's whole reply (a DAG's per-op results)."""
        return self._jobs.submit(device, request)

    def model_chunk_size(self) -> int:
        return int(self._run(Op(None, chunk_size_plan(self._state))))

    def close(self) -> None:
        self._jobs.close()
        super().close()
