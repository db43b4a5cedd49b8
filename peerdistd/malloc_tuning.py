"""glibc malloc settings for a daemon that moves megabytes per request (docs/benchmarks.md,
"LAN speed").

Blocks are decrypted and hashed on worker threads and freed on the event loop; answers are
1 MiB buffers. With glibc's defaults each thread's arena gives freed memory back to the
kernel as soon as its top passes the trim threshold (128 KiB, raised dynamically only for
the main arena's mmapped chunks), so the next buffer faults its pages in again: a node
fetching from a peer took 20-30 page faults per 64 KiB block, and they cost it about a sixth
of its CPU. Keeping up to 64 MiB free per arena and serving allocations below 8 MiB from the
arenas makes those pages stay. Part of the composition root: called once, before any thread
starts. A ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_`` in the environment (see
mallopt(3)) wins; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt(3) parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 64 * 1024 * 1024
MMAP_THRESHOLD = 8 * 1024 * 1024


def tune_malloc() -> bool:
    """Apply the settings; whether they were applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = int(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) == 1
    ok = int(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) == 1 and ok
    if not ok:
        log.debug("mallopt refused the settings; glibc's defaults stay")
    return ok
