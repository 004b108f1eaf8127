"""Run the long-lived processes on uvloop when it is installed.

uvloop (pulled in by `uvicorn[standard]`, with the httptools HTTP parser) cuts the event loop's
own cost per socket event roughly in half, which is most of what a `/latest` request costs us.
Plain asyncio remains the fallback, so nothing depends on it.

The cyclic garbage collector is tuned for these processes too (`tune_gc`), and pandas is kept
out of them (`keep_pandas_out`).
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


class _PandasAbsent:
    """A module finder for which pandas is not installed (see `keep_pandas_out`)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is kept out of this process", name=name)


def keep_pandas_out() -> None:
    """When pandas is installed (the dev extra brings it for the analysis notebook), pyarrow
    imports it at its first conversion of Python values, about 30 MB of memory that no
    pipeline or API code uses (`sentinel up` measured 305 -> 274 MB RSS). pyarrow and DuckDB
    treat a pandas that cannot be imported as not installed. A process that has it already
    keeps it."""
    if "pandas" not in sys.modules and _PandasAbsent not in sys.meta_path:
        sys.meta_path.insert(0, _PandasAbsent)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on a uvloop event loop if uvloop is available, for a long-lived
    process: the garbage collector tuned, pandas kept out."""
    keep_pandas_out()
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
