"""Keep freed memory in the process for the next array instead of handing it back to the system.

Prediction allocates and frees a few hundred MB per step (canonical copy, resized volumes,
probabilities, label maps). glibc's ``malloc`` serves blocks over its mmap threshold with fresh
``mmap`` pages and unmaps them on ``free``, so every step faults its pages in again, and the heap's
top is trimmed back to the system as well. On a virtual machine a first touch costs far more
than the memory traffic itself: measured on the 2-core CI-like machine, whole-process
``predict.sh`` on a 512×512×300 CT spent 1.0–1.5 s in the kernel with 0.55 M page faults; with
freed blocks kept (no mmap for large blocks, no trimming) 0.45–0.55 s and 0.24 M faults, for a
peak RSS 0.99 → 1.12 GB.

This is what a batch process wants (the same sizes come back for every case). A long-lived
server that should give memory back between requests does not call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
"""``mallopt`` parameters, from glibc's ``malloc.h``."""


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve every block from its heaps and never trim them.

    Returns:
        True when the settings took effect; False where the C library is not glibc (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
