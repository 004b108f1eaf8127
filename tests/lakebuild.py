"""Small lakes written through the real engine and writer (tests of the analysts' reads)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import RawFrame
from crypto_sentinel.simulator.market import Market, SimTrade


def simulated(products: list[str], count: int, t0: datetime, step: timedelta) -> list[SimTrade]:
    """`count` seeded trades across products, one every `step` from `t0`."""
    market = Market(products, seed=7, start_trade_id=5000)
    return [market.next_trade(t0 + i * step) for i in range(count)]


def rest_page(product: str, trades: list[SimTrade]) -> str:
    """A `rest_trades` frame as the backfill publishes it (Coinbase REST body, newest first)."""
    market = Market([product], seed=1, start_trade_id=1)
    body = orjson.dumps([market.rest_trade(t) for t in reversed(trades)]).decode()
    return f'{{"type":"rest_trades","product_id":"{product}","trades":{body}}}'


class LakeBuilder:
    """Commits frames through one engine and writer, batch by batch, as the pipeline does."""

    def __init__(self, lake: Path, exchange: str = "coinbase", app_id: str = "test") -> None:
        self.exchange = exchange
        self.writer = LakeWriter(lake, app_id)
        self.engine = Engine(self.writer, 0.1, 1_000_000)
        self.engine.load_state(LakeReader(lake))
        self._seq = 0

    def frames(self, texts: list[str]) -> list[RawFrame]:
        out = []
        for text in texts:
            self._seq += 1
            out.append(RawFrame(self.exchange, "c1", self._seq, time.time_ns(), text))
        return out

    def commit(self, texts: list[str]) -> None:
        self.engine.process_frames(self.frames(texts))
        batch = self.engine.cut()
        assert batch is not None
        self.engine.committed(batch, self.writer.commit(batch))

    def matches(self, trades: list[SimTrade]) -> None:
        market = Market(["X-Y"], seed=1, start_trade_id=1)
        self.commit([market.match_frame(t) for t in trades])
