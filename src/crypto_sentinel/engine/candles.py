"""OHLCV candle maths: accumulate trades into minute buckets and merge partial candles.

Candles are bucketed by the exchange's trade time (UTC), never by receive time, and every
field can be combined from two partial candles, so a late trade updates a stored candle
instead of duplicating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel.engine.records import datetimes
from crypto_sentinel.lake import tables as T
from crypto_sentinel.model import EXACT, QUANTUM, Trade

CandleKey = tuple[str, str, datetime]  # exchange, product_id, bucket start

#: The candle table's columns a Candle holds (or computes: vwap); the date is the start's.
_ROW_FIELDS = tuple(name for name in T.CANDLES_1M.schema.names if name != "date")


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
        """The candle as a gold.candles_1m row (vwap computed, date of the start)."""
        row = {name: getattr(self, name) for name in _ROW_FIELDS}
        row["date"] = self.start.date()
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Candle:
        fields = {k: v for k, v in row.items() if k not in ("vwap", "date")}
        return cls(**fields)


_ZERO = pa.scalar(Decimal(0), T.PRICE)
_QUOTE_FACTOR = pa.decimal256(30, T.PRICE.scale)  # 16 integer digits + scale + headroom


def candles_of(trades: pa.Table) -> list[Candle]:
    """The 1-minute candles of a chunk of silver.trades rows, aggregated column-wise.

    Each is a partial candle of its minute (only this chunk's trades): merge it with what
    is known of the minute. Open and close are the first and last trade by (time, trade_id),
    as `Candle.add` orders them.
    """
    if not trades.num_rows:
        return []
    # Rows in (time, trade_id) order: then each group's first and last row are its open and
    # close, whatever the order of the groups (no need to sort by the string keys too).
    order = pc.sort_indices(trades, [("time", "ascending"), ("trade_id", "ascending")])
    t = trades.select(["exchange", "product_id", "trade_id", "price", "size", "side", "time"])
    t = t.take(order)
    size, is_buy = t["size"], pc.equal(t["side"], "buy")
    quote = pc.multiply(pc.cast(t["price"], _QUOTE_FACTOR), pc.cast(size, _QUOTE_FACTOR))
    t = (
        t.append_column("minute", pc.floor_temporal(t["time"], unit="minute"))
        .append_column("buy", pc.if_else(is_buy, size, _ZERO))
        .append_column("sell", pc.if_else(is_buy, _ZERO, size))
        .append_column("quote", quote)
        .append_column("row", pa.array(range(t.num_rows), pa.int64()))
    )
    groups = t.group_by(["exchange", "product_id", "minute"], use_threads=False).aggregate(
        [("row", "min"), ("row", "max"), ("price", "max"), ("price", "min"), ("size", "sum"),
         ("buy", "sum"), ("sell", "sum"), ("quote", "sum"), ("row", "count")]
    )  # fmt: skip
    ends = t.select(["price", "trade_id", "time"])  # what a candle takes from its first and last
    first, last = ends.take(groups["row_min"]), ends.take(groups["row_max"])
    columns = (
        groups["exchange"].to_pylist(),
        groups["product_id"].to_pylist(),
        datetimes(groups["minute"]),
        first["price"].to_pylist(),
        groups["price_max"].to_pylist(),
        groups["price_min"].to_pylist(),
        last["price"].to_pylist(),
        groups["size_sum"].to_pylist(),
        groups["buy_sum"].to_pylist(),
        groups["sell_sum"].to_pylist(),
        groups["quote_sum"].to_pylist(),
        groups["row_count"].to_pylist(),
        first["trade_id"].to_pylist(),
        last["trade_id"].to_pylist(),
        datetimes(first["time"]),
        datetimes(last["time"]),
    )
    return [Candle(*values) for values in zip(*columns, strict=True)]
