"""What ``aiworker status`` shows and what ``aiworker check`` decides, read from Redis alone.

Workers publish a JSON heartbeat (``Keys.worker(name)``, expiring) every couple of seconds, with a
``healthy`` flag that turns false when one of their threads died. Queue figures come from the
streams themselves: length, the group's pending count and lag, and the dead-letter stream's length.
"""

from __future__ import annotations

import json
import math
import socket
import time
from typing import Any

import redis
from redis.cluster import RedisCluster

from aiworker.protocol.keys import CONSUMER_GROUP, Keys
from aiworker.protocol.text import text
from aiworker.storage import plans
from aiworker.storage.cluster import LOST
from aiworker.storage.plans import AnyRedis, Commands, Plan

# A worker counts as alive until its heartbeat (sent every 2 s) is this old: generous, so that one
# busy loading a large model (a framework holding the interpreter for seconds) is not taken for dead.
LIVE_FOR_S = 12.0


def live_workers_plan(keys: Keys, max_age: float = LIVE_FOR_S) -> Plan[list[dict[str, Any]]]:
    """Heartbeats of worker processes seen within ``max_age`` seconds."""
    names = yield from plans.call("ZRANGEBYSCORE", keys.workers, time.time() - max_age, "+inf")
    return (yield from _statuses(keys, names)) if names else []


def liveness_plan(keys: Keys, max_age: float) -> Plan[tuple[list[dict[str, Any]], bool]]:
    """Heartbeats seen within ``max_age`` seconds, and whether the worker registry exists at all
    (it is gone on a fresh Redis and right after a flush, until a worker beats again)."""
    replies = yield Commands(
        [("ZRANGEBYSCORE", keys.workers, time.time() - max_age, "+inf"), ("EXISTS", keys.workers)]
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    names, registered = replies
    statuses = (yield from _statuses(keys, names)) if names else []
    return statuses, bool(registered)


def _statuses(keys: Keys, names: list[Any]) -> Plan[list[dict[str, Any]]]:
    listed = [text(n) for n in names]
    raws = list((yield from plans.call("MGET", *[keys.worker(n) for n in listed])))
    missing = [n for n, raw in enumerate(raws) if raw is None]
    if missing:  # workers of before the registry's slot publish only there (a rolling upgrade)
        found = yield from plans.call("MGET", *[keys.legacy_worker(listed[n]) for n in missing])
        for n, raw in zip(missing, found, strict=True):
            raws[n] = raw
    statuses = []
    for raw in raws:
        status = heartbeat(raw, keys)
        if status is not None:
            status["age"] = round(time.time() - status["time"], 1)
            statuses.append(status)
    return statuses


# The fields every reader of a heartbeat relies on, and their JSON types.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "devices": list,
    "queues": dict,
    "threads_per_queue": int,
    "models": list,
    "backends": dict,
    "jobs_done": int,
    "healthy": bool,
    "problems": list,
    "time": (int, float),
}


def heartbeat(raw: Any, keys: Keys) -> dict[str, Any] | None:
    """A heartbeat as workers write it, or None for anything else: whoever may write Redis may
    write one, and clients choose the streams they XADD jobs to from it (only the device's own
    queue streams count), ``check`` judges workers by it and ``status`` prints it."""
    try:
        status = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(status, dict) or not all(
        isinstance(status.get(name), kind) for name, kind in _FIELDS.items()
    ):
        return None
    if not math.isfinite(status["time"]) or not all(
        isinstance(item, str)
        for field in ("devices", "models", "problems")
        for item in status[field]
    ):
        return None
    queues = status["queues"]
    for device, streams in queues.items():
        if not isinstance(streams, list) or not all(
            isinstance(stream, str) and _is_queue_of(keys, device, stream) for stream in streams
        ):
            return None
    return status


def _is_queue_of(keys: Keys, device: str, stream: str) -> bool:
    """Whether ``stream`` is one of ``device``'s queue streams (``Keys.queues``: the plain
    queue, or a partition of it: ``<queue>:{tag}``)."""
    first = keys.queue(device)
    if stream == first:
        return True
    tag = stream[len(first) + 2 : -1]
    return (
        stream == f"{first}:{{{tag}}}" and 0 < len(tag) <= 32 and "{" not in tag and "}" not in tag
    )


def live_workers(r: AnyRedis, keys: Keys, max_age: float = LIVE_FOR_S) -> list[dict[str, Any]]:
    """Heartbeats of worker processes seen within ``max_age`` seconds."""
    return plans.run(r, live_workers_plan(keys, max_age))


def queue_status(r: AnyRedis, keys: Keys, device: str, stream: str | None = None) -> dict[str, Any]:
    """Length, pending, lag and consumers of a device queue's stream (default: its plain queue,
    partition 0), and the device's dead letters."""
    queue = stream or keys.queue(device)
    pipe = r.pipeline(transaction=False)
    pipe.xlen(queue)
    pipe.xinfo_groups(queue)
    pipe.xlen(keys.dead_letters(device))
    pipe.get(keys.queue_limit(queue))
    replies = pipe.execute(raise_on_error=False)  # a stream that does not exist is no error
    for reply in replies:
        if isinstance(reply, redis.exceptions.NoPermissionError):
            raise reply  # a denied read is no zero: the error names the permission
    length, groups, dead, limit = replies
    group: dict[str, Any] = {}
    if isinstance(groups, list):
        group = next((g for g in groups if text(g.get("name")) == CONSUMER_GROUP), {})
    length = length if isinstance(length, int) else 0
    lag = group.get("lag")
    return {
        "device": device.upper(),
        "queue": queue,
        "length": length,
        "pending": int(group.get("pending", 0) or 0),
        # Redis 7.0 keeps counting entries deleted before they were read (a job taken back):
        # what is not in the stream is not waiting
        "lag": min(int(lag), length) if lag is not None else None,
        "consumers": int(group.get("consumers", 0) or 0),
        "dead_letters": dead if isinstance(dead, int) else 0,
        # max_queue_length as its workers publish it (0: none)
        "limit": int(limit) if isinstance(limit, bytes | str) and text(limit).isdigit() else 0,
    }


def queue_streams(r: AnyRedis, keys: Keys) -> tuple[list[str], list[str]]:
    """The device queues' streams that exist, and the Redis Cluster masters that could not be
    scanned for them ("host:port": lost, their streams unknown; the others are listed)."""
    pattern = keys.queue("") + "*"
    if not isinstance(r, RedisCluster):
        return [text(s) for s in r.scan_iter(match=pattern, _type="STREAM")], []
    streams: list[str] = []
    unreachable: list[str] = []
    rc: Any = r  # redis-py's cluster client is untyped
    for node in rc.get_primaries():
        try:
            found = node.redis_connection.scan_iter(match=pattern, _type="STREAM")
            streams += [text(s) for s in found]
        except LOST:
            unreachable.append(f"{node.host}:{node.port}")
    return streams, unreachable


def streams_in_use(
    keys: Keys, workers: list[dict[str, Any]], existing: list[str]
) -> dict[str, list[str]]:
    """Device -> the streams of its queue (every partition) that exist (``queue_streams``) or
    that a live worker serves, the plain queue first."""
    found: dict[str, set[str]] = {}
    for name in existing:
        found.setdefault(keys.device_of(name), set()).add(name)
    for status in workers:
        for device in status.get("devices", []):
            found.setdefault(str(device), set()).add(keys.queue(str(device)))
        for device, streams in (status.get("queues") or {}).items():
            found.setdefault(str(device), set()).update(map(str, streams))
    return {
        device: sorted(streams, key=lambda s: (s != keys.queue(device), s))
        for device, streams in sorted(found.items())
        if device
    }


def gather(r: AnyRedis, keys: Keys, max_age: float = LIVE_FOR_S) -> dict[str, Any]:
    """Everything ``aiworker status`` prints: one queue entry per stream (partition). On a Redis
    Cluster with a master lost, what the others hold: its queues' entries say ``error``, and
    ``unreachable`` names the masters whose streams could not be looked for."""
    workers = live_workers(r, keys, max_age)
    existing, unreachable = queue_streams(r, keys)
    streams = streams_in_use(keys, workers, existing)
    return {
        "workers": workers,
        "queues": [
            _queue_or_error(r, keys, device, stream)
            for device, found in streams.items()
            for stream in found
        ],
        "unreachable": unreachable,
    }


def _queue_or_error(r: AnyRedis, keys: Keys, device: str, stream: str) -> dict[str, Any]:
    try:
        return queue_status(r, keys, device, stream)
    except LOST as exc:  # its master is lost (Redis Cluster): the other queues are still shown
        return {"device": device.upper(), "queue": stream, "error": f"unreachable: {exc}"}


def format_status(status: dict[str, Any]) -> list[str]:
    lines = []
    for w in status["workers"]:
        health = "healthy" if w.get("healthy", True) else "UNHEALTHY " + ",".join(w["problems"])
        lines.append(
            f"worker {w['name']}: {health} devices={','.join(w['devices'])} "
            f"threads={w['threads_per_queue']} jobs={w['jobs_done']} "
            f"failed={w.get('jobs_failed', 0)} in_flight={w.get('in_flight', 0)} "
            f"models={len(w['models'])} heartbeat={w['age']}s ago"
        )
    if not status["workers"]:
        lines.append("no live workers")
    for q in status["queues"]:
        if "error" in q:
            lines.append(f"queue {q['queue']}: {q['error']}")
            continue
        limit = q.get("limit", 0)
        fill = f" limit={limit} ({100 * q['length'] // limit}% full)" if limit else ""
        # no lag before a worker made the queue's consumer group (none has served it yet)
        lag, no_group = (q["lag"], "") if q["lag"] is not None else ("-", " (no consumer group)")
        lines.append(
            f"queue {q['queue']}: length={q['length']}{fill} pending={q['pending']} "
            f"lag={lag} consumers={q['consumers']} dead_letters={q['dead_letters']}{no_group}"
        )
    if status.get("unreachable"):
        masters = ", ".join(status["unreachable"])
        lines.append(f"unreachable Redis Cluster masters: {masters} (their queues may be missing)")
    return lines


def check(
    r: AnyRedis,
    keys: Keys,
    device: str = "CPU",
    max_age: float = LIVE_FOR_S,
    worker: str | None = None,
    this_host: bool = False,
) -> tuple[bool, str]:
    """(healthy, explanation): Redis answers and a live, healthy worker serves ``device``.

    ``worker`` narrows the check to one worker process (its ``host:pid`` name); ``this_host`` to
    the workers of this host, as a container health check wants. A Redis that answers but
    refuses the credentials or the command raises: it is not unreachable.
    """
    try:
        r.ping()
    except redis.AuthenticationError:  # reached, and it refused: the caller says so
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return False, f"Redis unreachable: {exc}"
    device = device.upper()
    candidates = [s for s in live_workers(r, keys, max_age) if device in s.get("devices", [])]
    if worker:
        candidates = [s for s in candidates if s.get("name") == worker]
    if this_host:
        host = socket.gethostname()
        candidates = [s for s in candidates if str(s.get("name", "")).startswith(host + ":")]
    if not candidates:
        scope = f"worker {worker}" if worker else "worker on this host" if this_host else "worker"
        return False, f"no live {scope} serves {device} (no heartbeat within {max_age:g}s)"
    sick = [s for s in candidates if not s.get("healthy", True)]
    if len(sick) == len(candidates):
        problems = "; ".join(f"{s['name']}: {', '.join(s.get('problems', []))}" for s in sick)
        return False, problems
    return True, f"{len(candidates) - len(sick)} healthy worker(s) serve {device}"
