"""``ClusterWire``, the job path's connection to a Redis Cluster, and the one Lua caller on it:
routing by the slot map, MOVED and ASK, a lost node, NOSCRIPT. Against the 3 masters + 3
replicas cluster fixture."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import wait_until

from aiworker.protocol.keys import key_slot
from aiworker.storage import cluster as cluster_module
from aiworker.storage import lua
from aiworker.storage.cluster import ClusterWire, ClusterWires, connect

KEYS_ON_EVERY_MASTER = ["t1", "t2", "t3", "t4", "t5", "t6"]
ECHO_KEY = lua.LuaScript("echo_key", "return {KEYS[1], ARGV[1]}")


@pytest.fixture
def wires(redis_cluster: Any, cluster_client: Any) -> Iterator[ClusterWires]:
    rc = connect(redis_cluster.url)
    found = ClusterWires(rc)
    yield found
    found.close()
    rc.close()


def master_port(redis_cluster: Any, key: str) -> int:
    return int(redis_cluster.master_of(key))


def test_commands_go_to_the_master_of_their_slot_in_one_round(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires
) -> None:
    keys = KEYS_ON_EVERY_MASTER
    assert len({redis_cluster.master_of(key) for key in keys}) == 3
    wire = wires.get()
    replies = wire.pipeline([("SET", key, f"v{n}") for n, key in enumerate(keys)])
    assert replies == [b"OK"] * len(keys)
    assert wire.pipeline([("GET", key) for key in keys]) == [f"v{n}".encode() for n in range(6)]
    assert cluster_client.get("t4") == b"v3"
    assert isinstance(wire.pipeline([("HGET", "t1", "f")])[0], redis.ResponseError)  # WRONGTYPE
    assert wire.slot("t1") == key_slot("t1")


def test_where_commands_name_their_key() -> None:
    from aiworker.storage.cluster import command_key

    assert command_key(("GET", "k")) == "k"
    assert command_key(("EVALSHA", "sha", 2, "a", "b", "x")) == "a"
    assert command_key(("EVALSHA", "sha", 0, "x")) is None
    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "BLOCK", 5, "STREAMS", "q", ">")
    assert command_key(read) == "q"
    assert command_key(("xreadgroup", "group", "g", "c", "streams", "q", ">")) == "q"
    assert command_key(("XINFO", "GROUPS", "q")) == "q"
    assert command_key(("XGROUP", "CREATE", "q", "g", "0")) == "q"
    assert command_key(("PING",)) is None


def test_a_stale_slot_map_is_corrected_by_moved(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires
) -> None:
    """Every slot mapped to one master (as after a failover or a resharding): the others answer
    MOVED, the command is sent on, and the map is learnt again."""
    wire = wires.get()
    wire.execute("PING")  # the map is known
    one = ("127.0.0.1", master_port(redis_cluster, "t1"))
    wires.slots._masters = [one] * len(wires.slots._masters)
    wires.slots._refreshed = 0.0
    keys = KEYS_ON_EVERY_MASTER
    replies = wire.pipeline([("SET", key, key) for key in keys])
    assert replies == [b"OK"] * len(keys)
    for key in keys:
        assert wires.slots.address(key_slot(key))[1] == master_port(redis_cluster, key)
    assert [cluster_client.get(key) for key in keys] == [key.encode() for key in keys]


def test_ask_during_a_slot_migration(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires
) -> None:
    """A slot being migrated: a key its old master no longer has is answered ASK, and the
    command runs on the new master after ASKING; the map is left as it is."""
    key = "asked{x}"
    slot = key_slot(key)
    source = redis_cluster.node(master_port(redis_cluster, key))
    target_port = next(
        p for p in redis_cluster.master_ports() if p != master_port(redis_cluster, key)
    )
    target = redis_cluster.node(target_port)
    source_id = source.execute_command("CLUSTER", "MYID")
    target_id = target.execute_command("CLUSTER", "MYID")
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        wire = wires.get()
        assert wire.execute("SET", key, "there") == b"OK"
        assert wires.slots.address(slot)[1] == master_port(redis_cluster, key), "map unchanged"
        conn = target.connection_pool.get_connection()
        try:
            conn.send_command("ASKING")
            conn.read_response()
            conn.send_command("GET", key)
            assert conn.read_response() == b"there", "written on the importing master"
            conn.send_command("ASKING")
            conn.read_response()
            conn.send_command("DEL", key)
            conn.read_response()
        finally:
            target.connection_pool.release(conn)
    finally:
        for node in (source, target):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_lost_master_raises_and_the_map_is_learnt_again(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires
) -> None:
    """A slot's master gone (as a killed one is): the call raises ConnectionError at once (the
    caller decides: a worker lets the entry be reclaimed, a client resends) and the next call
    goes to the master CLUSTER SLOTS names now."""
    wire = wires.get()
    wire.execute("SET", "t1", "before")
    slot = key_slot("t1")
    wires.slots._masters[slot] = ("127.0.0.1", _unused_port())
    wires.slots._refreshed = 0.0
    with pytest.raises(redis.ConnectionError, match="Redis Cluster unavailable"):
        wire.execute("GET", "t1")
    assert wire.execute("GET", "t1") == b"before"


def test_an_unreachable_master_is_tried_by_a_thread_of_its_own(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master the retries could not reach stays cut off (its jobs set aside) while it does not
    answer, however long, and no longer than until it does: a thread of the map's own PINGs it
    (the job path tried it again itself every 30 s, each try a call's retries long); a node
    that serves no slot any more is dropped, and the thread ends with nothing left to try."""
    monkeypatch.setattr(cluster_module, "PROBE_EVERY_S", 0.05)
    slots = wires.slots
    wires.get().execute("SET", "t1", "x")  # the map is read
    slot = key_slot("t1")
    master = slots.address(slot)
    dead = ("127.0.0.1", _unused_port())
    slots._masters[slot] = dead
    slots.lost(dead)
    slots.lost(master)
    time.sleep(1.0)  # twenty tries of each
    assert slots.cut_off(dead) and not slots.cut_off(master) and slots.degraded
    slots._masters[slot] = master  # the slot served by its master again: the dead node by none
    wait_until(lambda: not slots.degraded, timeout=5)
    wait_until(lambda: slots._prober is None, timeout=5)
    assert wires.get().execute("GET", "t1") == b"x"


def test_a_prober_that_breaks_leaves_no_master_cut_off(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the prober thread meet an error of its own, the masters it was trying are left to
    the job path again (which tries them itself) rather than set aside for good."""

    def broken(*args: Any) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cluster_module, "PROBE_EVERY_S", 0.05)
    monkeypatch.setattr(cluster_module, "answers_ping", broken)
    slots = wires.slots
    wires.get().execute("SET", "t1", "x")
    slots.lost(slots.address(key_slot("t1")))
    wait_until(lambda: not slots.degraded and slots._prober is None, timeout=5)


def test_scripts_are_loaded_where_redis_lacks_them(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires
) -> None:
    """After SCRIPT FLUSH (a restart, a promoted replica) each call loads its script on the
    master that runs it and runs again; calls in several slots share one round trip."""
    for port in redis_cluster.master_ports():
        redis_cluster.node(port).script_flush()
    calls = [lua.Call(ECHO_KEY, [key], [n]) for n, key in enumerate(KEYS_ON_EVERY_MASTER)]
    replies = lua.run(wires.get(), calls)
    assert replies == [
        [key.encode(), str(n).encode()] for n, key in enumerate(KEYS_ON_EVERY_MASTER)
    ]
    for port in redis_cluster.master_ports():
        assert redis_cluster.node(port).script_exists(ECHO_KEY.sha) == [True]


def test_a_job_connection_per_thread(wires: ClusterWires) -> None:
    import threading

    mine = wires.get()
    assert isinstance(mine, ClusterWire) and wires.get() is mine
    theirs: list[Any] = []
    thread = threading.Thread(target=lambda: theirs.append(wires.get()))
    thread.start()
    thread.join()
    assert theirs[0] is not mine


def test_replies_read_before_a_lost_link_are_kept(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires
) -> None:
    """A master lost while a BLPOP waits: the XADD it answered before counts as done
    (``NodeLost.replies``), so a client does not queue its job twice."""
    import threading
    import time

    from aiworker.storage.cluster import NodeLost

    node = redis_cluster.node(master_port(redis_cluster, "s{1}"))

    def kill_the_waiting_client() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for found in node.client_list():
                if found.get("cmd") == "blpop":
                    node.client_kill_filter(_id=found["id"])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_waiting_client)
    killer.start()
    with pytest.raises(NodeLost) as lost:
        wires.get().pipeline([("XADD", "s{1}", "*", "f", "v"), ("BLPOP", "r{1}", 5)])
    killer.join()
    entry_id, popped = lost.value.replies
    assert popped is None and cluster_client.xrange("s{1}")[0][0] == entry_id


class Interrupted(Exception):
    """What a signal handler raises (a time limit), as an ordinary exception."""


@pytest.mark.parametrize("raised", [KeyboardInterrupt, Interrupted])
def test_a_round_interrupted_on_one_node_leaves_the_others_in_step(
    redis_cluster: Any, cluster_client: Any, wires: ClusterWires, raised: type[BaseException]
) -> None:
    """Ctrl-C or a signal-based time limit while a round trip reads one node: the other nodes
    of the round, their replies not read, are not left owing them to the next round trip."""
    slow = "t1"
    slow_at = redis_cluster.master_of(slow)
    others = [k for k in (f"k{n}" for n in range(100)) if redis_cluster.master_of(k) != slow_at]
    fast, after = next(
        (a, b) for a in others for b in others
        if a != b and redis_cluster.master_of(a) == redis_cluster.master_of(b)
    )  # fmt: skip
    cluster_client.set(fast, b"fast")
    cluster_client.set(after, b"after")
    wire = wires.get()
    wire.pipeline([("PING",)])

    def alarm(signum: int, frame: Any) -> None:
        raise raised

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(raised):  # the slow node's BLPOP is read first, the fast one's after
            wire.pipeline([("BLPOP", slow, 2), ("GET", fast)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert wire.pipeline([("GET", after)]) == [b"after"]
    assert wire.pipeline([("GET", slow), ("GET", fast)]) == [None, b"fast"]


def test_a_redis_py_too_old_for_the_cluster_is_named() -> None:
    """On redis-py 6.2-7.0 a cluster worker's model reads failed ("range() arg 3 must not be
    zero") and before 6.2 a cluster transaction was refused: a clear error says what to install."""
    from aiworker.protocol.errors import AIWorkerError
    from aiworker.storage.cluster import require_cluster_support

    for old in ("5.0.8", "6.2.0", "7.0.1"):
        with pytest.raises(AIWorkerError, match=r"needs redis-py 7\.1 or newer \(this is "):
            require_cluster_support(old)
    for new in ("7.1.0", "8.2.0", "10.0.0", "8.3.0b1"):
        require_cluster_support(new)
