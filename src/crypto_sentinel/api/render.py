"""JSON shapes of trades, tickers, candles and order books, shared by the REST routes and the
live push.

Prices and sizes leave as exact decimal strings, times as ISO-8601 UTC with microseconds and
a Z. These helpers run on the hot path for every response item, so they avoid generic
formatting machinery.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel.books.orderbook import BookView
from crypto_sentinel.engine.candles import Candle
from crypto_sentinel.model import EXACT, QUANTUM, Ticker, Trade, format_decimal

#: "YYYY-MM-DDTHH:MM:SS" of the seconds formatted lately, keyed by unix second (`iso_ns`) or
#: by the fields (`iso`). Formatting times was a sixth of the event loop's CPU in a live run
#: (every `/latest` item and pushed trade has two or three), and live times share few seconds.
_SECONDS: dict[int | tuple[int, ...], str] = {}
_SECONDS_KEPT = 4096


def iso(value: datetime) -> str:
    """`2024-01-01T00:00:00.000000Z` (the exchange's style), for aware datetimes."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    key = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    second = _SECONDS.get(key)
    if second is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        second = _SECONDS[key] = "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}".format(*key)
    return f"{second}.{value.microsecond:06d}Z"


def iso_ns(ns: int) -> str:
    """Unix nanoseconds as `iso` text (exact to the microsecond, no float rounding)."""
    unix_second, rest = divmod(ns, 1_000_000_000)
    second = _SECONDS.get(unix_second)
    if second is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        second = _SECONDS[unix_second] = iso(datetime.fromtimestamp(unix_second, UTC))[:-8]
    return f"{second}.{rest // 1000:06d}Z"


def dec(value: Decimal | str | None) -> str | None:
    """Exact decimal text without exponent or trailing zeros; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = Decimal(value)
    return format_decimal(value)


def trade_item(trade: Trade) -> dict[str, Any]:
    return {
        "trade_id": trade.trade_id,
        "price": format_decimal(trade.price),
        "size": format_decimal(trade.size),
        "side": trade.side,
        "time": iso(trade.time),
        "exchange": trade.exchange,
    }


def trade_row_item(row: dict[str, Any]) -> dict[str, Any]:
    """A silver.trades row (from DuckDB) in the same shape as `trade_item`."""
    return {
        "trade_id": row["trade_id"],
        "price": format_decimal(row["price"]),
        "size": format_decimal(row["size"]),
        "side": row["side"],
        "time": iso(row["time"]),
        "exchange": row["exchange"],
    }


class TradeRowItems:
    """`trade_row_item`, kept per stored trade (exchange, product, trade id): a stored trade
    never changes, and a replica over the lake is asked the same pages many times a second
    (rendering was a quarter of a trade page's CPU). Bounded: emptied when full."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: dict[tuple[str, str, int], dict[str, Any]] = {}

    def __call__(self, product_id: str, row: dict[str, Any]) -> dict[str, Any]:
        key = (row["exchange"], product_id, row["trade_id"])
        item = self._items.get(key)
        if item is None:
            if len(self._items) >= self.size:
                self._items.clear()
            item = self._items[key] = trade_row_item(row)
        return item


def latest_item(trade: Trade, processed_ns: int) -> dict[str, Any]:
    """One `/latest` entry: the seed's fields first, then ours."""
    return {
        "symbol": trade.product_id,
        "price": format_decimal(trade.price),
        "side": trade.side,
        "timestamp": iso(trade.time),
        "processing_time": iso_ns(processed_ns),
        "size": format_decimal(trade.size),
        "trade_id": trade.trade_id,
        "exchange": trade.exchange,
        "recv_time": iso_ns(trade.recv_ns),
    }


def latest_row_item(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "symbol": row["product_id"],
        "price": format_decimal(row["price"]),
        "side": row["side"],
        "timestamp": iso(row["time"]),
        "processing_time": iso(row["recv_time"]),
        "size": format_decimal(row["size"]),
        "trade_id": row["trade_id"],
        "exchange": row["exchange"],
        "recv_time": iso(row["recv_time"]),
    }


def push_trade(trade: Trade) -> dict[str, Any]:
    """A trade on the live push: the REST shape plus product and receive time."""
    return {
        "type": "trade",
        "product_id": trade.product_id,
        **trade_item(trade),
        "recv_time": iso_ns(trade.recv_ns),
    }


def candle_item(candle: Candle, granularity: int, forming: bool) -> dict[str, Any]:
    return {
        "start": iso(candle.start),
        "open": format_decimal(candle.open),
        "high": format_decimal(candle.high),
        "low": format_decimal(candle.low),
        "close": format_decimal(candle.close),
        "volume": format_decimal(candle.volume),
        "buy_volume": format_decimal(candle.buy_volume),
        "sell_volume": format_decimal(candle.sell_volume),
        "quote_volume": format_decimal(candle.quote_volume),
        "vwap": format_decimal(candle.vwap),
        "trade_count": candle.trade_count,
        "first_trade_id": candle.first_trade_id,
        "last_trade_id": candle.last_trade_id,
        "first_trade_time": iso(candle.first_trade_time),
        "last_trade_time": iso(candle.last_trade_time),
        "granularity": granularity,
        "forming": forming,
    }


#: Amount columns of a candle, in `candle_item` order.
_AMOUNTS = (
    "open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "quote_volume",
)  # fmt: skip


def candle_items(table: pa.Table, granularity: int) -> dict[datetime, dict[str, Any]]:
    """`candle_item`s (not forming) of a table of candles, by start; whole columns at once.

    The API's history pages come from the lake as Arrow: formatting each column in Arrow
    (decimal text without trailing zeros, ISO times) and building the dicts last costs a
    fraction of converting every value to a Python object and formatting it one by one.
    `vwap` is the one division, done exactly as `Candle.vwap` does it.
    """
    if table.num_rows == 0:
        return {}
    text: dict[str, list[Any]] = {}
    for name in _AMOUNTS:
        digits = pc.utf8_rtrim(pc.cast(table[name], pa.string()), characters="0")
        text[name] = pc.utf8_rtrim(digits, characters=".").to_pylist()
    for name, column in (("start", "bucket"), ("first_trade_time", "first_trade_time"),
                         ("last_trade_time", "last_trade_time")):  # fmt: skip
        times = pc.cast(table[column], pa.timestamp("us", tz="UTC"))
        text[name] = pc.strftime(times, "%Y-%m-%dT%H:%M:%SZ").to_pylist()  # %S has the µs
    starts = pc.cast(table["bucket"], pa.timestamp("us", tz="UTC")).to_pylist()
    counts = table["trade_count"].to_pylist()
    first_ids = table["first_trade_id"].to_pylist()
    last_ids = table["last_trade_id"].to_pylist()
    out: dict[datetime, dict[str, Any]] = {}
    for i, start in enumerate(starts):
        volume, quote = text["volume"][i], text["quote_volume"][i]
        vwap = EXACT.divide(Decimal(quote), Decimal(volume)).quantize(QUANTUM, context=EXACT)
        out[start] = {
            "start": text["start"][i],
            "open": text["open"][i],
            "high": text["high"][i],
            "low": text["low"][i],
            "close": text["close"][i],
            "volume": volume,
            "buy_volume": text["buy_volume"][i],
            "sell_volume": text["sell_volume"][i],
            "quote_volume": quote,
            "vwap": format_decimal(vwap),
            "trade_count": counts[i],
            "first_trade_id": first_ids[i],
            "last_trade_id": last_ids[i],
            "first_trade_time": text["first_trade_time"][i],
            "last_trade_time": text["last_trade_time"][i],
            "granularity": granularity,
            "forming": False,
        }
    return out


def ticker_item(ticker: Ticker) -> dict[str, Any]:
    return {
        "product_id": ticker.product_id,
        "exchange": ticker.exchange,
        "price": dec(ticker.price),
        "size": dec(ticker.last_size),
        "side": ticker.side,
        "trade_id": ticker.trade_id,
        "time": iso(ticker.time),
        "best_bid": dec(ticker.best_bid),
        "best_bid_size": dec(ticker.best_bid_size),
        "best_ask": dec(ticker.best_ask),
        "best_ask_size": dec(ticker.best_ask_size),
        "open_24h": dec(ticker.open_24h),
        "high_24h": dec(ticker.high_24h),
        "low_24h": dec(ticker.low_24h),
        "volume_24h": dec(ticker.volume_24h),
        "volume_30d": dec(ticker.volume_30d),
        "sequence": ticker.sequence,
        "source": "ticker",
    }


def ticker_row_item(row: dict[str, Any]) -> dict[str, Any]:
    """A silver.tickers row in the shape of `ticker_item`."""
    names = ("best_bid", "best_bid_size", "best_ask", "best_ask_size", "open_24h", "high_24h")
    item: dict[str, Any] = {
        "product_id": row["product_id"],
        "exchange": row["exchange"],
        "price": dec(row["price"]),
        "size": dec(row["last_size"]),
        "side": row["side"],
        "trade_id": row["trade_id"],
        "time": iso(row["time"]),
    }
    for name in names:
        item[name] = dec(row[name])
    item["low_24h"] = dec(row["low_24h"])
    item["volume_24h"] = dec(row["volume_24h"])
    item["volume_30d"] = dec(row["volume_30d"])
    item["sequence"] = row["sequence"]
    item["source"] = "ticker"
    return item


def ticker_from_trade(product_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """No ticker seen yet: the last trade is the best we know (no book fields)."""
    return {
        "product_id": product_id,
        "exchange": item["exchange"],
        "price": item["price"],
        "size": item["size"],
        "side": item["side"],
        "trade_id": item["trade_id"],
        "time": item["time"],
        "best_bid": None,
        "best_bid_size": None,
        "best_ask": None,
        "best_ask_size": None,
        "open_24h": None,
        "high_24h": None,
        "low_24h": None,
        "volume_24h": None,
        "volume_30d": None,
        "sequence": None,
        "source": "trade",
    }


def stats_item(
    product_id: str,
    exchange: str,
    window: Candle | None,
    last: tuple[Decimal, datetime] | None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
) -> dict[str, Any]:
    """24 h statistics: open/high/low/volume of the window and the change to the last price."""
    last_price = last[0] if last else (window.close if window else None)
    item: dict[str, Any] = {
        "product_id": product_id,
        "exchange": exchange,
        "last": dec(last_price),
        "last_trade_time": iso(last[1]) if last else None,
        "open_24h": None,
        "high_24h": None,
        "low_24h": None,
        "volume_24h": "0",
        "quote_volume_24h": "0",
        "vwap_24h": None,
        "trade_count_24h": 0,
        "change_24h": None,
        "change_24h_percent": None,
        "window_start": iso(window_start) if window_start else None,
        "window_end": iso(window_end) if window_end else None,
    }
    if window is None:
        return item
    close = last_price if last_price is not None else window.close
    change = EXACT.subtract(close, window.open)
    percent = EXACT.divide(EXACT.multiply(change, Decimal(100)), window.open)
    item.update(
        open_24h=format_decimal(window.open),
        high_24h=format_decimal(window.high),
        low_24h=format_decimal(window.low),
        volume_24h=format_decimal(window.volume),
        quote_volume_24h=format_decimal(window.quote_volume),
        vwap_24h=format_decimal(window.vwap),
        trade_count_24h=window.trade_count,
        change_24h=format_decimal(change),
        change_24h_percent=format_decimal(percent.quantize(Decimal("0.0001"), context=EXACT)),
    )
    return item


def book_item(view: BookView) -> dict[str, Any]:
    """A book's top levels as `[[price, size], ...]` best first, shared by REST and push.

    A book that is not valid (no snapshot yet, or out of sync) shows no levels: what it still
    holds is not the market, and `invalid_reason` says why."""
    shown = view.valid
    return {
        "exchange": view.exchange,
        "product_id": view.product_id,
        "bids": [[format_decimal(p), format_decimal(s)] for p, s in view.bids] if shown else [],
        "asks": [[format_decimal(p), format_decimal(s)] for p, s in view.asks] if shown else [],
        "update_id": view.update_id,
        "time": None if view.time is None else iso(view.time),
        "valid": view.valid,
        "invalid_reason": view.invalid_reason,
    }
