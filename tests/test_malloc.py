"""aiworker.malloc: a worker reuses the memory of large values instead of faulting in fresh pages
for each one. Each case runs in a process of its own: the thresholds are process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

from aiworker import malloc

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
    inherited = {k: v for k, v in os.environ.items() if k not in malloc.ENVIRONMENT}
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        env={**inherited, **env},
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
