"""aiworker's exceptions.

Errors that RedisAI reported to its clients as server errors derive from
``redis.exceptions.ResponseError`` so that code written against redisai-py keeps catching them::

    AIWorkerError                          root of everything aiworker raises itself
    ├── ConfigError                        bad settings or config file
    ├── BackendUnavailable                 a backend's framework is not installed (names the extra)
    └── AIError (+ redis ResponseError)    what a RedisAI client saw as ``-ERR ...``
        ├── WrongTypeError                 key holds another kind of value (``WRONGTYPE ...``)
        ├── JobFailed                      a worker ran the job and it failed (the worker's message)
        ├── JobTimedOut                    the job's TIMEOUT passed before it ran (RedisAI's TIMEDOUT)
        │   └── ReplyTimeout               the client stopped waiting for a reply (says what became
        │                                  of the job: removed from its queue, or taken by a worker)
        ├── NoLiveWorker                   no live worker serves the job's queue (heartbeats say so)
        ├── QueueFull                      the job's queue holds max_queue_length jobs: not queued
        └── LimitExceeded                  a tensor or model is larger than the worker's limits

Messages are RedisAI's text as redis-py showed it: without the ``ERR`` prefix (``WRONGTYPE`` stays,
as redis-py keeps it). A framework's own message (onnxruntime's, TensorFlow's, torch's) is a
``BareMessage`` (``AIError(BareMessage(text))``): RedisAI sent those without any error code, and
the gateway does too.
"""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError, ResponseError

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
# Redis's refusal of a write while it is full (maxmemory, noeviction), as RedisAI's deny-oom
# commands answered it: the one text an OOM refusal becomes, whatever it came through (a
# pipeline's annotation, a Lua script's location, a transaction's EXECABORT).
OOM = "OOM command not allowed when used memory > 'maxmemory'."


class BareMessage(str):
    """A message as a framework wrote it, which RedisAI sent without an error code
    (``-No graph was found in the protobuf.``, not ``-ERR ...``); replies flag it
    (``protocol.replies``), the gateway keeps it bare (``protocol.resp.wire_error``)."""

    __slots__ = ()


def message_of(exc: BaseException) -> str:
    """An exception's message, or its type when it has none; a ``BareMessage`` stays one."""
    if isinstance(exc, OutOfMemoryError):
        return OOM
    first = exc.args[0] if len(exc.args) == 1 else None
    if isinstance(first, BareMessage):
        return first
    return str(exc) or type(exc).__name__


class AIWorkerError(Exception):
    """Root of every exception aiworker raises itself."""


class ConfigError(AIWorkerError, ValueError):
    """A setting or config file is invalid."""


class BackendUnavailable(AIWorkerError):
    """A backend's framework cannot be imported; the message names the extra to install."""


class AIError(AIWorkerError, ResponseError):
    """An error RedisAI reported to clients; the message matches RedisAI's where it had one."""


class CountMismatch(AIError):
    """A job named more or fewer inputs or outputs than its model takes. RedisAI refused such a
    job before it ran, so it counts in no model's statistics (AI.INFO)."""


class WrongTypeError(AIError):
    """The key exists but holds something else than the command expects."""

    def __init__(self, message: str = WRONGTYPE) -> None:
        super().__init__(message)


class JobFailed(AIError):
    """A worker ran the job and it failed; the message is the worker's."""


class JobTimedOut(AIError):
    """The job's TIMEOUT passed before a worker could run it (RedisAI replied ``TIMEDOUT``)."""

    def __init__(self, message: str = "TIMEDOUT") -> None:
        super().__init__(message)


class ReplyTimeout(JobTimedOut):
    """The client's wait for a reply ended (TIMEOUT plus a margin, or ``reply_timeout``).
    ``removed``: the entry was taken back before any worker read it, so it will never run."""

    def __init__(self, message: str, removed: bool = False) -> None:
        super().__init__(message)
        self.removed = removed


class NoLiveWorker(AIError):
    """No live worker serves the queue a job went to; ``removed`` as for ``ReplyTimeout``.
    ``unread``: the wait itself took the entry back, unread by any worker (``removed`` also
    covers an entry found gone, which a worker may have run), so sending it again cannot run
    it twice."""

    def __init__(self, message: str, removed: bool = False, unread: bool = False) -> None:
        super().__init__(message)
        self.removed = removed
        self.unread = unread


class QueueFull(AIError):
    """The device queue already holds its workers' ``max_queue_length`` jobs: the request was not
    queued (retry it later, or elsewhere)."""


class RunTimedOut(AIError):
    """A model or script ran longer than MODEL_EXECUTION_TIMEOUT."""


class LimitExceeded(AIError):
    """A tensor or model a job asked for is larger than ``max_tensor_bytes``/``max_model_bytes``."""
