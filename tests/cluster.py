"""The test cluster: 3 masters + 3 replicas on free ports (``aiworker.embedded.LocalCluster``,
which ``bench.cluster`` uses too), with helpers to kill a master and wait for its replica's
promotion."""

from typing import Any

from aiworker.embedded import NODE_TIMEOUT_MS, LocalCluster, cluster_port

__all__ = ["NODE_TIMEOUT_MS", "LocalCluster", "WireWrapper", "cluster_port"]


class WireWrapper:
    """A worker thread's job connection whose round trips a test watches or breaks (its
    ``pipeline``, overridden); everything else is the wire's own."""

    def __init__(self, wire: Any) -> None:
        self.wire = wire

    def pipeline(self, commands: Any, routes: Any = None, large: bool = False) -> Any:
        return self.wire.pipeline(commands, routes, large)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wire, name)
