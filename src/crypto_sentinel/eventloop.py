"""Run the long-lived processes on uvloop when it is installed.

uvloop (pulled in by `uvicorn[standard]`, with the httptools HTTP parser) cuts the event loop's
own cost per socket event roughly in half, which is most of what a `/latest` request costs us.
Plain asyncio remains the fallback, so nothing depends on it.

The cyclic garbage collector is tuned for these processes too (`tune_gc`), and pandas and NumPy
are kept out of them (`keep_analysis_libraries_out`).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


#: Young-generation collections between two full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 100


def settle_heap() -> None:
    """Move what start-up loaded (trade ids, hot state) out of the garbage collector's sight.

    Those objects live as long as the process; left in the tracked heap, every full
    collection walks all of them again - a pause of tens of milliseconds on the event loop
    (measured: 24 ms after 40 s of a fresh `sentinel up`), growing with what was loaded.
    """
    gc.collect()
    gc.freeze()


def tune_gc() -> None:
    """Fewer and shorter full collections: a full collection stops the event loop and every
    thread for as long as it walks every tracked object (40-100 ms in `sentinel serve` under
    load, measured with gc.callbacks), and the API's kept answers make one due every couple
    of seconds while finding nothing to free (their garbage goes by reference counting). The
    objects of start-up (modules, classes, settings) are frozen out of every later walk, and
    a full collection runs after 100 middle-generation ones instead of 10; the young
    generations, which free the short-lived cycles, run as often as before."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


#: Installed by the dev extra (pandas, which brings NumPy) for the analysis notebook; a plain
#: install has neither, and no pipeline or API code uses them.
ANALYSIS_LIBRARIES = ("pandas", "numpy")
#: httpx's command-line client, which its package imports whenever click and rich are
#: installed (they are, for other tools): rich and pygments (and click, which uvicorn loads
#: anyway), about 4 MB of code objects
#: in a process that never runs it. httpx stands in a stub when it cannot be imported.
UNUSED_MODULES = ("httpx._main",)


class _AnalysisLibrariesAbsent:
    """A module finder for which the libraries in `kept_out` are not installed."""

    kept_out: set[str] = set()

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> None:
        if name in cls.kept_out or name.partition(".")[0] in cls.kept_out:
            raise ModuleNotFoundError(f"{name} is kept out of this process", name=name)


def keep_analysis_libraries_out() -> None:
    """When pandas and NumPy are installed, pyarrow imports NumPy when it loads (10 MB of
    RSS) and pandas at its first conversion of Python values (about 30 MB: `sentinel up`
    measured 305 -> 274 MB). pyarrow and DuckDB treat a library that cannot be imported as
    not installed, as in a plain install. A library the process has already stays. The
    same for `UNUSED_MODULES`."""
    _AnalysisLibrariesAbsent.kept_out.update(
        name for name in (*ANALYSIS_LIBRARIES, *UNUSED_MODULES) if name not in sys.modules
    )
    if _AnalysisLibrariesAbsent not in sys.meta_path:
        sys.meta_path.insert(0, _AnalysisLibrariesAbsent)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on a uvloop event loop if uvloop is available, for a long-lived
    process: the garbage collector tuned, pandas and NumPy kept out."""
    keep_analysis_libraries_out()
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
