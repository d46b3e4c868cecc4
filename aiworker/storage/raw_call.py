"""One Redis command with its raw reply, as a Redis module saw it (no redis-py reply callbacks:
``SET`` answers ``b"OK"``, not ``True``); errors raise ``ResponseError``. Scripts' ``redis.execute``
calls need exactly this (``backends.base.ScriptContext.redis_call``)."""

from __future__ import annotations

from typing import Any

import redis


def raw_call(r: redis.Redis, *args: Any) -> Any:
    pool = r.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_command(*args)  # type: ignore[no-untyped-call]
        return connection.read_response()
    except (redis.ConnectionError, redis.TimeoutError):
        connection.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(connection)
