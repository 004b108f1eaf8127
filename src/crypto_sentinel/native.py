"""Memory settings of the native libraries, applied before they load.

deltalake's Rust core allocates through its own jemalloc, which by default keeps 8 arenas on
this 2-core machine, per-thread caches of blocks up to 32 KiB and freed pages for 10 s. Every
Delta commit and log refresh churns through that memory on ~100 tokio threads, so `sentinel
up` carried 50-160 MB of freed-but-kept pages (measured: median RSS 316 -> 279 MB, peak
487 -> 327 MB over 5 minutes at 2,000 trades/s). One arena, small thread caches and a
200 ms decay keep only what is in use.

pyarrow allocates through mimalloc by default, which kept 13-15 MB more of `sentinel up`'s
RSS than the C library's allocator (60 s at 2,500 trades/s, two runs each: mean RSS of the
second half 244-246 MB against 230-232 MB), with no loss of speed (replay 52-58 k trades/s
against 57-59 k). The system pool is the default here; Arrow reads its variable when it makes
its default pool.

The C library's allocator (glibc) keeps the pages of freed blocks that are not at the top of
their heap: Arrow's buffers and Python's larger objects, freed in the middle of a thread's
arena, stayed resident. `trim_heap_forever` hands them back every 10 s (`malloc_trim`, 0.07 ms
a call). Measured in `sentinel up` (docs/benchmarks.md, session 18): median RSS -13 MB in a
pair of 12-minute runs probed with gdb, within noise in an unprobed pair of 10-minute runs.

glibc also gives each thread that allocates while another does a heap (an "arena") of its
own, up to 8 per core, and freed blocks stay in the heap that made them: the event loop, the
writer's threads and Arrow's each kept some. `sentinel up` had 14 such heaps after 30 s; with
one heap for all, its own memory (`RssAnon`) over 10 minutes at 2,000 trades/s with 50 API
clients was lower at the median and at the peak (docs/benchmarks.md, session 26). The threads
that allocate most (deltalake's) use jemalloc and do not share it; the event loop and the
writer's threads do, and replay at full speed was slower in four of five interleaved pairs
(about a tenth, within the host's noise).

glibc serves a block from a mapping of its own only above a threshold, which it raises to
the size of every such block freed, up to 32 MiB: a batch's multi-megabyte Arrow buffers
then come from the heap and leave holes there when freed (a replay held 12-30 MB of free
heap). A fixed 1 MiB threshold hands them back as they are freed.

Both libraries read their variable once, when they load: `configure()` runs from the package's
`__init__`, before anything imports them. A value already in the environment wins
(`_RJEM_MALLOC_CONF=` with nothing after it restores jemalloc's own defaults;
`ARROW_DEFAULT_MEMORY_POOL=mimalloc` Arrow's; `MALLOC_ARENA_MAX` glibc's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
from collections.abc import Callable

#: The variable deltalake's jemalloc (tikv-jemallocator, symbol prefix `_rjem_`) reads.
DELTA_JEMALLOC_ENV = "_RJEM_MALLOC_CONF"
#: One arena (the writer commits up to four tables at a time; with them side by side the
#: 10-minute memory run was unchanged, docs/benchmarks.md session 24), thread caches of at
#: most 8 blocks per size (up to 4 KiB) and 2 larger ones, and freed pages returned after
#: 200 ms (the built-in background thread does it). The caches are per thread and
#: deltalake's runtime keeps ~100 threads, most of them idle, whose caches jemalloc never
#: flushes: at its default slot counts (up to 200 blocks a size) they held ~20 MB of
#: `sentinel up` (docs/benchmarks.md, session 19). Without any cache the commits were slower
#: (live frame -> Delta p99 444-492 ms against 297 ms).
DELTA_JEMALLOC = (
    "narenas:1,tcache_max:4096,tcache_nslots_small_max:8,tcache_nslots_large:2,"
    "dirty_decay_ms:200,muzzy_decay_ms:0"
)


#: The variable Arrow reads to choose its default memory pool, and our choice.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
ARROW_POOL = "system"


#: The variable glibc reads at start for the most arenas of its heap, and `mallopt`'s number
#: for the same limit (malloc.h).
C_ARENAS_ENV = "MALLOC_ARENA_MAX"
M_ARENA_MAX = -8
#: One C heap for every thread (see above).
C_ARENAS = 1


#: The variable glibc reads at start for the size from which a block gets a mapping of its
#: own, and `mallopt`'s number for it.
C_MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
M_MMAP_THRESHOLD = -3
#: Blocks of 1 MiB and more (a chunk's columns, a batch's bronze rows) in mappings of their
#: own (see above).
C_MMAP_THRESHOLD = 1 << 20


def _mallopt(env: str, param: int, value: int) -> bool:
    """Set a glibc allocator parameter; False where there is no glibc or the environment set
    its own value."""
    if env in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(param, value))


def limit_c_arenas(arenas: int = C_ARENAS) -> bool:
    """Cap glibc's arenas (before other threads allocate: a thread keeps the arena it got);
    False where there is no glibc or the environment set its own limit."""
    return _mallopt(C_ARENAS_ENV, M_ARENA_MAX, arenas)


def fix_c_mmap_threshold(size: int = C_MMAP_THRESHOLD) -> bool:
    """Keep glibc's large blocks in their own mappings (see above); False where there is no
    glibc or the environment set its own threshold."""
    return _mallopt(C_MMAP_THRESHOLD_ENV, M_MMAP_THRESHOLD, size)


def configure() -> bool:
    """Set the defaults above unless the environment has its own; False if it is too late
    for deltalake's (it was imported before this package)."""
    os.environ.setdefault(ARROW_POOL_ENV, ARROW_POOL)  # child processes too, if too late here
    limit_c_arenas()
    fix_c_mmap_threshold()
    if "deltalake" in sys.modules:
        return False
    os.environ.setdefault(DELTA_JEMALLOC_ENV, DELTA_JEMALLOC)
    return True


#: Seconds between two hand-backs of the C heap's free pages in a long-lived process.
HEAP_TRIM_SECONDS = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Return the C heap's free pages to the system; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


async def trim_heap_forever(stop: asyncio.Event, seconds: float = HEAP_TRIM_SECONDS) -> None:
    """`trim_heap` every `seconds` until `stop` (a task of the pipeline). In a worker thread:
    it walks every arena under its lock, which the event loop should not wait for."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        if not await asyncio.to_thread(trim_heap):
            return
