"""``aiworker.asyncio.Client``: the client's API as awaitables on ``redis.asyncio``.

    from aiworker.asyncio import Client

    con = Client(host="localhost")
    await con.tensorset("a", np.array([1, 2], np.float32))
    await con.modelexecute("m", ["a", "a"], ["b"])
    outputs = await con.run("m", {"a": x, "b": y}, ["c"])

Many concurrent requests share two connections: one writer pipelines their XADDs, one reader
takes every reply off the client's reply list (see ``aiworker.asyncio.jobs``).
"""

from aiworker.asyncio.client import Client

__all__ = ["Client"]
