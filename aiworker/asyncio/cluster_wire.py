"""``AsyncClusterWire``: the asyncio client's job path on Redis Cluster, what
``storage.cluster.ClusterWire`` is to the blocking one.

Each command goes to the master of its key's hash slot, by the slot cache of the client's
``redis.asyncio.cluster.RedisCluster`` (its topology, refreshed as redis-py refreshes it); a round
trip sends to every node it needs before it reads from any, follows MOVED (the command sent again
where it says, the slot map fetched again) and ASK, and when a node is lost, or the cluster cannot
serve a slot now (a failover), fetches the map again and raises ``storage.cluster.NodeLost`` with what the
nodes that answered said: a command they ran is not to be sent again. Connections are the wire's
own, one per command round in flight on a node and reused after it (a job waiting for its reply
holds one, as a blocking thread does), so that no pool limit fails a burst of waiting jobs.
Replies come undecoded, as a ``Wire``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError, SlotNotCoveredError, TryAgainError

from aiworker.storage.cluster import (
    NOT_NOW,
    REFRESH_MIN_S,
    NodeLost,
    Redirections,
    command_key,
    cover_async,
    slot_migrating,
    slot_of,
)

Address = tuple[str, int]
Command = Sequence[Any]
_PENDING = object()  # a command not answered yet
# What a lost link raises: redis-py's errors, or the OS's under them.
_LINK_LOST = (redis.ConnectionError, redis.TimeoutError, OSError)


class Masters:
    """The masters of the client's slot cache, as ``client.placement.Topology`` asks for them."""

    def __init__(self, rc: RedisCluster) -> None:
        self.rc = rc

    @property
    def known(self) -> bool:
        return bool(self.rc.nodes_manager.slots_cache)

    def address(self, slot: int) -> Address:
        try:
            node = self.rc.nodes_manager.get_node_from_slot(slot)
        except SlotNotCoveredError as exc:
            raise redis.ConnectionError(f"Redis Cluster unavailable: {exc}") from exc
        return (node.host, int(node.port))


class AsyncClusterWire:
    """See the module docstring. Any number of tasks may use one at once."""

    def __init__(self, rc: RedisCluster, max_connections: int | None = None) -> None:
        """``max_connections``: at most that many connections to a node (a round trip beyond
        them waits for one to be free); None: as many as round trips in flight."""
        self.rc = rc
        self.masters = Masters(rc)
        self.max_connections = max_connections
        self.closes = 0  # how many times ``close`` ran (the jobs waiting then end)
        self._turns: dict[Address, asyncio.Semaphore] = {}
        self._free: dict[Address, list[Connection]] = {}
        self._all: set[Connection] = set()
        self._closing: set[asyncio.Task[Any]] = set()
        self._refreshed = -REFRESH_MIN_S

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands``, each on the master of its key's slot, one round trip per node;
        error replies come back in place (see the module docstring)."""
        await cover_async(self.rc)  # the map read (first use, a hole, a refresh due)
        replies: list[Any] = [_PENDING] * len(commands)
        todo = list(range(len(commands)))
        asking: dict[int, Address] = {}
        moved_to: dict[int, Address] = {}  # sent again where MOVED said, until the map is new
        # TRYAGAIN (a resharding split a command's keys): sent again after a pause, as the
        # blocking job path does
        redirections = Redirections()
        while True:
            try:
                by_node: dict[Address, list[int]] = {}
                for n in todo:
                    address = asking.get(n) or moved_to.get(n) or self._address(commands[n])
                    by_node.setdefault(address, []).append(n)
            except redis.ConnectionError as exc:  # a slot without a master: the map is read
                await self._lost(exc, replies, refresh=False)  # again at ``cover``'s pace
            rounds = [
                self._round(a, commands, members, asking, replies) for a, members in by_node.items()
            ]
            losses = [await rounds[0]] if len(rounds) == 1 else await asyncio.gather(*rounds)
            trouble: Exception | None = next((loss for loss in losses if loss is not None), None)
            todo, moved, refused = [], False, None
            for members in by_node.values():
                for n in members:
                    reply = replies[n]
                    if isinstance(reply, MovedError):  # (an AskError too)
                        moved_to[n] = self._remap(reply)
                        asking.pop(n, None)
                        moved = True
                    elif isinstance(reply, AskError):
                        asking[n] = self._remap(reply)
                    elif isinstance(reply, TryAgainError):
                        refused = reply
                    elif isinstance(reply, NOT_NOW):
                        trouble = trouble or reply
                    else:
                        continue
                    replies[n] = _PENDING
                    todo.append(n)
            if trouble is not None:  # a node lost, a failover under way: learn the new map
                await self._lost(trouble, replies)
            if not todo:
                return replies
            if moved:  # a failover or a resharding moves many slots: learn them all at once
                await self._refresh()
            pause = redirections.pause_after(refused)
            if pause is None:
                assert refused is not None
                kept = [None if reply is _PENDING else reply for reply in replies]
                raise slot_migrating(refused, kept)
            if pause:
                await asyncio.sleep(pause)

    def _address(self, command: Command) -> Address:
        key = command_key(command)
        if key is None:
            node = self.rc.get_default_node()
            return (node.host, int(node.port))
        return self.masters.address(slot_of(key))

    def _remap(self, redirect: AskError) -> Address:
        host, port = self.rc.nodes_manager.remap_host_port(redirect.host, redirect.port)
        return (host, int(port))

    async def _refresh(self) -> None:
        """Fetch the slot map again (redis-py's ``NodesManager.initialize``: CLUSTER SLOTS from
        the first node that answers), unless a task did within ``REFRESH_MIN_S``; a cluster
        that cannot answer now leaves the map as it was (the caller's error says so)."""
        if time.monotonic() - self._refreshed < REFRESH_MIN_S:
            return
        self._refreshed = time.monotonic()
        with contextlib.suppress(redis.RedisError, OSError):
            await self.rc.nodes_manager.initialize()

    async def _lost(self, error: Exception, replies: list[Any], refresh: bool = True) -> NoReturn:
        if refresh:
            await self._refresh()
        kept = [None if reply is _PENDING else reply for reply in replies]
        raise NodeLost(f"Redis Cluster unavailable: {error}", kept)

    async def _round(
        self,
        address: Address,
        commands: Sequence[Command],
        members: list[int],
        asking: dict[int, Address],
        replies: list[Any],
    ) -> Exception | None:
        """One node's part of a round trip: its replies go into ``replies`` (by position).
        Returns the error of the link lost meanwhile; the commands it left unanswered, and those
        it answered with an error (a redirection may be among them), stay pending."""
        if self.max_connections is None:
            return await self._round_on(address, commands, members, asking, replies)
        turn = self._turns.get(address)
        if turn is None:
            turn = self._turns[address] = asyncio.Semaphore(self.max_connections)
        async with turn:
            return await self._round_on(address, commands, members, asking, replies)

    async def _round_on(
        self,
        address: Address,
        commands: Sequence[Command],
        members: list[int],
        asking: dict[int, Address],
        replies: list[Any],
    ) -> Exception | None:
        batch: list[Command] = []
        for n in members:  # ASK: that command only, on that node, after ASKING
            batch += [("ASKING",), commands[n]] if n in asking else [commands[n]]
        connection = await self._take(address)
        read: list[int] = []
        try:
            await connection.send_packed_command(connection.pack_commands(batch), False)
            for n in members:
                if n in asking:
                    await _read(connection)
                replies[n] = await _read(connection)
                read.append(n)
        except _LINK_LOST as exc:
            for n in read:
                if isinstance(replies[n], Exception):
                    replies[n] = _PENDING
            self._discard(connection)
            return exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))
        except BaseException:  # cancelled mid-round: the link is out of step with its replies
            self._discard(connection)
            raise
        if connection in self._all:
            self._free.setdefault(address, []).append(connection)
        else:  # the wire was closed meanwhile: not to be used again
            self._discard(connection)
        return None

    async def _take(self, address: Address) -> Connection:
        """A free connection to ``address`` that its server has not closed meanwhile (an idle
        client ``timeout``, a CLIENT KILL: the round trip would be lost), else a new one."""
        free = self._free.get(address)
        while free:
            kept = free.pop()
            try:
                closed = await _can_read(kept)  # EOF, or stray bytes
            except _LINK_LOST:
                closed = True
            except BaseException:
                self._discard(kept)
                raise
            if not closed:
                return kept
            self._discard(kept)
        node = self.rc.nodes_manager.get_node(host=address[0], port=address[1])
        node = node or self.rc.get_default_node()  # an ASK target not known yet: same options
        kwargs = {**node.connection_kwargs, "host": address[0], "port": address[1]}
        # no retries below: the wire says what was answered, its caller decides what to resend
        kwargs["retry"] = Retry(NoBackoff(), 0)
        connection: Connection = node.connection_class(**kwargs)
        self._all.add(connection)
        return connection

    def _discard(self, connection: Connection) -> None:
        self._all.discard(connection)
        task = asyncio.ensure_future(connection.disconnect(nowait=True))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every connection, those that jobs wait on too (see ``closes``)."""
        self.closes += 1
        connections, self._all, self._free = list(self._all), set(), {}
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.disconnect()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _can_read(connection: Connection) -> Awaitable[bool]:
    """Whether a connection has anything to read (redis-py 8's ``can_read``; before it,
    ``can_read_destructive``)."""
    check: Callable[[], Awaitable[bool]] = getattr(
        connection, "can_read", connection.can_read_destructive
    )
    return check()


async def _read(connection: Connection) -> Any:
    try:
        return await connection.read_response(disable_decoding=True)
    except redis.ResponseError as exc:
        return exc
