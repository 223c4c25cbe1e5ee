"""glibc malloc settings of the scoring workers: keep freed memory for the next request.

A 10,000-transaction request allocates tens of MB: the 8.4 MB body, the decoded records, the
matrix, the 4 MB spool line, the answer. With glibc's defaults a large block gets its own
``mmap`` and a freed heap top goes back to the OS, so the next request faults the same pages in
again: 5,000-12,000 page faults per request, ~3 us each on the 2-vCPU VM of the benchmarks
(reading the body 8-12 ms, encoding the spool line 8 ms). Settings applied by
:func:`keep_freed_memory` (in the gunicorn master, inherited by the forked workers):

- ``M_MMAP_THRESHOLD`` 32 MiB (glibc's largest): blocks below it come from the heap;
- ``M_TRIM_THRESHOLD`` 256 MiB: a freed heap top is kept up to that size;
- ``M_ARENA_MAX`` 2: the request threads share two heaps, so the memory kept is bounded.

After a few requests a 10,000-row request faults ~100 pages (body read 3.7 ms, spool line
4.5 ms). A worker keeps its peak heap instead of returning it: after 16 batches of 10,000 rows,
531 MB resident against 503-513 MB with glibc's defaults. Nothing is changed when the environment already tunes malloc (``GLIBC_TUNABLES`` or a
``MALLOC_*`` variable) or the C library has no ``mallopt`` (not glibc).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
SETTINGS = {M_MMAP_THRESHOLD: 32 * 1024 * 1024, M_TRIM_THRESHOLD: 256 * 1024 * 1024, M_ARENA_MAX: 2}
ENV_TUNED = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
             "MALLOC_TOP_PAD_")  # fmt: skip


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; True if all of them were taken."""
    if any(environ.get(name) for name in ENV_TUNED):
        log.info("malloc settings left as the environment sets them")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in SETTINGS.items()])
