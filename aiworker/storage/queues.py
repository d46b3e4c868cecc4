"""Job queues seen from a client: taking back an entry that no worker has read."""

from __future__ import annotations

from aiworker.protocol.keys import CONSUMER_GROUP
from aiworker.storage import lua
from aiworker.storage.plans import Plan

_WITHDRAW = lua.load("queue_withdraw")


def withdraw_plan(queue_key: str, entry_id: str) -> Plan[int]:
    """Remove the entry if no worker has read it, atomically (``queue_withdraw.lua``): 1 removed
    (it will never run), 0 a worker read it, -1 it is no longer in the stream."""
    reply = yield from _WITHDRAW.plan([queue_key], [entry_id, CONSUMER_GROUP])
    if isinstance(reply, Exception):
        raise reply
    return int(reply)
