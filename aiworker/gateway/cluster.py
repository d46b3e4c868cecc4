"""Cluster-shaped replies and the slot map the gateway routes by. Mostly pure code.

* ``emulated_reply``: CLUSTER SLOTS/SHARDS/NODES/INFO/MYID/KEYSLOT, READONLY, READWRITE and
  ASKING answered as a cluster of one shard that owns every slot at the gateway's own address, so
  cluster-mode clients (SmartRedis defaults to it) talk to the gateway as they would to a cluster.
* ``SlotMap``: which master serves each slot of a real Redis Cluster (CLUSTER SLOTS, read again
  after a MOVED), and ``command_keys``: the keys of a command (from Redis' COMMAND table), so the
  gateway sends each command to the master of its first key's slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import redis
import redis.asyncio

from aiworker.protocol.keys import SLOTS, key_slot
from aiworker.protocol.text import text

from . import resp

log = logging.getLogger("aiworker.gateway")

Node = tuple[str, int]
# How long a master whose connection failed is passed over for commands without a key (the first
# master the map names took them all: one lost for good took every client's CLIENT SETINFO, PING
# ... with it, and every client with them).
DOWN_S = 10.0


def node_id(host: str, port: int) -> str:
    """A stable 40-hex-digit node id for the gateway at ``host:port``."""
    return hashlib.sha1(f"aiworker-gateway {host}:{port}".encode()).hexdigest()


def _info(host: str, port: int) -> bytes:
    lines = [
        "cluster_enabled:1",
        "cluster_state:ok",
        f"cluster_slots_assigned:{SLOTS}",
        f"cluster_slots_ok:{SLOTS}",
        "cluster_slots_pfail:0",
        "cluster_slots_fail:0",
        "cluster_known_nodes:1",
        "cluster_size:1",
        "cluster_current_epoch:1",
        "cluster_my_epoch:1",
        "cluster_stats_messages_sent:0",
        "cluster_stats_messages_received:0",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


# The commands a one-shard cluster answers.
EMULATED = (b"READONLY", b"READWRITE", b"ASKING", b"CLUSTER")


def emulated_reply(args: list[bytes], host: str, port: int, resp3: bool = False) -> bytes | None:
    """The reply of a one-shard cluster at ``host:port`` (in RESP3 if ``resp3``), or None for
    commands it leaves to Redis."""
    name = args[0].upper()
    if name in EMULATED[:3]:
        return resp.OK
    if name != b"CLUSTER" or len(args) < 2:
        return None
    sub = args[1].upper()
    ident = node_id(host, port)
    address = host.encode()
    if sub == b"SLOTS":
        return resp.encode([[0, SLOTS - 1, [address, port, ident.encode(), []]]])
    if sub == b"SHARDS":  # maps in RESP3, arrays of names and values in RESP2
        node = {b"id": ident.encode(), b"port": port, b"ip": address, b"endpoint": address}
        node |= {b"role": b"master", b"replication-offset": 0, b"health": b"online"}
        return resp.encode([{b"slots": [0, SLOTS - 1], b"nodes": [node]}], resp3)
    if sub == b"NODES":
        line = (
            f"{ident} {host}:{port}@{port + 10000} myself,master - 0 0 1 connected 0-{SLOTS - 1}\n"
        )
        return resp.encode(line.encode())
    if sub == b"INFO":
        return resp.encode(_info(host, port))
    if sub == b"MYID":
        return resp.encode(ident.encode())
    if sub == b"KEYSLOT" and len(args) == 3:
        return resp.encode(key_slot(args[2]))
    return resp.encode(
        resp.ErrorReply(
            f"Unknown subcommand or wrong number of arguments for '{sub.decode(errors='replace')}'."
            " The aiworker gateway answers CLUSTER SLOTS, SHARDS, NODES, INFO, MYID and KEYSLOT"
        )
    )


# routing on a real cluster ---------------------------------------------------------------------

_SCRIPTS = {b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"}
_STREAMS = {b"XREAD", b"XREADGROUP"}


def command_keys(table: dict[bytes, tuple[int, int, int]], args: list[bytes]) -> list[bytes]:
    """The keys of a command: positions from Redis' COMMAND table, numkeys for scripts and
    functions, what follows STREAMS for XREAD; empty for keyless commands."""
    name = args[0].upper()
    if name in _SCRIPTS:
        if len(args) < 3 or not args[2].isdigit():
            return []
        return args[3 : 3 + int(args[2])]
    if name in _STREAMS:
        words = [arg.upper() for arg in args]
        if b"STREAMS" not in words:
            return []
        rest = args[words.index(b"STREAMS") + 1 :]
        return rest[: len(rest) // 2]
    spec = table.get(name)
    if spec is None or spec[0] <= 0:
        return []
    first, last, step = spec
    last = last if last >= 0 else len(args) + last
    return args[first : last + 1 : max(step, 1)]


class SlotMap:
    """The masters of a real Redis Cluster by slot, and its COMMAND key positions."""

    def __init__(self, seed: redis.asyncio.Redis) -> None:
        self.seed = seed
        self.slots: list[Node | None] = [None] * SLOTS
        self.nodes: list[Node] = []
        self.keys: dict[bytes, tuple[int, int, int]] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._down: dict[Node, float] = {}  # masters whose connection failed, and when

    async def load(self) -> None:
        commands: Any = await self.seed.execute_command("COMMAND")  # type: ignore[no-untyped-call]
        for name, info in commands.items():
            first, last, step = info["first_key_pos"], info["last_key_pos"], info["step_count"]
            self.keys[str(name).upper().encode()] = (int(first), int(last), int(step))
        await self.refresh()

    async def refresh(self) -> None:
        """Read the map from the seed, or where it cannot answer (it failed over, it is gone)
        from the masters last known, as a cluster client does."""
        try:
            slots: Any = await self.seed.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as lost:
            slots = await self._ask_known_nodes(lost)
        self._take(slots)

    async def _ask_known_nodes(self, lost: Exception) -> Any:
        seed = self.seed.connection_pool
        for host, port in self.nodes:
            pool = redis.asyncio.ConnectionPool(  # the seed's settings (TLS, user) at that node
                connection_class=seed.connection_class,
                **{**seed.connection_kwargs, "host": host, "port": port},
            )
            try:
                node = redis.asyncio.Redis(connection_pool=pool)
                return await node.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                continue
            finally:
                await pool.disconnect()
        raise lost

    def _take(self, slots: Any) -> None:
        table: list[Node | None] = [None] * SLOTS
        nodes: list[Node] = []
        for (start, end), info in _slot_ranges(slots):
            node = (info[0], int(info[1]))
            if node not in nodes:
                nodes.append(node)
            for n in range(start, end + 1):
                table[n] = node
        self.slots, self.nodes = table, nodes

    def refresh_soon(self) -> None:
        """Read the map again (after a MOVED, or a master that could not be reached), once
        however many ask."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the next MOVED asks again
            log.warning("cluster slot map not refreshed: %s", exc)

    def node_of(self, key: bytes) -> Node:
        return self.slots[key_slot(key)] or self.default()

    def down(self, node: Node) -> None:
        """A connection to ``node`` failed: pass it over in ``default`` for ``DOWN_S``."""
        self._down[node] = time.monotonic()

    def default(self) -> Node:
        """A master for a command without a key, or a key whose slot the map lacks: the first
        the map names whose connection did not fail lately (else the first), else the seed (a
        cluster whose slots are not assigned yet answers CLUSTERDOWN itself, and MOVED once
        they are: the map is read again)."""
        if self.nodes:
            if self._down:
                now = time.monotonic()
                for node in self.nodes:
                    if now - self._down.get(node, now - DOWN_S) >= DOWN_S:
                        return node
            return self.nodes[0]
        seed = self.seed.connection_pool.connection_kwargs
        return str(seed.get("host", "127.0.0.1")), int(seed.get("port", 6379))


def _slot_ranges(slots: Any) -> list[tuple[tuple[int, int], list[Any]]]:
    """CLUSTER SLOTS as redis-py parses it (a dict of ranges) or as a raw list."""
    out = []
    if isinstance(slots, dict):
        for (start, end), info in slots.items():
            primary = info["primary"]
            out.append(((int(start), int(end)), [text(primary[0]), primary[1]]))
        return out
    for entry in slots:
        out.append(((int(entry[0]), int(entry[1])), [text(entry[2][0]), entry[2][1]]))
    return out


def redirect_target(data: bytes) -> tuple[bool, Node] | None:
    """(ask, node) of a ``-MOVED slot host:port`` or ``-ASK slot host:port`` reply, else None."""
    if not (data.startswith(b"-MOVED ") or data.startswith(b"-ASK ")):
        return None
    parts = data[1:].strip().split()
    if len(parts) != 3:
        return None
    host, _, port = parts[2].decode(errors="replace").rpartition(":")
    return parts[0] == b"ASK", (host, int(port))
