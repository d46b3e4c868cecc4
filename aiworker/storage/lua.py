"""Every server-side Lua script aiworker runs lives in ``storage/lua/<name>.lua``; this is the one
loader. Each file starts with a header comment saying its KEYS and ARGV. A line
``-- @include <part>`` is replaced by ``lua/<part>.lua``: code that several scripts share (the
completion's checks and writes) has one source.

Scripts are sent by SHA-1 (EVALSHA) and loaded on the first NOSCRIPT reply, e.g. after a Redis
restart. Every key a script touches is passed in KEYS, so scripts also run on Redis Cluster as long
as those keys share a slot.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

from aiworker.storage.plans import Commands, Plan


class LuaScript:
    """One script: its source, its SHA-1, and a call that loads it when Redis lacks it."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, r: redis.Redis, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run on a client or on a pipeline in WATCH mode (a cluster's too: both take
        ``execute_command``), loading the script on NOSCRIPT."""
        call: Any = r.execute_command  # untyped in redis-py
        try:
            return call("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            call("SCRIPT", "LOAD", self.source)
            return call("EVALSHA", self.sha, len(keys), *keys, *args)

    def load(self, r: Any) -> None:
        """Load the script where ``r`` sends commands: every master of a Redis Cluster. A cluster
        pipeline in WATCH mode cannot send SCRIPT LOAD itself (no key to route it by)."""
        r.execute_command("SCRIPT", "LOAD", self.source)

    def plan(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> Plan[Any]:
        """The same call as a plan step (replies with the error in place, as batches do);
        falls back to EVAL with the source when Redis lacks the script."""
        replies = yield Commands.one("EVALSHA", self.sha, len(keys), *keys, *args)
        if isinstance(replies[0], redis.exceptions.NoScriptError):
            replies = yield Commands.one("EVAL", self.source, len(keys), *keys, *args)
        return replies[0]


_INCLUDE = re.compile(r"^-- @include (\w+)$", re.M)


def _source(name: str) -> str:
    return resources.files("aiworker.storage").joinpath("lua", f"{name}.lua").read_text()


@functools.cache
def load(name: str) -> LuaScript:
    """The script in ``lua/<name>.lua``, its ``-- @include`` lines replaced by the parts."""
    source = _INCLUDE.sub(lambda match: _source(match.group(1)), _source(name))
    return LuaScript(name, source)
