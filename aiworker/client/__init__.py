"""The client side: redisai-py's API on stock Redis."""

from aiworker.client.cluster import ClusterClient
from aiworker.client.sync import Client

__all__ = ["Client", "ClusterClient"]
