"""Memory settings of the native libraries, applied before they load, and the C heap's
free pages handed back to the kernel while a process runs.

deltalake's Rust core allocates through its own jemalloc, which by default keeps 8 arenas on
this 2-core machine, per-thread caches of blocks up to 32 KiB and freed pages for 10 s. Every
Delta commit and log refresh churns through that memory on ~100 tokio threads, so `sentinel
up` carried 50-160 MB of freed-but-kept pages (measured: median RSS 316 -> 279 MB, peak
487 -> 327 MB over 5 minutes at 2,000 trades/s). One arena, small thread caches and a
200 ms decay keep only what is in use, at no measured cost in commit time.

pyarrow allocates through mimalloc by default, which kept 13-15 MB more of `sentinel up`'s
RSS than the C library's allocator (60 s at 2,500 trades/s, two runs each: mean RSS of the
second half 244-246 MB against 230-232 MB), with no loss of speed (replay 52-58 k trades/s
against 57-59 k). The system pool is the default here; Arrow reads its variable when it makes
its default pool.

Both libraries read their variable once, when they load: `configure()` runs from the package's
`__init__`, before anything imports them. A value already in the environment wins
(`_RJEM_MALLOC_CONF=` with nothing after it restores jemalloc's own defaults;
`ARROW_DEFAULT_MEMORY_POOL=mimalloc` Arrow's).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

#: The variable deltalake's jemalloc (tikv-jemallocator, symbol prefix `_rjem_`) reads.
DELTA_JEMALLOC_ENV = "_RJEM_MALLOC_CONF"
#: One arena (the writer commits one table at a time), thread caches only for blocks up to
#: 4 KiB, and freed pages returned after 200 ms (the built-in background thread does it).
DELTA_JEMALLOC = "narenas:1,tcache_max:4096,dirty_decay_ms:200,muzzy_decay_ms:0"


#: The variable Arrow reads to choose its default memory pool, and our choice.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
ARROW_POOL = "system"


def configure() -> bool:
    """Set the defaults above unless the environment has its own; False if it is too late
    for deltalake's (it was imported before this package)."""
    os.environ.setdefault(ARROW_POOL_ENV, ARROW_POOL)  # child processes too, if too late here
    if "deltalake" in sys.modules:
        return False
    os.environ.setdefault(DELTA_JEMALLOC_ENV, DELTA_JEMALLOC)
    return True


def _heap_trimmer() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _heap_trimmer()


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the kernel; False where that is not possible.

    Python's larger objects, Arrow's system pool and the web stack allocate through the C
    library, and glibc keeps what they free inside its heap unless the free space sits at the
    top: in `sentinel up` at 2,000 trades/s its heap held 10-15 MB of freed pages after a few
    minutes (`mallinfo2`, growing). `malloc_trim` returns every free page of every arena and
    took 0.1-1.4 ms there (measured), so the pipeline calls it every few seconds."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def release_free_heap_every(interval: float, stop: asyncio.Event) -> None:
    """`release_free_heap` every `interval` seconds until `stop` (0 or less: never). Called
    on the event loop itself: a worker thread would get an arena of its own from glibc."""
    if interval <= 0 or _TRIM is None:
        return
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            release_free_heap()
