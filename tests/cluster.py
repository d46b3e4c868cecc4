"""The test cluster: 3 masters + 3 replicas on free ports (``aiworker.embedded.LocalCluster``,
which ``bench.cluster`` uses too), with helpers to kill a master and wait for its replica's
promotion, and to move a hash slot from one master to another step by step."""

from __future__ import annotations

from typing import Any

from aiworker.embedded import NODE_TIMEOUT_MS, LocalCluster, cluster_port
from aiworker.protocol.keys import key_slot

__all__ = ["NODE_TIMEOUT_MS", "LocalCluster", "SlotMigration", "WireWrapper", "cluster_port"]


class WireWrapper:
    """A worker thread's job connection whose round trips a test watches or breaks (its
    ``pipeline``, overridden); everything else is the wire's own."""

    def __init__(self, wire: Any) -> None:
        self.wire = wire

    def pipeline(
        self, commands: Any, routes: Any = None, large: bool = False, retry: bool = True
    ) -> Any:
        return self.wire.pipeline(commands, routes, large, retry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wire, name)


class SlotMigration:
    """Resharding one hash slot as ``redis-cli --cluster reshard`` does, a step at a time:
    ``begin`` (SETSLOT IMPORTING on the target, MIGRATING on the source), ``move`` some of its
    keys (MIGRATE), then ``finish`` (the rest, and SETSLOT NODE on every master). In between,
    the slot is mid-migration: a command on keys split between the two nodes gets TRYAGAIN."""

    def __init__(self, cluster: LocalCluster, key: str, target: int | None = None) -> None:
        self.cluster = cluster
        self.slot = key_slot(key)
        self.source = cluster.master_of(key)
        self.target = target or next(p for p in cluster.master_ports() if p != self.source)

    def _node(self, port: int) -> Any:
        node: Any = self.cluster.node(port)  # execute_command is untyped in redis-py
        return node

    def _id(self, port: int) -> str:
        found = self._node(port).execute_command("CLUSTER", "MYID")
        return found.decode() if isinstance(found, bytes) else str(found)

    def begin(self) -> SlotMigration:
        slot, target = self.slot, self._node(self.target)
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self._id(self.source))
        self._node(self.source).execute_command(
            "CLUSTER", "SETSLOT", slot, "MIGRATING", self._id(self.target)
        )
        return self

    def keys_left(self) -> list[str]:
        """The slot's keys still on the source."""
        found = self._node(self.source).execute_command(
            "CLUSTER", "GETKEYSINSLOT", self.slot, 100_000
        )
        return [k.decode() if isinstance(k, bytes) else str(k) for k in found]

    def move(self, keys: list[str]) -> None:
        """MIGRATE ``keys`` (those still on the source) to the target."""
        left = set(self.keys_left())
        chosen = [key for key in keys if key in left]
        if chosen:
            self._node(self.source).execute_command(
                "MIGRATE", "127.0.0.1", self.target, "", 0, 5000, "KEYS", *chosen
            )

    def finish(self) -> None:
        """Move the keys left, then give the slot to the target (SETSLOT NODE: the target first,
        then the source, then the other masters, as redis-cli does)."""
        self.move(self.keys_left())
        target_id = self._id(self.target)
        others = [p for p in self.cluster.master_ports() if p not in (self.source, self.target)]
        for port in [self.target, self.source, *others]:
            self._node(port).execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
