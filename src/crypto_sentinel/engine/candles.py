"""OHLCV candle maths: accumulate trades into minute buckets and merge partial candles.

Candles are bucketed by the exchange's trade time (UTC), never by receive time, and every
field can be combined from two partial candles, so a late trade updates a stored candle
instead of duplicating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from crypto_sentinel.model import EXACT, QUANTUM, Trade

CandleKey = tuple[str, str, datetime]  # exchange, product_id, bucket start


def minute_start(time: datetime) -> datetime:
    return time.replace(second=0, microsecond=0)


@dataclass
class Candle:
    exchange: str
    product_id: str
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    buy_volume: Decimal
    sell_volume: Decimal
    quote_volume: Decimal
    trade_count: int
    first_trade_id: int
    last_trade_id: int
    first_trade_time: datetime
    last_trade_time: datetime

    @classmethod
    def from_trade(cls, trade: Trade, start: datetime) -> Candle:
        buy = trade.size if trade.side == "buy" else Decimal(0)
        return cls(
            exchange=trade.exchange,
            product_id=trade.product_id,
            start=start,
            open=trade.price,
            high=trade.price,
            low=trade.price,
            close=trade.price,
            volume=trade.size,
            buy_volume=buy,
            sell_volume=trade.size - buy,
            quote_volume=EXACT.multiply(trade.price, trade.size),
            trade_count=1,
            first_trade_id=trade.trade_id,
            last_trade_id=trade.trade_id,
            first_trade_time=trade.time,
            last_trade_time=trade.time,
        )

    @property
    def key(self) -> CandleKey:
        return (self.exchange, self.product_id, self.start)

    @property
    def vwap(self) -> Decimal:
        return EXACT.divide(self.quote_volume, self.volume).quantize(QUANTUM, context=EXACT)

    def add(self, trade: Trade) -> None:
        """Fold one trade in; order of arrival does not matter. (The hot path: no temporaries.)"""
        price, size = trade.price, trade.size
        order = (trade.time, trade.trade_id)
        if order < (self.first_trade_time, self.first_trade_id):
            self.open, self.first_trade_time, self.first_trade_id = (
                price,
                trade.time,
                trade.trade_id,
            )
        if order > (self.last_trade_time, self.last_trade_id):
            self.close, self.last_trade_time, self.last_trade_id = price, trade.time, trade.trade_id
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.volume = EXACT.add(self.volume, size)
        if trade.side == "buy":
            self.buy_volume = EXACT.add(self.buy_volume, size)
        else:
            self.sell_volume = EXACT.add(self.sell_volume, size)
        self.quote_volume = EXACT.add(self.quote_volume, EXACT.multiply(price, size))
        self.trade_count += 1

    def merge(self, other: Candle) -> None:
        """Combine with another partial candle of the same bucket (associative, commutative)."""
        if (other.first_trade_time, other.first_trade_id) < (
            self.first_trade_time,
            self.first_trade_id,
        ):
            self.open = other.open
            self.first_trade_time = other.first_trade_time
            self.first_trade_id = other.first_trade_id
        if (other.last_trade_time, other.last_trade_id) > (
            self.last_trade_time,
            self.last_trade_id,
        ):
            self.close = other.close
            self.last_trade_time = other.last_trade_time
            self.last_trade_id = other.last_trade_id
        self.high = max(self.high, other.high)
        self.low = min(self.low, other.low)
        self.volume = EXACT.add(self.volume, other.volume)
        self.buy_volume = EXACT.add(self.buy_volume, other.buy_volume)
        self.sell_volume = EXACT.add(self.sell_volume, other.sell_volume)
        self.quote_volume = EXACT.add(self.quote_volume, other.quote_volume)
        self.trade_count += other.trade_count

    def to_row(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange,
            "product_id": self.product_id,
            "start": self.start,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "buy_volume": self.buy_volume,
            "sell_volume": self.sell_volume,
            "quote_volume": self.quote_volume,
            "vwap": self.vwap,
            "trade_count": self.trade_count,
            "first_trade_id": self.first_trade_id,
            "last_trade_id": self.last_trade_id,
            "first_trade_time": self.first_trade_time,
            "last_trade_time": self.last_trade_time,
            "date": self.start.date(),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Candle:
        fields = {k: v for k, v in row.items() if k not in ("vwap", "date")}
        return cls(**fields)


def candle_date(candle: Candle) -> date:
    return candle.start.date()
