"""``aiworker.asyncio.Client``: the client's API as awaitables on ``redis.asyncio``.

    from aiworker.asyncio import Client

    con = Client(host="localhost")
    await con.tensorset("a", np.array([1, 2], np.float32))
    await con.modelexecute("m", ["a", "a"], ["b"])
    outputs = await con.run("m", {"a": x, "b": y}, ["c"])

Many concurrent requests share two connections: one writer pipelines their XADDs, one reader
takes every reply off the client's reply list (see ``aiworker.asyncio.jobs``). On Redis Cluster,
``Client.from_url`` gives an ``aiworker.asyncio.ClusterClient`` (``aiworker.asyncio.cluster``):
the same methods, each job with its reply list in its outputs' hash slot.
"""

from aiworker.asyncio.client import Client
from aiworker.asyncio.cluster import ClusterClient
from aiworker.asyncio.jobs import ClientClosed

__all__ = ["Client", "ClientClosed", "ClusterClient"]
