"""``Client.pipeline()``: a redis-py pipeline that also takes RedisAI methods.

Each RedisAI method queues exactly one Redis command (so it can sit in a MULTI/EXEC transaction
next to native commands) and a post-processor for its reply:

* ``tensorset``: the type-checking write script (EVAL) -> ``b"OK"`` (redisai-py's pipeline
  returned RedisAI's raw reply here);
* ``tensorget``: HGETALL -> redisai-py's ``tensorget`` result (array, or meta/values dict);
* ``modelget``, ``scriptget``: one hash read -> redisai-py's dicts;
* ``modelexecute``, ``scriptexecute``, ``modelrun``, ``scriptrun``: the job's XADD (the enqueue
  script, within the queue's length limit) -> ``b"OK"`` (or ``b"TIMEDOUT"``) once ``execute`` has
  waited for the worker's reply.

The commands after a job run once its reply came, so they see what it wrote (RedisAI ran a
pipeline's commands one after another, a job blocking the ones behind it): ``execute`` sends the
pipeline in one round trip - one MULTI/EXEC with ``transaction=True`` - per job it holds, each
ending with that job's XADD, plus one for the commands after the last job. A job cannot run
inside a transaction (RedisAI refused it there), so a transaction holding jobs is atomic between
them: a round trip refused whole (EXECABORT) has the error in each of its places and the others
still run (a WATCH covers the first one only: a WatchError there stops the pipeline).

redisai-py's own pipeline offered only ``tensorset`` and ``tensorget``; the rest is aiworker's.
After ``watch`` and before ``multi`` redis-py runs commands at once, and so do these methods,
returning their results (a job's once its reply came). Errors follow redis-py: raised after the
whole pipeline ran (the first one), or left in place with ``execute(raise_on_error=False)``;
RedisAI's errors too, those about a command's values or its model included (redisai-py's own
checks raise as the method is called, as there).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import redis

from aiworker.client import commands, job_ops, raw
from aiworker.client.commands import text
from aiworker.client.ops import Op
from aiworker.client.wait_plan import queue_full_error
from aiworker.parser import parse_command
from aiworker.protocol import tensor as codec
from aiworker.protocol.errors import AIError, NoLiveWorker
from aiworker.storage import lua, tensor_io
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage.queues import enqueue_command, is_full


class Client(Protocol):
    """What the pipeline needs from ``aiworker.Client`` (named here to keep imports one-way)."""

    connection_pool: Any
    response_callbacks: Any
    _state: Any
    _jobs: Any

    @property
    def keyspace(self) -> Any: ...
    def _run(self, op: Op) -> Any: ...
    def model_chunk_size(self) -> int: ...


_WRITE = lua.load("tensor_write")
Post = Callable[[Any], Any]


def _written(reply: Any) -> Any:
    if isinstance(reply, Exception):
        tensor_io.decode_reply(reply)  # WRONGTYPE as ours
        raise reply
    return raw.OK


def _model(meta_only: bool, chunk_size: Callable[[], int], fields: Any) -> Any:
    if isinstance(fields, Exception) or not fields:
        model_store.check_meta_reply(fields if fields else [None] * len(model_store.META_FIELDS))
    named = {text(k): v for k, v in fields.items()}
    meta = model_store.checked_meta([named.get(f) for f in model_store.JOB_FIELDS], listed=True)
    blob: Any = None
    if not meta_only:
        whole = b"".join(named.get(f"chunk:{i}", b"") for i in range(meta.chunks))
        blob = raw.blob_reply(whole, chunk_size())
    return raw.model_result(raw.model_reply(meta, blob))


def _script(meta_only: bool, values: Any) -> Any:
    if isinstance(values, Exception):
        script_store.check_reply(values)
        raise values
    meta = script_store.check_reply(values[:-1])
    return raw.list2dict(raw.script_reply(meta, None if meta_only else text(values[-1])))


class Pipeline(redis.client.Pipeline):
    """redis-py's pipeline plus RedisAI methods (see the module docstring)."""

    def __init__(self, client: Client, transaction: bool = True, shard_hint: Any = None) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._client = client
        self._post: dict[int, Post] = {}
        # index -> device queue, stream, reply list, request
        self._jobs: dict[int, tuple[str, str, str, Any]] = {}
        self._chunk: int | None = None

    def _immediate(self) -> bool:
        """Whether redis-py runs commands at once: after ``watch`` and before ``multi`` (where a
        transaction reads what it will write), a method returns its result, not the pipeline."""
        return bool(self.watching) and not self.explicit_transaction

    def _queue(self, post: Post, *command: Any) -> Any:
        if self._immediate():
            try:
                reply = self.immediate_execute_command(*command)  # type: ignore[no-untyped-call]
            except redis.ResponseError as exc:
                reply = exc
            return post(reply)  # (which raises an error reply)
        self._post[len(self.command_stack)] = post
        self.execute_command(*command)  # type: ignore[no-untyped-call]
        return self

    def reset(self) -> None:  # type: ignore[override]
        super().reset()  # type: ignore[no-untyped-call]
        self._post, self._jobs, self._chunk = {}, {}, None

    def _refused(self, error: redis.ResponseError) -> Any:
        """RedisAI's error for a command it would have refused (its values, a missing model):
        the command's result in ``execute``, as RedisAI answered it there. A PING holds its
        place in the round trip."""
        return self._queue(partial(_raise, error), "PING")

    # tensors -------------------------------------------------------------------------------

    def tensorset(self, key: Any, tensor: Any, shape: Any = None, dtype: Any = None) -> Any:
        try:
            _, array = commands.tensorset(key, tensor, shape, dtype)
        except redis.ResponseError as exc:  # (redisai-py's own checks raise here, as there)
            return self._refused(exc)
        flat: list[Any] = []
        for name, value in codec.encode_fields(array).items():
            flat += [name, value]
        return self._queue(_written, "EVAL", _WRITE.source, 1, text(key), *flat)

    def tensorget(
        self,
        key: Any,
        as_numpy: bool = True,
        as_numpy_mutable: bool = False,
        meta_only: bool = False,
    ) -> Any:
        def post(reply: Any) -> Any:
            array = tensor_io.decode_reply(reply)
            return raw.tensor_result(array, as_numpy, as_numpy_mutable, meta_only)

        return self._queue(post, "HGETALL", text(key))

    # models and scripts --------------------------------------------------------------------

    def modelget(self, key: Any, meta_only: bool = False) -> Any:
        def post(fields: Any) -> Any:
            return _model(meta_only, self._chunk_size, fields)

        return self._queue(post, "HGETALL", text(key))

    def scriptget(self, key: Any, meta_only: bool = False) -> Any:
        fields = (*script_store.META_FIELDS, "source")
        return self._queue(lambda values: _script(meta_only, values), "HMGET", text(key), *fields)

    def _chunk_size(self) -> int:
        if self._chunk is None:
            self._chunk = self._client.model_chunk_size()
        return self._chunk

    # jobs ----------------------------------------------------------------------------------

    def _job(self, tokens: list[Any]) -> Any:
        try:
            request = parse_command([text(t) for t in tokens])
            queue = str(
                self._client._run(
                    Op(None, job_ops.queue_plan(self._client._state, request, strict=True))
                )
            )
        except redis.ResponseError as exc:
            return self._refused(exc)
        reply_key, fields = self._client._jobs.private_entry(request)
        stream = self._client._jobs.stream(queue)
        job = (queue, stream, reply_key, request)
        # within the queue's length limit, like every job (queues.enqueue_command)
        enqueue = enqueue_command(self._client.keyspace, stream, fields)
        if self._immediate():
            try:
                entry_id = self.immediate_execute_command(*enqueue)  # type: ignore[no-untyped-call]
            except redis.ResponseError as exc:
                entry_id = exc
            return _now(self._wait(job, entry_id))
        self._jobs[len(self.command_stack)] = job
        self.execute_command(*enqueue)  # type: ignore[no-untyped-call]
        return self

    def modelexecute(self, key: Any, inputs: Any, outputs: Any, timeout: Any = None) -> Any:
        return self._job(commands.modelexecute(key, inputs, outputs, timeout))

    def modelrun(self, key: Any, inputs: Any, outputs: Any) -> Any:
        return self._job(commands.modelrun(key, inputs, outputs))

    def scriptexecute(
        self,
        key: Any,
        function: Any,
        keys: Any = None,
        inputs: Any = None,
        args: Any = None,
        outputs: Any = None,
        timeout: Any = None,
    ) -> Any:
        return self._job(
            commands.scriptexecute(key, function, keys, inputs, args, outputs, timeout)
        )

    def scriptrun(self, key: Any, function: Any, inputs: Any, outputs: Any) -> Any:
        return self._job(commands.scriptrun(key, function, inputs, outputs))

    # running -------------------------------------------------------------------------------

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, post, jobs = self.command_stack, self._post, self._jobs
        ends = [index + 1 for index in sorted(jobs)]  # each round trip ends with a job's XADD
        if not ends or ends[-1] < len(stack):
            ends.append(len(stack))
        results: list[Any] = []
        start = 0
        explicit = self.explicit_transaction  # multi() on a transaction=False pipeline
        try:
            for end in ends:
                self.command_stack = stack[start:end]
                self.explicit_transaction = explicit  # (each execute resets the pipeline)
                try:
                    results += super().execute(raise_on_error=False)
                except redis.WatchError:
                    raise  # the first round trip, nothing of it applied: the caller retries
                except redis.ResponseError as exc:  # EXECABORT: nothing of this one ran
                    results += [exc] * (end - start)
                for index in range(start, end):
                    if index in post:
                        results[index] = _applied(post[index], results[index])
                    elif index in jobs:
                        results[index] = self._wait(jobs[index], results[index])
                start = end
        finally:
            self.reset()
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    def _wait(self, job: tuple[str, str, str, Any], entry_id: Any) -> Any:
        """A job's result once its reply came (its XADD's reply: ``entry_id``)."""
        queue, stream, reply_key, request = job
        if isinstance(entry_id, Exception):
            return queue_full_error(queue, entry_id) if is_full(entry_id) else entry_id
        state, key = self._client._state, request.runs_on()[1]
        try:
            reply = self._client._jobs.wait_private(
                queue, stream, text(entry_id), reply_key, request
            )
        except NoLiveWorker as exc:  # the cached device may be stale: read it again next time
            state.forget(key, queue)
            return exc
        except (redis.RedisError, AIError) as exc:
            return exc
        state.followed(key, queue, reply.queue)  # a worker's forward: go there next time
        try:
            return raw.simple(reply.raise_for_status(timedout_ok=True), True)
        except (redis.RedisError, AIError) as exc:
            return exc


def _raise(error: Exception, reply: Any) -> Any:
    raise error


def _now(result: Any) -> Any:
    """The result of a job run at once (``Pipeline._immediate``): an error is raised."""
    if isinstance(result, Exception):
        raise result
    return result


def _applied(function: Post, reply: Any) -> Any:
    try:
        return function(reply)
    except (redis.RedisError, AIError) as exc:
        return exc
