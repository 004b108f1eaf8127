"""Run the long-lived processes on uvloop when it is installed.

uvloop (pulled in by `uvicorn[standard]`, with the httptools HTTP parser) cuts the event loop's
own cost per socket event roughly in half, which is most of what a `/latest` request costs us.
Plain asyncio remains the fallback, so nothing depends on it.

The cyclic garbage collector is tuned for these processes too (`tune_gc`).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


#: Young-generation collections between two full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 100


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


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on a uvloop event loop if uvloop is available, with the garbage
    collector tuned for a long-lived process."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
