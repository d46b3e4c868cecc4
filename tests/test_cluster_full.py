"""A Redis Cluster node full (``maxmemory``, ``noeviction``) while a job runs: its requester gets
Redis's OOM refusal, as on a single Redis (``test_redis_full``), instead of waiting out its
timeout with its entry acknowledged and no reply written."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from cluster import LocalCluster
from conftest import stub_blob, wait_until
from test_redis_full import fill

from aiworker import Client, Settings, Worker
from aiworker.protocol.errors import OOM
from aiworker.protocol.keys import CONSUMER_GROUP


@pytest.fixture(scope="module")
def full_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(replicas=0) as cluster:
        for port in cluster.master_ports():
            cluster.node(port).config_set("maxmemory-policy", "noeviction")
        yield cluster


def test_outputs_refused_on_a_full_node_answer_oom(full_cluster: LocalCluster) -> None:
    client: Any = Client.from_url(full_cluster.url, reply_timeout=20)
    queue = client.keyspace.queue("CPU")
    # outputs and reply on another master than the queue: the completion writes them in a step
    tag = next(
        t for t in (f"t{n}" for n in range(100))
        if full_cluster.master_of(f"{{{t}}}") != full_cluster.master_of(queue)
    )  # fmt: skip
    node = full_cluster.node(full_cluster.master_of(f"{{{tag}}}"))
    client.modelstore("m", "STUB", "CPU", stub_blob("identity", sleep_ms=1500))
    client.tensorset(f"{{{tag}}}x", np.ones(5000, dtype=np.float32))
    worker = Worker(Settings(redis_url=full_cluster.url, threads_per_queue=1, block_ms=100))
    worker.start()
    out: dict[str, Any] = {}

    def execute() -> None:
        try:
            out["result"] = client.modelexecute("m", [f"{{{tag}}}x"], [f"{{{tag}}}y"])
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=execute)
    try:
        thread.start()
        wait_until(lambda: client.xpending(queue, CONSUMER_GROUP)["pending"] == 1, timeout=10)
        fill(node, prefix=f"{{{tag}}}filler:")  # before the job completes
        thread.join(15)  # it waited out its 20 s timeout: no reply was written
        assert not thread.is_alive()
        assert isinstance(out.get("error"), redis.exceptions.ResponseError), out
        assert OOM in str(out["error"]), out
        assert not client.exists(f"{{{tag}}}y")
        assert client.xpending(queue, CONSUMER_GROUP)["pending"] == 0
    finally:
        thread.join(30)
        node.config_set("maxmemory", 0)
        worker.stop(timeout=10)
        client.close()
