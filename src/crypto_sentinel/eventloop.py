"""Run the long-lived processes on uvloop when it is installed.

uvloop (pulled in by `uvicorn[standard]`, with the httptools HTTP parser) cuts the event loop's
own cost per socket event roughly in half, which is most of what a `/latest` request costs us.
Plain asyncio remains the fallback, so nothing depends on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on a uvloop event loop if uvloop is available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
