"""In-process bus between sources and the engine: bounded, so a slow engine slows the source
(backpressure) instead of growing memory without limit."""

from __future__ import annotations

import asyncio

from crypto_sentinel.model import RawFrame


class MemoryBus:
    def __init__(self, capacity: int) -> None:
        self._queue: asyncio.Queue[RawFrame] = asyncio.Queue(maxsize=capacity)
        self.capacity = capacity

    async def publish(self, frame: RawFrame) -> None:
        """Hand one frame to the engine; waits while the bus is full."""
        await self._queue.put(frame)

    def depth(self) -> int:
        return self._queue.qsize()

    async def take(self, max_frames: int, timeout: float) -> list[RawFrame]:
        """Up to `max_frames` frames; waits at most `timeout` s for the first one."""
        queue = self._queue
        if queue.empty():
            try:
                first = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return []
            frames = [first]
        else:
            frames = []
        while len(frames) < max_frames and not queue.empty():
            frames.append(queue.get_nowait())
        return frames
