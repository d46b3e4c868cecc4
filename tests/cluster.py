"""The test cluster: 3 masters + 3 replicas on free ports (``aiworker.embedded.LocalCluster``,
which ``bench.cluster`` uses too), with helpers to kill a master and wait for its replica's
promotion."""

from aiworker.embedded import NODE_TIMEOUT_MS, LocalCluster, cluster_port

__all__ = ["NODE_TIMEOUT_MS", "LocalCluster", "cluster_port"]
