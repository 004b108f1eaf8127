"""Hot state: recent trades, current tickers and recent candles in memory, fed by the engine.

The API's hot path reads only this, so `/latest` costs microseconds and never touches disk.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

from crypto_sentinel.engine.candles import Candle
from crypto_sentinel.model import Ticker, Trade

RECENT_CANDLES = 24 * 60  # one day of 1-minute candles per product


@dataclass(slots=True)
class SeenTrade:
    trade: Trade
    processed_ns: int


class HotState:
    def __init__(self, trades_per_product: int = 1000, latest_size: int = 50) -> None:
        self.trades_per_product = trades_per_product
        self.latest: deque[SeenTrade] = deque(maxlen=latest_size)
        self.trades: dict[tuple[str, str], deque[SeenTrade]] = {}
        self.tickers: dict[tuple[str, str], Ticker] = {}
        self.candles: dict[tuple[str, str], OrderedDict[datetime, Candle]] = {}

    def on_event(self, event: Trade | Ticker | Candle) -> None:
        """Engine listener."""
        if isinstance(event, Trade):
            seen = SeenTrade(event, time.time_ns())
            self.latest.append(seen)
            key = (event.exchange, event.product_id)
            ring = self.trades.get(key)
            if ring is None:
                ring = self.trades[key] = deque(maxlen=self.trades_per_product)
            ring.append(seen)
        elif isinstance(event, Ticker):
            self.tickers[(event.exchange, event.product_id)] = event
        else:
            book = self.candles.setdefault((event.exchange, event.product_id), OrderedDict())
            if event.start not in book:
                book[event.start] = event
                if len(book) > RECENT_CANDLES:
                    book.popitem(last=False)
            else:
                book[event.start] = event

    def recent_trades(self, exchange: str, product_id: str) -> deque[SeenTrade]:
        return self.trades.get((exchange, product_id), deque())
