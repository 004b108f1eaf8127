"""Feed hot state straight from the durable log, without writing the lake.

`sentinel serve --bus kafka` replicas use this: they tail the raw-frame topics from the end
and show trades the moment they arrive, while history comes from the lake. Decoding,
deduplication and candle deltas are the engine's own (`engine/chunks.py`).
"""

from __future__ import annotations

import asyncio

from crypto_sentinel.engine.chunks import ChunkAcceptor, Listener
from crypto_sentinel.engine.processor import CHUNK_FRAMES, FrameSource


class HotFeed:
    def __init__(self, listener: Listener) -> None:
        self.frames = 0
        self.acceptor = ChunkAcceptor()
        self.acceptor.listeners.append(listener)

    async def run(self, frames: FrameSource, stop: asyncio.Event) -> None:
        while not stop.is_set():
            chunk = await frames.take(CHUNK_FRAMES, 0.05)
            if chunk:
                self.frames += len(chunk)
                self.acceptor.accept(chunk)
