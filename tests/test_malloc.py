"""aiworker.malloc: a worker reuses the memory of large values instead of faulting in fresh pages
for each one. Each case runs in a process of its own: the thresholds are process-wide."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import spawn_worker, wait_until, worker_env

from aiworker import Client, malloc
from aiworker.embedded import RedisServer
from aiworker.protocol.keys import Keys

GLIBC = malloc._glibc()

# Allocates 32 values of 600 KB (a batch of image inputs, as a worker reads them), frees them, 20
# times over, and prints whether the thresholds were set and the minor page faults per value.
CHURN = """
import sys
from aiworker import malloc
tuned = malloc.keep_freed_memory() if sys.argv[1] == "tuned" else False
def faults():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])
source = bytearray(600_000)
def batch():
    values = [bytes(source) for _ in range(32)]
    del values
batch()
before = faults()
for _ in range(20):
    batch()
print(tuned, (faults() - before) / 640)
"""


def churn(mode: str, **env: str) -> tuple[bool, float]:
    """(thresholds set, page faults per value) of CHURN in a fresh process, with glibc's own
    variables only as ``env`` says."""
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        env=worker_env(malloc.ENVIRONMENT, **env),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] == "True", float(out[1])


def test_a_large_value_reuses_memory_once_the_thresholds_are_set() -> None:
    if not GLIBC:  # nothing to set elsewhere: the worker leaves malloc alone
        assert not malloc.keep_freed_memory()
        return
    tuned, faults = churn("tuned")
    assert tuned
    assert faults < 5, faults  # the heap's memory again
    set_by_default, faults_by_default = churn("default")
    assert not set_by_default
    assert faults_by_default > 100, faults_by_default  # glibc mmaps each one afresh: ~147 pages


def test_the_operators_own_malloc_settings_win() -> None:
    tuned, _faults = churn("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert not tuned
    assert malloc.ENVIRONMENT == ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _faults_serving_large_inputs(url: str, **env: str) -> float:
    """Minor page faults per job of a worker process (``aiworker worker``) serving 8 clients a
    STUB model batched by 8 on 600 KB inputs (a 600 KB output each); glibc's malloc variables
    only as ``env`` says."""
    setup = Client.from_url(url, reply_timeout=60)
    setup.flushall()
    setup.modelstore("m", "STUB", "CPU", b'{"op": "add"}', batch=8)
    for n in range(8):
        setup.tensorset(f"in{n}", np.ones((1, 3, 224, 224), np.float32))
    worker = spawn_worker(url, "--threads-per-queue", "1", unset=malloc.ENVIRONMENT, **env)

    def burst(jobs: int) -> None:
        def loop(n: int) -> None:
            client = Client.from_url(url, reply_timeout=60)
            for _ in range(jobs):
                client.modelexecute("m", [f"in{n}", f"in{n}"], [f"out{n}"])
            client.close()

        threads = [threading.Thread(target=loop, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def faults() -> int:
        with open(f"/proc/{worker.pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])

    try:
        wait_until(lambda: bool(setup.zcard(Keys().workers)), timeout=60)
        burst(3)
        before = faults()
        burst(10)
        return (faults() - before) / 80
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        setup.close()


@pytest.mark.slow
def test_a_worker_process_serves_large_inputs_without_faulting_in_their_memory(
    redis_server: RedisServer,
) -> None:
    """``aiworker worker`` sets the thresholds itself: a batch of 600 KB inputs costs it few page
    faults, where the same worker left with glibc's defaults faults in every batch's memory."""
    if not GLIBC:
        return  # nothing is set elsewhere (test_a_large_value_reuses_memory... checks that)
    tuned = _faults_serving_large_inputs(redis_server.url)
    untuned = _faults_serving_large_inputs(redis_server.url, MALLOC_TRIM_THRESHOLD_="131072")
    assert untuned > 200, untuned  # ~150 pages per 600 KB value, several values a job
    assert tuned < untuned / 4, (tuned, untuned)
