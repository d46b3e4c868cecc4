"""Every Redis key aiworker writes for its own bookkeeping is built here, from one prefix.

User keys (tensors, models, scripts) are used as given. Per-object bookkeeping keys embed the user's
key so that each object has its own, and so that on Redis Cluster it lands in the object's slot
(``aiworker:stats:{mykey}``, ``aiworker:stats:={user1}model``; see ``same_slot_suffix``).
"""

from __future__ import annotations

import binascii
import functools
from dataclasses import dataclass

CONSUMER_GROUP = "aiworker"
DEFAULT_PREFIX = "aiworker:"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when the key has a hash tag (``{...}``), else None."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return None


def same_slot_suffix(key: str) -> str:
    """A suffix for an aiworker key that hashes to ``key``'s slot and names ``key`` uniquely.

    Three disjoint forms, so no two user keys share a suffix: ``=<key>`` when the key has a hash
    tag (the tag then decides the slot), ``{<key>}`` when it has none (the whole key becomes the
    tag), and ``}<key>`` for untagged keys containing ``}``, which cannot be wrapped in a tag (those
    land in a slot of their own; nothing in aiworker needs them beside their object).
    """
    if hash_tag(key) is not None:
        return "=" + key
    if key and "}" not in key:
        return "{" + key + "}"
    return "}" + key


def shares_slot(key: str) -> bool:
    """Whether aiworker's keys named after ``key`` (``same_slot_suffix``) live in its hash slot:
    all but those of untagged keys containing ``}``."""
    return not same_slot_suffix(key).startswith("}")


SLOTS = 16384


# Keys longer than this are not remembered (``key_slot``, ``slot_tag``): whoever names keys, a
# client of the gateway or a job's entry, cannot make a process hold more than the caches' sizes
# times this.
REMEMBERED_KEY_LENGTH = 256


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of a key (remembered: the job path asks for the same queues,
    models, inputs and outputs again and again)."""
    if len(key) > REMEMBERED_KEY_LENGTH:
        return _crc_slot(key)
    return _remembered_slot(key)


@functools.lru_cache(maxsize=1 << 16)
def _remembered_slot(key: str | bytes) -> int:
    return _crc_slot(key)


def _crc_slot(key: str | bytes) -> int:
    """A key's slot: CRC16 of its hash tag, or of the whole key (searches for a tag use this
    one, not to fill ``key_slot``'s memory with the keys they try)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS  # CRC16-CCITT (XMODEM), Redis Cluster's CRC


def tag_for_slot(slot: int) -> str:
    """A short hash tag whose slot is ``slot`` (the first of ``s0``, ``s1``, ... there)."""
    return _slot_tags()[slot]


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """Every slot's tag, found in one pass (about 170,000 tries, 0.1 s, once per process): a
    search per slot remembered for 4,096 slots let a requester naming a new slot each time
    cost a worker 15 ms per job."""
    tags: list[str | None] = [None] * SLOTS
    left, n = SLOTS, 0
    while left:
        slot = _crc_slot(f"s{n}")
        if tags[slot] is None:
            tags[slot] = f"s{n}"
            left -= 1
        n += 1
    return tuple(tag for tag in tags if tag is not None)


def slot_tag(key: str) -> str:
    """A hash tag that puts an aiworker key in ``key``'s slot: ``key``'s own tag, else ``key``
    itself when it can be wrapped in braces, else a tag found for its slot (remembered for keys
    up to ``REMEMBERED_KEY_LENGTH``)."""
    if len(key) > REMEMBERED_KEY_LENGTH:
        return _slot_tag(key)
    return _remembered_tag(key)


@functools.lru_cache(maxsize=1 << 14)
def _remembered_tag(key: str) -> str:
    return _slot_tag(key)


def _slot_tag(key: str) -> str:
    tag = hash_tag(key)
    if tag is not None:
        return tag
    if key and "}" not in key:
        return key
    return tag_for_slot(key_slot(key))


@functools.lru_cache(maxsize=64)
def _partition_tags(base_slot: int, partitions: int) -> tuple[str, ...]:
    """Hash tags for partitions 1..n-1 whose slots sit evenly apart from partition 0's, so that
    on a cluster whose masters own equal slot ranges the partitions land on different masters."""
    window = max(1, SLOTS // (4 * partitions))
    tags = []
    for index in range(1, partitions):
        target = (base_slot + index * SLOTS // partitions) % SLOTS
        n = 0
        while (_crc_slot(f"p{index}.{n}") - target) % SLOTS >= window:
            n += 1
        tags.append(f"p{index}.{n}")
    return tuple(tags)


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (default ``aiworker:``)."""

    prefix: str = DEFAULT_PREFIX

    def queue(self, device: str) -> str:
        """The job stream of a device; ``cpu:1`` and ``CPU:1`` share one, as in RedisAI."""
        return f"{self.prefix}queue:{device.upper()}"

    def queues(self, device: str, partitions: int = 1) -> list[str]:
        """The streams of a device's queue split into ``partitions`` (``queue_partitions``): the
        plain queue first (what redis-cli users XADD to), then ``<queue>:{tag}`` streams whose
        hash tags spread them over the cluster's slots."""
        first = self.queue(device)
        if partitions <= 1:
            return [first]
        tags = _partition_tags(key_slot(first), partitions)
        return [first, *(f"{first}:{{{tag}}}" for tag in tags)]

    def device_of(self, queue: str) -> str:
        """The device a queue stream (any partition) belongs to."""
        return queue[len(self.prefix) + len("queue:") :].split(":{", 1)[0]

    def queue_limit(self, stream: str) -> str:
        """The length limit (``max_queue_length``) its workers publish for a queue stream, in the
        stream's hash slot: the enqueue script reads both."""
        return f"{self.prefix}limit:{same_slot_suffix(stream)}"

    def dead_letters(self, device: str) -> str:
        return f"{self.prefix}deadletter:{device.upper()}"

    def stats(self, key: str) -> str:
        """Per-model/script run statistics (RedisAI's AI.INFO), shared by every worker process."""
        return f"{self.prefix}stats:{same_slot_suffix(key)}"

    def reply(self, token: str, near: str | None = None) -> str:
        """A reply list; ``near``: a key whose hash slot it must share (on Redis Cluster, the
        request's outputs: a job's completion writes outputs and reply in one script)."""
        if near is None:
            return f"{self.prefix}reply:{token}"
        return f"{self.prefix}reply:{{{slot_tag(near)}}}{token}"

    def done(self, queue: str, entry_id: str, near: str) -> str:
        """The marker of one completion step of a queue entry on Redis Cluster, in ``near``'s
        hash slot: the step is applied by whichever delivery sets it first (``complete_once``)."""
        return f"{self.prefix}done:{{{slot_tag(near)}}}{queue}:{entry_id}"

    def owns(self, key: str) -> bool:
        """Whether ``key`` is one of aiworker's own: no job may write it as an output."""
        return key.startswith(self.prefix)

    def is_reply(self, key: str) -> bool:
        """Reply lists are the only own keys a request may name (as its ``reply``)."""
        return key.startswith(self.prefix + "reply:")

    def temp(self, key: str, token: str) -> str:
        """Where a large tensor is written before it is moved onto ``key`` (same hash slot)."""
        return f"{self.prefix}tmp:{same_slot_suffix(key)}:{token}"

    def read_flags(self, token: str, near: str | None = None) -> tuple[str, str]:
        """The two keys a worker's guarded read uses (``execution.state``): the flag it sets
        before checking sizes, and the key it WATCHes, onto which the flag is renamed when the
        check did not clear it; ``near``: a key whose hash slot they must share."""
        base = f"{self.prefix}read:" + (f"{{{slot_tag(near)}}}" if near is not None else "")
        return f"{base}{token}:flag", f"{base}{token}:guard"

    def verifying(self, token: str) -> str:
        """Where a client stages a model blob for a worker to check (MODELVERIFY); expiring."""
        return f"{self.prefix}verify:{token}"

    def is_verifying(self, key: str) -> bool:
        return key.startswith(f"{self.prefix}verify:")

    def dag_output(self, stream: str, entry_id: str, index: int, near: str | None = None) -> str:
        """A large tensor a DAG's TENSORGET op returns; expires with the DAG's reply (``near``:
        the reply key, whose hash slot it shares so that one completion writes both). Named by
        the stream too: an entry id is unique within its stream only (anyone may XADD the same
        id onto another queue, and overwrite the result a reply points to)."""
        if near is None:
            return f"{self.prefix}dagout:{stream}:{entry_id}:{index}"
        return f"{self.prefix}dagout:{{{slot_tag(near)}}}{stream}:{entry_id}:{index}"

    @property
    def models(self) -> str:
        """Set of stored model keys (for modelscan)."""
        return f"{self.prefix}models"

    @property
    def scripts(self) -> str:
        return f"{self.prefix}scripts"

    @property
    def config(self) -> str:
        """Hash of settings changed at run time with AI.CONFIG / ``Client.config``."""
        return f"{self.prefix}config"

    @property
    def workers(self) -> str:
        """Sorted set of worker process names scored by their last heartbeat (unix seconds)."""
        return f"{self.prefix}workers"

    def worker(self, name: str) -> str:
        """A worker process's JSON status, expiring when its heartbeats stop. In the hash slot
        of the registry (``workers``): on Redis Cluster one master holds every heartbeat, so a
        master lost for good takes no single worker's status with it while the registry stands
        (a worker whose status was out of reach looked dead to every client)."""
        return f"{self.prefix}worker:{same_slot_suffix(self.workers)}:{name}"

    def legacy_worker(self, name: str) -> str:
        """Where workers published their status before ``worker``'s slot was the registry's
        (a slot of each name's own): still written, best effort, and read for a name without
        the other, so that a rolling upgrade mixing the two keeps every worker visible."""
        return f"{self.prefix}worker:{name}"
