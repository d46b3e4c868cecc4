"""Every Redis key aiworker writes for its own bookkeeping is built here, from one prefix.

User keys (tensors, models, scripts) are used as given. Per-object bookkeeping keys embed the user's
key inside a hash tag (``aiworker:stats:{mykey}``) so that, on Redis Cluster, they land in the same
slot as the object itself whenever the user's key has no hash tag of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "aiworker"
DEFAULT_PREFIX = "aiworker:"


def _tagged(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes, wrapped in braces for reuse as a hash tag."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start : end + 1]
    return "{" + key + "}"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (default ``aiworker:``)."""

    prefix: str = DEFAULT_PREFIX

    def queue(self, device: str) -> str:
        """The job stream of a device; ``cpu:1`` and ``CPU:1`` share one, as in RedisAI."""
        return f"{self.prefix}queue:{device.upper()}"

    def dead_letters(self, device: str) -> str:
        return f"{self.prefix}deadletter:{device.upper()}"

    def stats(self, key: str) -> str:
        """Per-model/script run statistics (RedisAI's AI.INFO), shared by every worker process."""
        return f"{self.prefix}stats:{_tagged(key)}"

    def reply(self, token: str) -> str:
        return f"{self.prefix}reply:{token}"

    def temp(self, key: str, token: str) -> str:
        """Where a large tensor is written before it is moved onto ``key`` (same hash slot)."""
        return f"{self.prefix}tmp:{_tagged(key)}:{token}"

    def dag_output(self, entry_id: str, index: int) -> str:
        """A large tensor a DAG's TENSORGET op returns; expires with the DAG's reply."""
        return f"{self.prefix}dagout:{entry_id}:{index}"

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
        """A worker process's JSON status, expiring when its heartbeats stop."""
        return f"{self.prefix}worker:{name}"
