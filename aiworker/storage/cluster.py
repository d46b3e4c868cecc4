"""Redis Cluster through redis-py's cluster client (``redis.cluster.RedisCluster``): detecting a
cluster, connecting to one, and ``ClusterWire``, what a worker thread's job path talks through
there instead of a ``Wire``.

redis-py's cluster client does the routing: it keeps the slot map, follows MOVED and ASK, and
refreshes its map and retries when a node fails (a failover). ``ClusterWire`` offers what the job
path uses of a ``Wire`` - ``execute``, ``pipeline``, ``evalsha`` with NOSCRIPT handling, plus
``evalsha_many``, several scripts on several nodes in one round trip - and gives back the replies
a ``Wire`` would (RESP2's shapes: XREADGROUP's entries as flat field lists). Whether Redis is a
cluster is decided once, when a worker or client starts (``INFO cluster``); the single-Redis path
is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from aiworker.protocol.keys import key_slot
from aiworker.protocol.text import text
from aiworker.storage.lua import LuaScript

# Errors after which redis-py's cluster client has already refreshed its slot map and retried
# (a failover in progress, a node gone): the job path takes them for a lost connection, so the
# entry stays pending and runs again. ``ClusterWire`` raises them as ``redis.ConnectionError``.
UNAVAILABLE = (redis.exceptions.ClusterError, redis.exceptions.SlotNotCoveredError)
LOST = (redis.ConnectionError, redis.TimeoutError, *UNAVAILABLE)
# Commands that name no key: sent to any node as they are (scripts' ``redis.execute`` asks for
# COMMAND INFO/GETKEYS; PING, ECHO and TIME are allowed there too).
KEYLESS = frozenset({"COMMAND", "PING", "ECHO", "TIME"})

Command = Sequence[Any]


def is_cluster(r: redis.Redis) -> bool:
    """Whether ``r``'s server is a Redis Cluster node (``INFO cluster``: ``cluster_enabled:1``).
    A user whose ACL denies INFO is taken for a single Redis (a cluster user needs ``+info``)."""
    try:
        return bool(r.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:  # NOPERM, or INFO renamed away
        return False


def connect(url: str, **kwargs: Any) -> RedisCluster:
    """A cluster client for ``url`` (any node; the others are discovered). Slots of a failed
    master need not all be served for the others to be used (``require_full_coverage=False``)."""
    kwargs.setdefault("require_full_coverage", False)
    kwargs.pop("retry_on_error", None)  # the cluster client retries lost nodes itself
    return RedisCluster.from_url(url, **kwargs)


def _flat(value: Any) -> Any:
    """A reply redis-py parsed into a mapping, back as RESP2's flat list."""
    if isinstance(value, dict):
        return [item for pair in value.items() for item in pair]
    return value


def _stream_entries(reply: Any) -> list[Any]:
    """XREADGROUP's reply as RESP2 sent it: ``[[stream, [[id, [field, value, ...]], ...]]]``."""
    if isinstance(reply, dict):  # RESP3 shape
        reply = list(reply.items())
    out = []
    for stream, entries in reply or []:
        out.append([stream, [[entry_id, _flat(fields)] for entry_id, fields in entries]])
    return out


def _lost(exc: BaseException) -> redis.ConnectionError:
    return redis.ConnectionError(f"Redis Cluster unavailable: {exc}")


def _executed(pipe: Any) -> list[Any]:
    """A cluster pipeline's replies, errors in place; a node lost raises ConnectionError."""
    try:
        replies = list(pipe.execute(raise_on_error=False))
    except UNAVAILABLE as exc:
        raise _lost(exc) from exc
    for reply in replies:
        if isinstance(reply, LOST):
            raise (
                reply
                if isinstance(reply, redis.ConnectionError | redis.TimeoutError)
                else _lost(reply)
            )
    return replies


class ClusterWire:
    """A worker's job-path connection to a Redis Cluster (see the module docstring). Thread-safe:
    the cluster client keeps a connection pool per node, so all threads share one."""

    cluster = True

    def __init__(self, rc: RedisCluster) -> None:
        self.rc: Any = rc  # redis-py's cluster client is untyped

    def node_of(self, key: str) -> ClusterNode:
        """The master serving ``key``'s slot, from the cluster client's slot map."""
        node: ClusterNode = self.rc.get_node_from_key(key)
        return node

    @staticmethod
    def slot(key: str) -> int:
        return key_slot(key)

    def execute(self, *command: Any) -> Any:
        """Run one command; an error reply raises redis-py's exception for it."""
        try:
            return self._execute(command)
        except UNAVAILABLE as exc:
            raise _lost(exc) from exc

    def _execute(self, command: Command) -> Any:
        name = text(command[0]).upper()
        if name == "XREADGROUP":
            # named node: saves the COMMAND GETKEYS round trip redis-py makes for XREADGROUP
            upper = [text(arg).upper() for arg in command]
            stream = text(command[upper.index("STREAMS") + 1])
            reply = self.rc.execute_command(*command, target_nodes=self.node_of(stream))
            return _stream_entries(reply)
        if name in KEYLESS:
            return self._raw(command)
        return _flat(self.rc.execute_command(*command))

    def _raw(self, command: Command) -> Any:
        """A command that names no key, on any node's connection, with its raw reply (the cluster
        client would parse COMMAND INFO into a mapping)."""
        pool = self.rc.get_default_node().redis_connection.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command(*command)
            return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run commands in one round trip per node; error replies come back in place."""
        pipe = self.rc.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies = _executed(pipe)
        return [_flat(reply) for reply in replies]

    def evalsha(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a Lua script by SHA-1 in its keys' slot, loading it where Redis lacks it."""
        [reply] = self.evalsha_many([(script, keys, args)])
        if isinstance(reply, Exception):
            raise reply
        return reply

    def evalsha_many(
        self,
        calls: Sequence[tuple[LuaScript, Sequence[Any], Sequence[Any]]],
        wait: tuple[int, int] | None = None,
    ) -> list[Any]:
        """Run scripts, each in its keys' slot, in one round trip per node; error replies in
        place. ``wait`` = (replicas, timeout ms): after each script, WAIT on its node's same
        connection, so that its writes reach that many replicas (or the timeout passes)."""
        if not calls:
            return []
        if len(calls) == 1 and wait is None:  # no pipeline machinery for a single script
            return [self._evalsha_one(*calls[0])]
        pipe = self.rc.pipeline(transaction=False)
        for script, keys, args in calls:
            # named node: a cluster pipeline asks Redis for an EVALSHA's keys (COMMAND GETKEYS,
            # a round trip each) unless told where it goes; MOVED still sends it on
            node = self.node_of(text(keys[0]))
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, target_nodes=node)
            if wait is not None:
                pipe.execute_command("WAIT", wait[0], wait[1], target_nodes=node)
        replies = _executed(pipe)
        if wait is not None:
            replies = replies[::2]
        missing = [
            n
            for n, reply in enumerate(replies)
            if isinstance(reply, redis.exceptions.NoScriptError)
        ]
        if missing:  # e.g. a replica promoted, or a restart: load on every master, run again
            for script in {calls[n][0].sha: calls[n][0] for n in missing}.values():
                try:
                    self.rc.execute_command("SCRIPT", "LOAD", script.source)
                except UNAVAILABLE as exc:
                    raise _lost(exc) from exc
            again = self.evalsha_many([calls[n] for n in missing], wait)
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        return list(replies)

    def _evalsha_one(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One script in its keys' slot, the error in place of its reply."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        node = self.node_of(text(keys[0]))
        try:
            try:
                return self.rc.execute_command(*command, target_nodes=node)
            except redis.exceptions.NoScriptError:
                self.rc.execute_command("SCRIPT", "LOAD", script.source)
                return self.rc.execute_command(*command, target_nodes=node)
        except UNAVAILABLE as exc:
            raise _lost(exc) from exc
        except redis.ResponseError as exc:
            return exc

    def close(self) -> None:
        """Nothing of its own to close: the connections belong to the cluster client."""


class ClusterWires:
    """``Wires`` for a cluster: every thread shares one ``ClusterWire``."""

    def __init__(self, rc: RedisCluster | redis.Redis) -> None:
        assert isinstance(rc, RedisCluster)
        self.wire = ClusterWire(rc)

    def get(self) -> ClusterWire:
        return self.wire

    def execute(self, *command: Any) -> Any:
        return self.wire.execute(*command)

    def close(self) -> None:
        self.wire.close()
