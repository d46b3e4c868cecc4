"""Server-side Lua scripts: several reads or writes in one command and one round trip.

Scripts are sent by SHA-1 (EVALSHA) and loaded on the first NOSCRIPT reply, e.g. after a Redis
restart. Every key a script touches is passed in KEYS, so scripts also run on Redis Cluster as long
as those keys share a slot (the same rule RedisAI's commands had).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis


class LuaScript:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, r: redis.Redis, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        try:
            return r.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            r.script_load(self.source)
            return r.evalsha(self.sha, len(keys), *keys, *args)
