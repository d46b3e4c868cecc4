"""The script methods (SCRIPTSTORE, SCRIPTGET, SCRIPTDEL) as ``ops.Op`` plans."""

from __future__ import annotations

from typing import Any

from aiworker.client import commands, raw
from aiworker.client.commands import text
from aiworker.client.job_ops import verify_script_plan
from aiworker.client.ops import Op, State, writable_plan
from aiworker.storage import model as model_store
from aiworker.storage import script as script_store
from aiworker.storage.plans import Plan


def scriptstore(
    state: State,
    key: Any,
    device: str,
    script: Any,
    entry_points: Any,
    tag: Any = None,
    legacy: bool = False,
    client_checks: bool = True,
) -> Op:
    """AI.SCRIPTSTORE (``legacy``: the deprecated AI.SCRIPTSET, without entry points). The
    source is compiled and its entry points checked first, as RedisAI did: here where torch is
    installed, else by a live worker serving the device (``job_ops.verify_script_plan``).
    ``client_checks``: redisai-py's own checks of the arguments apply (not to a RedisAI command
    as a client sent it, which the store's checks alone judge, as RedisAI did)."""
    if legacy:
        tokens = commands.scriptset(key, device, script, tag, check_device=client_checks)
    else:
        tokens = commands.scriptstore(key, device, script, entry_points, tag)

    def plan() -> Plan[Any]:
        names = [] if legacy else commands.listify(entry_points)
        device_name, source, points = script_store.validate(device, script, names, legacy)
        tag_text = model_store.stored_text("TAG", tag) if tag else ""
        yield from verify_script_plan(state, text(key), device_name, source, points)
        yield from writable_plan(text(key), script_store.KIND_SCRIPT)
        yield from script_store.store_plan(
            state.keyspace, text(key), device_name, source, points, tag_text
        )
        state.remember(text(key), device_name)
        return state.ok()

    return Op(tokens, plan())


def scriptget(state: State, key: Any, meta_only: bool = False) -> Op:
    """AI.SCRIPTGET: ``device``, ``tag``, ``entry points`` (as RedisAI named it) and ``source``."""

    def plan() -> Plan[Any]:
        meta, source = yield from script_store.read_script_plan(text(key))
        reply = raw.script_reply(meta, None if meta_only else source)
        return reply if state.raw else raw.list2dict(reply)

    return Op(commands.scriptget(key, meta_only), plan())


def scriptdel(state: State, key: Any) -> Op:
    def plan() -> Plan[Any]:
        yield from script_store.delete_plan(state.keyspace, text(key))
        state.remember(text(key), None)
        return state.ok()

    return Op(["AI.SCRIPTDEL", key], plan())
