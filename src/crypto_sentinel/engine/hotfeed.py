"""Feed hot state straight from the durable log, without writing the lake.

`sentinel serve --bus kafka` replicas use this: they tail the raw-frame topics from the end
and show trades the moment they arrive, while history comes from the lake.
"""

from __future__ import annotations

import asyncio

from crypto_sentinel.engine.candles import Candle, CandleKey, minute_start
from crypto_sentinel.engine.dedupe import IdRanges
from crypto_sentinel.engine.processor import FrameSource, Listener
from crypto_sentinel.model import Ticker, Trade
from crypto_sentinel.sources.coinbase_codec import FrameError, decode

MAX_CANDLES = 10_000


class HotFeed:
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.frames = 0
        self._ids: dict[tuple[str, str], IdRanges] = {}
        self._candles: dict[CandleKey, Candle] = {}

    async def run(self, frames: FrameSource, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for frame in await frames.take(5000, 0.05):
                self.frames += 1
                try:
                    record = decode(frame)
                except FrameError:
                    continue
                if isinstance(record, Trade):
                    self._trade(record)
                elif isinstance(record, list):  # a REST backfill page
                    for trade in record:
                        self._trade(trade)
                elif isinstance(record, Ticker):
                    self.listener(record)

    def _trade(self, trade: Trade) -> None:
        ids = self._ids.setdefault((trade.exchange, trade.product_id), IdRanges())
        if not ids.add(trade.trade_id):
            return
        self.listener(trade)
        key = (trade.exchange, trade.product_id, minute_start(trade.time))
        candle = self._candles.get(key)
        if candle is not None:
            candle.add(trade)
            return
        if len(self._candles) >= MAX_CANDLES:
            self._candles.pop(next(iter(self._candles)))
        candle = self._candles[key] = Candle.from_trade(trade, key[2])
        self.listener(candle)
