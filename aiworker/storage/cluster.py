"""Redis Cluster: detecting a cluster, connecting to one, and ``ClusterWire``, what a thread's job
path (a worker's reads and completions, a client's job round trip) talks through there.

Off the job path, redis-py's cluster client (``redis.cluster.RedisCluster``) serves: models,
recovery, heartbeats, the client's API. On it, redis-py's client costs about 175 us of CPU a
command; a ``ClusterWire`` instead holds one hiredis ``Wire`` per master (per thread), routes each
command to the master of its key's hash slot by a slot map the process' connections share
(``SlotMap``, from CLUSTER SLOTS), sends to every node of a round trip before it reads from any,
follows MOVED (the map is refreshed) and ASK, and on a lost node refreshes the map so that the
next call reaches the promoted replica. Replies have RESP2's shapes, as a ``Wire``'s.

While a slot is resharded (MIGRATING on its master, IMPORTING on the next) a script whose keys are
split between the two, or new to both, is refused with TRYAGAIN: the commands so refused are sent
again after a pause, with backoff, for up to ``TRYAGAIN_WAIT_S``; then ``SlotMigrating`` (a
``NodeLost``: the job path leaves its entries pending, to run again later). A slot answered with
ASK or TRYAGAIN is remembered for a while as migrating (``SlotMap.migrating``): a script loaded
after NOSCRIPT is loaded on the node ASK named, where the call ran.

A slot no master serves (CLUSTER DELSLOTS, a node removed with its slots) drops out of a slot
map when it is read; nothing would read the map again on a quiet cluster, so a map that lacks a
slot is read again before a call, at most once per ``UNCOVERED_REFRESH_S`` (``cover`` for
redis-py's maps, used by ``Cluster``, the plans and the asyncio client; ``SlotMap.cover``).
A master a call's retries could not reach (lost with no replica to promote) counts as
unreachable until it answers a PING, tried every ``PROBE_EVERY_S`` by a thread of the map's own
(``SlotMap.lost``): the job path sets aside the jobs that need it (``ClusterWire.unreachable``)
instead of waiting out the retries again.

Whether Redis is a cluster is decided once, when a worker or client starts (``INFO cluster``);
``job_connections`` then gives the job path a ``Wire`` or a ``ClusterWire`` per thread, and no
caller asks again: a single Redis is the one-slot case (``Wire.slot`` is always 0).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from aiworker.protocol.errors import AIWorkerError
from aiworker.protocol.keys import SLOTS, key_slot
from aiworker.protocol.text import text
from aiworker.storage.wire import (
    Command,
    JobConnection,
    JobConnections,
    Wire,
    Wires,
    as_exception,
    transactions,
)

log = logging.getLogger("aiworker")

# Errors after which redis-py's cluster client has already refreshed its slot map and retried
# (a failover in progress, a node gone): the job path takes them for a lost connection, so the
# entry stays pending and runs again. A ``ClusterWire`` raises ``redis.ConnectionError`` for them.
# redis-py 8's error for a map refresh that reached no node (none in older releases): like
# SlotNotCoveredError, a RedisClusterException but no RedisError.
_UNREACHABLE = getattr(
    redis.exceptions, "RedisClusterUnreachableError", redis.exceptions.SlotNotCoveredError
)
UNAVAILABLE = (redis.exceptions.ClusterError, redis.exceptions.SlotNotCoveredError, _UNREACHABLE)
LOST = (redis.ConnectionError, redis.TimeoutError, *UNAVAILABLE)
# What a call on redis-py's client raises when Redis failed it: its SlotNotCoveredError (a slot
# no master serves) and RedisClusterUnreachableError are no RedisError.
REDIS_FAILURES = (redis.RedisError, redis.exceptions.SlotNotCoveredError, _UNREACHABLE)
# Replies that say the cluster cannot serve the slot right now (a failover, a migration).
NOT_NOW = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
)
# Redirections followed within one call before giving up (a slot moving back and forth).
MAX_REDIRECTS = 5
# TRYAGAIN (a resharding has split a multi-key command's keys): the pause before sending it again,
# doubling up to the cap, and the longest a round trip waits for the slot's keys to be together.
TRYAGAIN_FIRST_S = 0.02
TRYAGAIN_CAP_S = 0.5
TRYAGAIN_WAIT_S = 10.0
# A slot answered with ASK or TRYAGAIN counts as migrating for this long after the last one.
MIGRATING_MEMORY_S = 30.0
# A slot map refreshed this recently is not fetched again (another thread just did it).
REFRESH_MIN_S = 0.05
# A master a call's retries could not reach counts as unreachable until it answers a PING,
# tried this often on a connection of its own (``SlotMap``'s prober thread), each try waiting at
# most PROBE_TIMEOUT_S: jobs that need it are set aside without a round trip meanwhile
# (``Lane``; they wait for their reclaim anyway), and no job path waits on the try.
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 1.0
# A slot map that lacks a slot (no master served it when it was read) is read again at most this
# often, whoever asks: nothing else would read it (a command for a slot missing from the map is
# never sent, so no MOVED comes). A slot served again is used within about as long; one that
# stays unserved costs, per this long, one CLUSTER SLOTS a ``SlotMap`` and one a node for
# redis-py's map (it asks every node for a map that serves every slot).
UNCOVERED_REFRESH_S = 1.0
# Commands whose key is not their first argument.
SCRIPT_CALLS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
STREAM_READS = frozenset({"XREAD", "XREADGROUP"})
KEY_AFTER_SUBCOMMAND = frozenset({"XINFO", "XGROUP", "OBJECT", "MEMORY"})

Address = tuple[str, int]


def is_cluster(r: redis.Redis) -> bool:
    """Whether ``r``'s server is a Redis Cluster node (``INFO cluster``: ``cluster_enabled:1``).
    A user whose ACL denies INFO is taken for a single Redis (a cluster user needs ``+info``)."""
    try:
        return bool(r.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:  # NOPERM, or INFO renamed away
        return False


# The oldest redis-py whose cluster clients serve aiworker (pyproject.toml's floor; an environment
# may hold an older one against it): a transaction in a cluster pipeline needs 6.2, and on 6.2-7.0
# a worker's model reads failed (the cluster tests pass on 7.1 and later).
CLUSTER_REDIS_PY = (7, 1)


def require_cluster_support(version: str = redis.__version__) -> None:
    """An error naming the redis-py to install, on one too old for Redis Cluster."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:  # a development build: take it as new enough
        return
    if found < CLUSTER_REDIS_PY:
        wanted = ".".join(map(str, CLUSTER_REDIS_PY))
        raise AIWorkerError(
            f"Redis Cluster needs redis-py {wanted} or newer (this is {version}): "
            f"pip install 'redis>={wanted}'"
        )


def connect(url: str, **kwargs: Any) -> RedisCluster:
    """A cluster client for ``url`` (any node; the others are discovered). Slots of a failed
    master need not all be served for the others to be used (``require_full_coverage=False``)."""
    require_cluster_support()
    kwargs.setdefault("require_full_coverage", False)
    kwargs.pop("retry_on_error", None)  # the cluster client retries lost nodes itself
    found: RedisCluster = Cluster.from_url(url, **kwargs)
    return found


def no_slot_served() -> redis.ConnectionError:
    """The error for a cluster in which no master serves a slot (one not set up yet)."""
    return redis.ConnectionError(
        "Redis Cluster serves no hash slot: no master has slots assigned (a cluster not set up "
        "yet? redis-cli --cluster create)"
    )


class Coverage:
    """When a slot map with a hole is read again: at most once per ``UNCOVERED_REFRESH_S``, by
    the first caller past it; the others, in any thread, go on with the map as it is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0

    def due(self) -> bool:
        """Whether the map is to be read now (the caller reads it)."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return False
            self._next = now + UNCOVERED_REFRESH_S
            return True


# redis-py's cluster clients (blocking or asyncio) -> their slot map's ``Coverage``
_coverages: weakref.WeakKeyDictionary[Any, Coverage] = weakref.WeakKeyDictionary()
_coverages_lock = threading.Lock()


def uncovered_due(rc: Any) -> bool:
    """Whether the slot map of redis-py's cluster client ``rc`` (blocking or asyncio) lacks a
    slot and is due to be read again (``Coverage``): the caller then reads it."""
    if len(rc.nodes_manager.slots_cache) >= SLOTS:  # the common case: every slot served
        return False
    with _coverages_lock:
        coverage = _coverages.get(rc)
        if coverage is None:
            coverage = _coverages[rc] = Coverage()
    return coverage.due()


def cover(rc: RedisCluster) -> None:
    """Read the slot map of ``rc`` again if it lacks a slot, at most once per
    ``UNCOVERED_REFRESH_S``: a slot no master served for a while is used again once one does.
    A cluster that cannot answer now leaves the map as it was."""
    if uncovered_due(rc):  # (IndexError: redis-py's reading of a map without a master)
        with contextlib.suppress(redis.RedisError, RedisClusterException, IndexError):
            rc.nodes_manager.initialize()


async def cover_async(rc: Any) -> None:
    """``cover`` for redis-py's asyncio cluster client, which reads its map on first use (at
    once once it knows it, or is due a refresh of its own)."""
    try:
        await rc.initialize()
    except IndexError:  # redis-py's reading of a map without a master
        raise no_slot_served() from None
    if uncovered_due(rc):
        with contextlib.suppress(redis.RedisError, RedisClusterException, OSError, IndexError):
            await rc.nodes_manager.initialize()


class Cluster(RedisCluster):
    """redis-py's cluster client, its slot map read again (``cover``) before a command or a
    pipeline while the map lacks a slot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        except IndexError:  # redis-py's reading of a map without a master
            raise no_slot_served() from None

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        cover(self)
        return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        cover(self)
        return super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]


def job_connections(r: Any, retry: Retry | None = None) -> JobConnections:
    """The job path's connections for a client of either kind: a ``Wire`` per thread on a single
    Redis, a ``ClusterWire`` per thread on a cluster. ``retry``: how a lost connection is ridden
    out (None: not at all, the caller decides)."""
    if isinstance(r, RedisCluster):
        return ClusterWires(r, retry)
    return Wires(r.connection_pool, retry)


def command_key(command: Command) -> Any:
    """The key a command is routed by (None: it names none). A guess is harmless: the node that
    does not serve the key's slot answers MOVED, which is followed."""
    if len(command) < 2:
        return None
    name = command[0]
    name = (name if isinstance(name, str) else text(name)).upper()
    if name in SCRIPT_CALLS:
        return command[3] if int(command[2]) > 0 else None
    if name in STREAM_READS:
        if command[-3] == "STREAMS":  # one stream, as the job path reads: no scan
            return command[-2]
        for n, arg in enumerate(command):
            if isinstance(arg, str | bytes) and text(arg).upper() == "STREAMS":
                return command[n + 1] if n + 1 < len(command) else None
        return None
    if name in KEY_AFTER_SUBCOMMAND:  # XINFO GROUPS <key>, XGROUP CREATE <key> ...
        return command[2] if len(command) > 2 else None
    return command[1]


def slot_of(key: Any) -> int:
    """A key's hash slot, whatever type it was given as."""
    return key_slot(key if isinstance(key, str | bytes) else str(key))


class SlotMap:
    """Which master serves each hash slot, shared by a process' ``ClusterWire``s; refreshed from
    CLUSTER SLOTS when a node is lost or a slot has moved."""

    def __init__(self, rc: RedisCluster) -> None:
        client: Any = rc  # redis-py's cluster client is untyped
        # connection settings (AUTH, TLS, timeouts) for every node: the default node's
        self.pool: redis.ConnectionPool = client.get_default_node().redis_connection.connection_pool
        self._seeds: list[Address] = [(n.host, int(n.port)) for n in client.get_nodes()]
        self._masters: list[Address | None] = []
        self._refreshed = -REFRESH_MIN_S
        self._lock = threading.Lock()
        self.holes = False  # whether a slot had no master when the map was read
        self._coverage = Coverage()
        # slot -> (the node ASK named, or None; when last seen): slots being resharded
        self._migrating: dict[int, tuple[Address | None, float]] = {}
        self._unreachable: set[Address] = set()  # masters whose round trips failed (``lost``)
        self._prober: threading.Thread | None = None  # tries them while there are any
        self._probing = threading.Lock()

    @property
    def known(self) -> bool:
        return bool(self._masters)

    def address(self, slot: int) -> Address:
        """The master of ``slot``; ConnectionError when no node serves it."""
        masters = self._masters
        found = masters[slot] if masters else None
        if found is None:
            raise redis.ConnectionError(f"Redis Cluster unavailable: no master serves slot {slot}")
        return found

    def lost(self, address: Address) -> None:
        """A call's retries could not reach ``address``: it counts as unreachable until a PING
        of the prober's gets an answer from it (or it serves no slot any more)."""
        with self._probing:
            self._unreachable.add(address)
            if self._prober is None:
                self._prober = threading.Thread(
                    target=self._probe, name="aiworker-cluster-probe", daemon=True
                )
                self._prober.start()

    def reached(self, address: Address) -> None:
        if self._unreachable:
            self._unreachable.discard(address)

    @property
    def degraded(self) -> bool:
        """Whether a master is unreachable (a slot without a master is no reason to set its
        jobs aside: a round trip reads the map again, ``cover``)."""
        return bool(self._unreachable)

    def cut_off(self, address: Address) -> bool:
        """Whether ``address`` is a master the retries could not reach, not answering since."""
        return address in self._unreachable

    def _probe(self) -> None:
        """The prober thread: tries each unreachable master every ``PROBE_EVERY_S`` until none
        is left (a job path that tried it itself waited out a call's retries, ~12 s, with every
        job read beside it)."""
        try:
            while True:
                time.sleep(PROBE_EVERY_S)
                masters = set(self._masters)
                for address in list(self._unreachable):
                    if address not in masters or answers_ping(self.pool, address):
                        self._unreachable.discard(address)
                with self._probing:
                    if not self._unreachable:
                        self._prober = None
                        return
        except Exception:  # never leave masters cut off with nobody trying them
            log.exception("cluster probe failed: unreachable masters are tried by jobs again")
            with self._probing:
                self._unreachable.clear()
                self._prober = None

    def any(self) -> Address:
        """A master, for a command that names no key."""
        masters = self._masters
        found = next((a for a in masters if a is not None), None) if masters else None
        if found is None:
            raise redis.ConnectionError("Redis Cluster unavailable: no master known")
        return found

    def moved(self, slot: int, address: Address) -> None:
        if self._masters:
            self._masters[slot] = address
        self._migrating.pop(slot, None)  # its migration is over

    def migrating_to(self, slot: int, target: Address | None = None) -> None:
        """``slot`` is being resharded (an ASK naming ``target``, or a TRYAGAIN)."""
        known = self._migrating.get(slot)
        if target is None and known is not None:
            target = known[0]
        self._migrating[slot] = (target, time.monotonic())

    def migrating(self, slot: int) -> bool:
        """Whether ``slot`` was answered with ASK or TRYAGAIN lately."""
        found = self._migrating.get(slot)
        return found is not None and time.monotonic() - found[1] < MIGRATING_MEMORY_S

    def importing(self, slot: int) -> Address | None:
        """The node a migrating ``slot``'s keys go to, as ASK named it."""
        found = self._migrating.get(slot)
        return found[0] if found is not None and self.migrating(slot) else None

    def refresh(self, ask: Callable[[Address], Any], force: bool = False) -> None:
        """Fetch the map from the first node that answers (the known masters, then the nodes
        known at start); skipped when another thread has just done it, unless ``force``."""
        with self._lock:
            if not force and time.monotonic() - self._refreshed < REFRESH_MIN_S:
                return
            known = list(dict.fromkeys([a for a in self._masters if a is not None] + self._seeds))
            error: Exception | None = None
            for address in known:
                try:
                    reply = ask(address)
                except redis.RedisError as exc:
                    error = exc
                    continue
                self._masters = _masters_of(reply, address[0])
                self.holes = None in self._masters
                self._seeds = list(dict.fromkeys(self._seeds + [a for a in self._masters if a]))
                self._refreshed = time.monotonic()
                return
            raise redis.ConnectionError(f"Redis Cluster unavailable: no node answered ({error})")

    def cover(self, ask: Callable[[Address], Any]) -> None:
        """Read the map again if it lacks a slot, at most once per ``UNCOVERED_REFRESH_S``
        (``Coverage``); a cluster that cannot answer now leaves it as it was."""
        if self.holes and self._coverage.due():
            with contextlib.suppress(redis.ConnectionError):
                self.refresh(ask, force=True)


def _masters_of(reply: Any, asked_host: str) -> list[Address | None]:
    """CLUSTER SLOTS as a list of 16384 masters (None: the slot is not served)."""
    masters: list[Address | None] = [None] * SLOTS
    for row in reply:
        start, end, master = int(row[0]), int(row[1]), row[2]
        host = text(master[0]) or asked_host  # an empty host: the node asked
        for slot in range(start, end + 1):
            masters[slot] = (host, int(master[1]))
    return masters


_PENDING = object()  # a command not answered yet


class NodeLost(redis.ConnectionError):
    """A round trip that reached only some of the cluster: ``replies`` holds what the nodes that
    answered said (a command they ran is not to be sent again), None for the others."""

    def __init__(self, message: str, replies: list[Any]) -> None:
        super().__init__(message)
        self.replies = [None if reply is _PENDING else reply for reply in replies]


class SlotMigrating(NodeLost):
    """TRYAGAIN for longer than ``TRYAGAIN_WAIT_S``: a resharding left the keys of a command split
    between two masters (the job path treats it as a lost node: nothing it refused was written)."""


def slot_migrating(refused: Exception, replies: list[Any]) -> SlotMigrating:
    return SlotMigrating(
        f"TRYAGAIN: a resharding keeps the keys of a command split between two masters (their "
        f"hash slot is being migrated) after {TRYAGAIN_WAIT_S:g} s of retries ({refused})",
        replies,
    )


class Redirections:
    """How long one call goes on after redirections (the blocking and the asyncio job path's):
    at most ``MAX_REDIRECTS`` rounds in a row, and while a resharding refuses it with TRYAGAIN,
    pauses doubling from ``TRYAGAIN_FIRST_S`` to ``TRYAGAIN_CAP_S``, for ``TRYAGAIN_WAIT_S``."""

    def __init__(self) -> None:
        self.redirects = 0
        self.pause = TRYAGAIN_FIRST_S
        self.deadline = time.monotonic() + TRYAGAIN_WAIT_S

    def pause_after(self, refused: Exception | None) -> float | None:
        """The pause before the next round (0: none) after one that redirected, or that TRYAGAIN
        ``refused``; None: TRYAGAIN past the deadline. Too many redirections in a row raise."""
        if refused is None:
            self.redirects += 1
            if self.redirects > MAX_REDIRECTS:
                raise redis.ConnectionError("Redis Cluster unavailable: too many redirections")
            return 0.0
        pause = self.pause
        if time.monotonic() + pause > self.deadline:
            return None
        self.pause, self.redirects = min(pause * 2, TRYAGAIN_CAP_S), 0
        return pause


def answers_ping(pool: redis.ConnectionPool, address: Address) -> bool:
    """Whether the node at ``address`` answers a PING within ``PROBE_TIMEOUT_S``, on a
    connection of its own made with ``pool``'s settings (AUTH, TLS). An error reply is an
    answer; one still loading its data (LOADING) is not."""
    settings = {
        **pool.connection_kwargs,
        "host": address[0],
        "port": address[1],
        "socket_timeout": PROBE_TIMEOUT_S,
        "socket_connect_timeout": PROBE_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }
    connection = pool.connection_class(**settings)
    try:
        connection.send_command("PING")
        connection.read_response()
    except redis.ResponseError:
        return True
    except (redis.RedisError, OSError):
        return False
    finally:
        connection.disconnect()
    return True


class ClusterWire:
    """One thread's job-path connection to a Redis Cluster: a ``Wire`` per master (see the module
    docstring). Not thread-safe, as a ``Wire``."""

    def __init__(self, slots: SlotMap, retry: Retry | None = None) -> None:
        self._slots = slots
        self._wires: dict[Address, Wire] = {}
        self._retry = retry
        self._failing: set[Address] = set()  # nodes a call failed to reach (see ``pipeline``)

    one_slot = False

    @staticmethod
    def slot(key: Any) -> int:
        return slot_of(key)

    def migrating(self, slot: int) -> bool:
        return self._slots.migrating(slot)

    def node(self, key: Any) -> Address | None:
        """The master serving ``key`` as the map says (None: none does)."""
        try:
            return self._slots.address(slot_of(key))
        except redis.ConnectionError:
            return None

    @property
    def degraded(self) -> bool:
        return self._slots.degraded

    def unreachable(self, key: Any) -> bool:
        address = self.node(key)
        return address is None or self._slots.cut_off(address)

    def execute(self, *command: Any) -> Any:
        """Run one command; an error reply raises redis-py's exception for it."""
        reply = self.pipeline([command])[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def pipeline(
        self,
        commands: Sequence[Command],
        routes: Any = None,
        large: bool = False,
        retry: bool = True,
    ) -> list[Any]:
        """Run commands, each on the master of its key's slot (or of ``routes[n]``, a key, for
        commands that name none: SCRIPT LOAD, WAIT), one round trip per node; error replies
        come back in place. A lost node or a cluster that cannot serve a slot raises
        ``NodeLost`` (a ConnectionError) once ``retry`` gives up (at once with ``retry``
        False); commands answered before are not sent again. ``large``: as for
        ``Wire.pipeline`` (on one node; redirected ones read them as any reply)."""
        self._slots.cover(self._ask_slots)
        replies: list[Any] = [_PENDING] * len(commands)
        split: list[Exception] = []  # TRYAGAIN past TRYAGAIN_WAIT_S (not a lost link to retry)
        self._failing.clear()
        try:
            if not self._on_one_node(commands, routes, replies, large):
                self._attempt(commands, routes, replies, split)
        except (redis.ConnectionError, redis.TimeoutError):
            if self._retry is None or not retry:
                raise
            try:
                self._retry.call_with_retry(
                    lambda: self._covered_attempt(commands, routes, replies, split),
                    lambda error: None,
                )
            except (redis.ConnectionError, redis.TimeoutError):
                for address in self._failing:  # not reached with every retry: known lost
                    self._slots.lost(address)
                raise
        if split:
            raise slot_migrating(split[0], replies)
        return replies

    def post(self, commands: Sequence[Command]) -> None:
        """``Wire.post``, each command to the master of its key's slot (a redirection or a lost
        node drops it: best effort)."""
        for command in commands:
            try:
                self._wire(self._address(command, None)).post([command])
            except redis.RedisError:
                continue

    def close(self) -> None:
        wires, self._wires = list(self._wires.values()), {}
        for wire in wires:
            wire.close()

    def _wire(self, address: Address) -> Wire:
        wire = self._wires.get(address)
        if wire is None:
            wire = self._wires[address] = Wire(self._slots.pool, address=address)
        return wire

    def _ask_slots(self, address: Address) -> Any:
        return self._wire(address).execute("CLUSTER", "SLOTS")

    def _address(self, command: Command, route: Any) -> Address:
        key = route if route is not None else command_key(command)
        if key is None:
            return self._slots.any()
        slot = slot_of(key)
        if route is not None and _loads_script(command):  # where an ASK made the call run
            target = self._slots.importing(slot)
            if target is not None:
                return target
        return self._slots.address(slot)

    def _on_one_node(
        self, commands: Sequence[Command], routes: Any, replies: list[Any], large: bool = False
    ) -> bool:
        """The common case without the machinery of ``_attempt``: every command for one node,
        none redirected. False when that is not the case: nothing was sent, or the commands
        redirected (MOVED, ASK, a failover) are left pending in ``replies``."""
        slots = self._slots
        if not slots.known:
            return False
        address = None
        for n, command in enumerate(commands):
            found = self._address(command, routes[n] if routes else None)
            if address is None:
                address = found
            elif found != address:
                return False
        assert address is not None
        wire = self._wire(address)
        got: list[Any] = []
        try:
            wire.send(commands)
            wire.receive(len(commands), got, large)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._failing.add(address)
            _answered(replies, range(len(commands)), got)
            self._refresh_quietly()
            raise NodeLost(f"Redis Cluster unavailable: {exc}", replies) from exc
        self._reached(address)
        done, moved = True, False
        for n, reply in enumerate(got):
            if isinstance(reply, hiredis.ReplyError):
                reply = as_exception(reply)
                if isinstance(reply, (redis.exceptions.AskError, *NOT_NOW)):
                    if isinstance(reply, redis.exceptions.MovedError):
                        slots.moved(reply.slot_id, (reply.host, reply.port))
                        moved = True
                    done = False
                    continue
            replies[n] = reply
        if moved:  # a failover or a resharding moves many slots: learn them all at once
            self._refresh_quietly()
        return done

    def _attempt(
        self, commands: Sequence[Command], routes: Any, replies: list[Any], split: list[Exception]
    ) -> None:
        """Send what is not answered yet in ``replies``, following redirections; what TRYAGAIN
        refuses is sent again after a pause, until ``TRYAGAIN_WAIT_S`` has passed (then its
        error goes to ``split`` and it is left pending)."""
        if not self._slots.known:
            self._slots.refresh(self._ask_slots, force=True)
        blocks = transactions(commands)
        todo = _whole(blocks, [n for n, reply in enumerate(replies) if reply is _PENDING], replies)
        asking: dict[int, Address] = {}
        redirections = Redirections()
        while todo:
            by_node: dict[Address, list[int]] = {}
            for n in todo:
                address = asking.get(n) or self._address(commands[n], routes[n] if routes else None)
                by_node.setdefault(address, []).append(n)
            trouble, errors = self._round(commands, by_node, asking, replies)
            todo, moved = [], False
            refused: Exception | None = None
            for n in errors:
                reply = replies[n]
                if isinstance(reply, redis.exceptions.MovedError):  # (an AskError too)
                    self._slots.moved(reply.slot_id, (reply.host, reply.port))
                    asking.pop(n, None)
                    moved = True
                elif isinstance(reply, redis.exceptions.AskError):
                    target = (reply.host, reply.port)
                    self._slots.migrating_to(reply.slot_id, target)
                    if _within(blocks, n):  # a transaction is sent whole, to the slot's owner,
                        refused = reply  # once the migration moved on (ASKING is per command)
                    else:
                        asking[n] = target
                elif isinstance(reply, redis.exceptions.TryAgainError):
                    refused = reply
                    self._slots.migrating_to(self._slot_of(commands[n], routes, n))
                elif isinstance(reply, NOT_NOW):
                    trouble = trouble or reply
                    replies[n] = _PENDING
                    continue
                else:
                    continue
                replies[n] = _PENDING
                todo.append(n)
            todo = _whole(blocks, todo, replies)  # a command of a MULTI never goes alone
            if trouble is not None:  # a node lost, a failover under way: learn the new map
                self._refresh_quietly()
                raise NodeLost(f"Redis Cluster unavailable: {trouble}", replies)
            if moved:  # a failover or a resharding moves many slots: learn them all at once
                self._refresh_quietly()
            pause = redirections.pause_after(refused)  # TRYAGAIN: the migration moves on
            if pause is None:
                assert refused is not None
                split.append(refused)
                return
            if pause:
                time.sleep(pause)

    def _covered_attempt(
        self, commands: Sequence[Command], routes: Any, replies: list[Any], split: list[Exception]
    ) -> None:
        """``_attempt`` after ``SlotMap.cover``: a call riding out an unserved slot uses it
        once it is served again, not only once its retries are spent."""
        self._slots.cover(self._ask_slots)
        self._attempt(commands, routes, replies, split)

    def _reached(self, address: Address) -> None:
        """A round trip to ``address`` went through: it is not lost (see ``pipeline``)."""
        self._failing.discard(address)
        self._slots.reached(address)

    def _slot_of(self, command: Command, routes: Any, n: int) -> int:
        key = routes[n] if routes and routes[n] is not None else command_key(command)
        return slot_of(key) if key is not None else -1

    def _refresh_quietly(self) -> None:
        # no node answers now: the caller's error says the cluster is unavailable
        with contextlib.suppress(redis.ConnectionError):
            self._slots.refresh(self._ask_slots)

    def _round(
        self,
        commands: Sequence[Command],
        by_node: dict[Address, list[int]],
        asking: dict[int, Address],
        replies: list[Any],
    ) -> tuple[Exception | None, list[int]]:
        """One round trip: send to every node, then read every node's replies into ``replies``
        (by position). Returns the error of a node lost meanwhile (its commands stay pending),
        and the positions answered with an error."""
        lost: Exception | None = None
        sent: list[tuple[Address, Wire, list[int], int]] = []
        errors: list[int] = []
        read = 0  # of ``sent``, the nodes read to the end
        try:
            for address, members in by_node.items():
                if asking:  # ASK: that command only, on that node, after ASKING
                    batch: list[Command] = []
                    for n in members:
                        batch += [("ASKING",), commands[n]] if n in asking else [commands[n]]
                else:
                    batch = [commands[n] for n in members]
                wire = self._wire(address)
                try:
                    wire.send(batch)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    lost = exc
                    self._failing.add(address)
                    continue
                sent.append((address, wire, members, len(batch)))
            for address, wire, members, count in sent:
                failed = self._read_node(wire, members, count, asking, replies, errors)
                if failed is None:
                    self._reached(address)
                else:
                    lost = failed
                    self._failing.add(address)
                read += 1
        except BaseException:  # interrupted (Ctrl-C): the nodes not read yet owe replies
            for _, unread, _, _ in sent[read:]:
                unread.close()
            raise
        return lost, errors

    @staticmethod
    def _read_node(
        wire: Wire,
        members: list[int],
        count: int,
        asking: dict[int, Address],
        replies: list[Any],
        errors: list[int],
    ) -> Exception | None:
        """One node's ``count`` replies into ``replies`` (the positions answered with an error
        into ``errors``); the error of its link lost meanwhile."""
        got: list[Any] = []
        try:
            wire.receive(count, got)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if count == len(members):  # (with ASKING's replies among them: none kept)
                _answered(replies, members, got)
            return exc
        if count > len(members):  # drop ASKING's replies
            it = iter(got)
            got = [(next(it), next(it))[1] if n in asking else next(it) for n in members]
        for n, reply in zip(members, got, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                replies[n] = as_exception(reply)
                errors.append(n)
            else:
                replies[n] = reply
        return None


def _within(blocks: list[range], n: int) -> bool:
    return any(n in block for block in blocks)


def _whole(blocks: list[range], positions: list[int], replies: list[Any]) -> list[int]:
    """``positions``, with every transaction one of them is in sent again whole (its replies
    reset): a command redirected out of its MULTI would run outside the transaction, while its
    EXEC's EXECABORT stood for a block that never ran."""
    chosen = set(positions)
    for block in blocks:
        if chosen.intersection(block):
            chosen.update(block)
            for n in block:
                replies[n] = _PENDING
    return sorted(chosen)


def _loads_script(command: Command) -> bool:
    name = command[0]
    return len(command) > 1 and (name if isinstance(name, str) else text(name)).upper() == "SCRIPT"


def _answered(replies: list[Any], positions: Iterable[int], got: list[Any]) -> None:
    """Keep the replies read before a link was lost (``got``, for the first ``positions``): a
    command they answer is not sent again. Error replies are not kept: one may be a
    redirection, which the command must still follow."""
    for n, reply in zip(positions, got, strict=False):
        if not isinstance(reply, hiredis.ReplyError):
            replies[n] = reply


class ClusterWires(Wires):
    """``Wires`` for a cluster: a ``ClusterWire`` per thread, all sharing one ``SlotMap``."""

    def __init__(self, rc: RedisCluster | redis.Redis, retry: Retry | None = None) -> None:
        assert isinstance(rc, RedisCluster)
        self.slots = SlotMap(rc)
        super().__init__(self.slots.pool, retry)

    def _open(self) -> JobConnection:
        return ClusterWire(self.slots, self._retry)
