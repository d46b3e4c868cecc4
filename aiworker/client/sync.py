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

from aiworker.client.api import AICommands
from aiworker.client.cluster import ClusterClient
from aiworker.client.driver import Driver
from aiworker.client.jobs import Jobs
from aiworker.client.ops import State
from aiworker.client.pipeline import Pipeline
from aiworker.client.waiting import DEFAULT_REPLY_TIMEOUT_S
from aiworker.protocol.keys import DEFAULT_PREFIX, Keys
from aiworker.settings import Settings
from aiworker.storage.cluster import is_cluster
from aiworker.storage.connection import install_packer
from aiworker.storage.plans import Commands, execute_commands
from aiworker.storage.redis_options import client_kwargs, decodes, undecoded_pool
from aiworker.storage.wire import as_exception

# Commands of the hot methods (tensorset, tensorget, model metadata) whose raw replies are the
# ones redis-py returns (HGETALL is turned into its dict), sent without redis-py's machinery.
FAST_COMMANDS = frozenset({"EVALSHA", "HMGET", "HGET", "HGETALL"})
READS = frozenset({"HMGET", "HGET", "HGETALL"})  # of those, the ones sent again on a lost link
# A transaction of only these (a large tensor's staged write) goes on the thread's own connection
# too: their raw replies serve the plans that send them as redis-py's do (PEXPIRE's 1, not True).
FAST_IN_TRANSACTION = frozenset({"EVALSHA", "HMGET", "HGET", "HSET", "DEL", "PEXPIRE"})
OWN_OPTIONS = ("prefix", "reply_timeout", "shared_replies", "debug", "enable_postprocess")


def plain_client(r: redis.Redis) -> redis.Redis:
    """The client aiworker's own commands go through on ``r``'s server, which debug printing does
    not see: on ``r``'s pool, or where ``r`` decodes replies, on an undecoded copy of it (blobs
    and msgpack replies are bytes), closed with it."""
    pool = r.connection_pool
    if not decodes(r):
        return redis.Redis(connection_pool=pool)
    plain = redis.Redis(connection_pool=undecoded_pool(pool, pool.max_connections))
    plain.auto_close_connection_pool = True
    return plain


def _printing(execute: Callable[..., Any]) -> Callable[..., Any]:
    """redisai-py's debug mode: every command printed before it is sent."""

    def wrapper(*args: Any, **options: Any) -> Any:
        print(*args)
        return execute(*args, **options)

    return wrapper


def _answers_cluster(client: Client) -> bool:
    """Whether ``client``'s server says it is a cluster node; one not reachable now is not."""
    try:
        return is_cluster(client._plain)  # aiworker's own question: not printed
    except (redis.ConnectionError, redis.TimeoutError):
        return False


class Client(Driver, AICommands, redis.Redis):
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
        self._plain = plain_client(self)
        self._jobs = Jobs(self._plain, self._state.keyspace, reply_timeout, shared_replies)
        if self.debug:
            self.execute_command = _printing(super().execute_command)  # type: ignore[method-assign]

    @classmethod
    def from_url(  # type: ignore[override]
        cls, url: str, *, cluster: bool | None = None, **kwargs: Any
    ) -> Client | ClusterClient:
        """A client for ``url``; a ``ClusterClient`` when the server is a Redis Cluster node.
        ``cluster``: whether it is, when the caller knows; None asks the server once, on a
        connection the client keeps (``INFO cluster``: a user whose ACL denies INFO, or a
        server that cannot be reached now, gives a ``Client``, which connects when first used)."""
        own = {k: kwargs.pop(k) for k in OWN_OPTIONS if k in kwargs}
        if not cluster:
            pool = redis.ConnectionPool.from_url(url, **kwargs)
            client = cls(connection_pool=pool, **own)
            client.auto_close_connection_pool = True
            if cluster is False or not _answers_cluster(client):
                return client
            client.close()
        own.pop("shared_replies", None)  # a cluster's reply lists live in the outputs' slots
        return ClusterClient.from_url(url, **own, **kwargs)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, cluster: bool | None = None, **kwargs: Any
    ) -> Client | ClusterClient:
        """A client for ``settings.redis_url`` with its prefix and TLS files (``cluster``: as
        for ``from_url``)."""
        kwargs = {**client_kwargs(settings), **kwargs}
        return cls.from_url(settings.redis_url, cluster=cluster, prefix=settings.prefix, **kwargs)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        """A redis-py pipeline that also takes the RedisAI methods (tensorset, tensorget,
        modelexecute, ...), with redisai-py's result shapes."""
        return Pipeline(self, transaction=transaction, shard_hint=shard_hint)

    # running ops -----------------------------------------------------------------------------

    def _send(self, commands: Commands) -> list[Any]:
        if not self.debug:
            if commands.transaction:
                if all(str(c[0]).upper() in FAST_IN_TRANSACTION for c in commands.commands):
                    return self._fast_transaction(commands.commands)
            elif len(commands.commands) == 1:
                command = commands.commands[0]
                if str(command[0]).upper() in FAST_COMMANDS:
                    return [self._fast(command, commands.large)]
        return execute_commands(self._plain, commands)

    def _fast_transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """A MULTI/EXEC on this thread's own connection; each command's reply, or its error in
        place (every command's, when one was refused as it was queued), as ``execute_commands``
        gives them."""
        replies = self._jobs.wires.get().pipeline([("MULTI",), *commands, ("EXEC",)])
        done = replies[-1]
        if isinstance(done, Exception):  # EXECABORT: nothing ran
            return [q if isinstance(q, Exception) else done for q in replies[1:-1]]
        return [as_exception(reply) for reply in done]

    def _fast(self, command: tuple[Any, ...], large: bool = False) -> Any:
        """One command on this thread's own connection (see ``storage.wire``); the error it
        returns in place of a reply, as ``execute_commands`` does. ``large``: a tensor's blob is
        received in place."""
        wire = self._jobs.wires.get()
        try:
            reply = wire.pipeline([command], large=large)[0]
        except redis.ConnectionError:
            if str(command[0]).upper() not in READS:
                raise
            # Redis closed the link since its last use (CLIENT KILL, a restart): a read is safe
            # to send again, on a new connection (redis-py's retry does so for its commands)
            reply = wire.pipeline([command], large=large)[0]
        if isinstance(reply, redis.ResponseError):
            return reply
        if isinstance(reply, Exception):
            raise reply
        if str(command[0]).upper() == "HGETALL":  # redis-py's shape
            return dict(zip(reply[::2], reply[1::2], strict=True))
        return reply

    def close(self) -> None:
        self._jobs.close()
        self._plain.close()
        super().close()
