"""A feed hands every frame it received to the bus, even when the session ends while the bus
holds it back: a full bus that outlasts the idle timer must not drop the frames in hand."""

from __future__ import annotations

import asyncio
import json

import pytest

from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.feed import FeedSource
from crypto_sentinel.sources.venues import connector_for


def match(trade_id: int) -> str:
    return json.dumps(
        {
            "type": "match", "trade_id": trade_id, "product_id": "BTC-USD", "price": "100.5",
            "size": "0.1", "side": "buy", "time": "2026-12-04T10:00:00.000000Z",
            "sequence": trade_id,
        }
    )  # fmt: skip


class OneBatch:
    """A connection that delivers one batch of frames, then stays quiet."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    async def recv_many(self) -> list[str | bytes]:
        if self.texts:
            batch, self.texts = self.texts, []
            return list(batch)
        await asyncio.Event().wait()  # quiet from here on
        return []

    async def send(self, text: str) -> None:
        pass


async def test_frames_in_hand_reach_the_bus_when_it_outlasts_the_idle_timer() -> None:
    source = FeedSource(
        connector_for("coinbase"), ["BTC-USD"], "ws://x", "coinbase", "coinbase",
        idle_timeout=0.2,
    )  # fmt: skip
    texts = [match(i) for i in range(1, 6)]
    taken: list[RawFrame] = []
    held_back = [False]

    async def full_bus_once(frame: RawFrame) -> None:
        if frame.recv_seq == 2 and not held_back[0]:
            held_back[0] = True
            await asyncio.sleep(0.6)  # the engine is behind: longer than the idle timer
        taken.append(frame)

    with pytest.raises(TimeoutError):  # the session ends (and the feed reconnects) ...
        await source._receive(OneBatch(texts), "c1", full_bus_once)  # type: ignore[arg-type]
    # ... but every frame it held went on, once, in order
    assert [f.text for f in taken] == texts
    assert [f.recv_seq for f in taken] == [1, 2, 3, 4, 5]
    assert source.status.frames == 5
