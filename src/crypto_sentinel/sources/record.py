"""Write live frames to NDJSON, each with its receive time, in the format replay reads."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson

from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.feed import FeedSource


async def record(
    source: FeedSource, out: Path, duration: float | None, max_frames: int | None
) -> int:
    """Record until `duration` seconds or `max_frames` frames; returns frames written."""
    written = 0
    enough = asyncio.Event()
    with out.open("w", encoding="utf-8") as fh:

        async def write(frame: RawFrame) -> None:
            nonlocal written
            if max_frames is not None and written >= max_frames:
                return  # frames already in flight before the source is cancelled
            line = {"recv_ts": frame.recv_ns / 1e9, "raw": frame.text}
            fh.write(orjson.dumps(line).decode() + "\n")
            written += 1
            if max_frames is not None and written >= max_frames:
                enough.set()

        task = asyncio.create_task(source.run(write))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), duration)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return written
