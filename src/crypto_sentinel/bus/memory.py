"""In-process bus between sources and the engine: bounded, so a slow engine slows the source
(backpressure) instead of growing memory without limit.

A deque and two events rather than `asyncio.Queue`: the engine takes frames by the thousand,
and a queue's per-item bookkeeping (waiter lists, unfinished-task counts) cost more than
decoding at ingest rates of 100,000 frames/s.
"""

from __future__ import annotations

import asyncio
from collections import deque

from crypto_sentinel.model import RawFrame


class MemoryBus:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._frames: deque[RawFrame] = deque()
        self._readable = asyncio.Event()  # set while frames wait
        self._writable = asyncio.Event()  # set while there is room
        self._writable.set()

    async def publish(self, frame: RawFrame) -> None:
        """Hand one frame to the engine; waits while the bus is full."""
        while len(self._frames) >= self.capacity:
            self._writable.clear()
            await self._writable.wait()
        self._frames.append(frame)
        self._readable.set()

    async def publish_many(self, frames: list[RawFrame]) -> None:
        """Hand several frames over at once (a replay's part): one wait for room instead of
        one per frame, and a wait while as many frames as it brings still wait (or the bus
        is full). A replay reads faster than the engine decodes: parts stacked up in the bus
        only delayed each frame (frame -> `/latest` p99 95-103 ms against 58-59 ms,
        docs/benchmarks.md session 27), and the engine has the next part at hand either way.
        The bus may hold up to `len(frames) - 1` frames beyond its capacity."""
        await self.room_for(len(frames))
        self._frames.extend(frames)
        self._readable.set()

    async def room_for(self, count: int) -> None:
        """Wait until `publish_many` would take `count` frames at once: a replay makes (and
        stamps) its next part only then, so a frame's receive time is not before its wait."""
        while len(self._frames) >= min(self.capacity, count):
            self._writable.clear()
            await self._writable.wait()

    def depth(self) -> int:
        return len(self._frames)

    async def take(self, max_frames: int, timeout: float) -> list[RawFrame]:
        """Up to `max_frames` frames; waits at most `timeout` s for the first one."""
        frames = self._frames
        if not frames:
            self._readable.clear()
            try:
                await asyncio.wait_for(self._readable.wait(), timeout)
            except TimeoutError:
                return []
        if len(frames) <= max_frames:
            taken = list(frames)
            frames.clear()
        else:
            popleft = frames.popleft
            taken = [popleft() for _ in range(max_frames)]
        self._writable.set()
        return taken
