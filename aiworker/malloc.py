"""glibc's malloc, told to keep the memory that large tensors come and go in.

glibc serves an allocation of M_MMAP_THRESHOLD or more (128 KiB at start) with a fresh mmap and
unmaps it on free. Its threshold then rises to the size freed, and M_TRIM_THRESHOLD to twice
that; but memory freed at the top of the heap beyond M_TRIM_THRESHOLD goes back to the kernel. A
worker reads tensors of hundreds of KB over and over (a 224 x 224 image is 600 KB, a batch of 32
of them 19 MB, freed together once the batch is answered), so without this every batch's inputs
arrived in pages the kernel had to fault in and zero again: reading 32 such inputs into a batch
took 146 page faults and 407 us of CPU per input, against none and 190 us with the thresholds
below, and a worker serving a batched model on them 2.02 ms of CPU per job against 1.02
(``bench.heap``, bench/README.md section 8). Page faults cost more still in a sandboxed or
virtualized machine.

So a worker sets both thresholds once, at start (``Worker.run_forever``), and so does the gateway
(``aiworker gateway``: it receives and sends tensors in buffers of their own): allocations under
32 MiB (glibc's largest mmap threshold) come from the heap and are reused, and up to 128 MiB freed
at its top stays there. The process then keeps the memory of its busiest moment. Only on glibc,
and only where the environment does not set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_``: an operator's choice wins.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("aiworker")
M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set the thresholds (see the module docstring); whether they were set."""
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    if not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done: bool = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.warning("could not set glibc's malloc thresholds; large tensors cost page faults")
    return done


def _glibc() -> bool:
    """Whether this process runs on glibc (musl, macOS and Windows have no such thresholds)."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name here
        return False
    return version is not None and version.startswith("glibc")
