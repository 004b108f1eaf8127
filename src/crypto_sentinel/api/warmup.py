"""Rebuild hot state from the lake before the stream starts, within a time budget.

Steps, each logged: what the lake holds per product (needed: it tells memory where the lake
ends), the newest trades, the newest day of 1-minute candles and the newest ticker of each
product. Each step reads only the newest files or rows it needs, so its time and memory do
not grow with the lake's history. A step that would start after the budget is spent is
skipped; memory then covers only what streams in from now on and the lake answers the rest,
so a short budget costs speed, never correctness.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from crypto_sentinel import metrics
from crypto_sentinel.api.state import MINUTE, HotState, MinuteBook, SeenTrade, TradeRing
from crypto_sentinel.engine.candles import Candle, minute_start
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.model import Ticker, Trade, format_decimal

log = logging.getLogger(__name__)
Extents = dict[tuple[str, str], tuple[int, int, datetime, datetime]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Tickers accompany trades; the newest one is looked for this far before the newest trade
#: (a product without a ticker that recent is answered from the lake when asked).
TICKER_LOOKBACK = timedelta(minutes=10)


def to_ns(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1) * 1000


def warm_up(state: HotState, reader: LakeReader, budget: float) -> dict[str, Any]:
    """Fill `state` from the lake; returns what was loaded (also logged)."""
    started = time.monotonic()
    summary: dict[str, Any] = {"products": 0, "trades": 0, "candles": 0, "tickers": 0}
    skipped: list[str] = []

    def spent() -> float:
        return time.monotonic() - started

    extents = reader.trade_extents()
    marks = {pair: (e[1], e[3]) for pair, e in extents.items()}
    state.lake_marks = marks
    state.lake_pairs = set(marks)
    summary["products"] = len(marks)
    log.info("hot state: lake holds %d products (%.2f s)", len(marks), spent())
    if marks:
        if spent() < budget:
            summary["trades"] = _load_trades(state, reader, extents)
            log.info("hot state: %d recent trades loaded (%.2f s)", summary["trades"], spent())
        else:
            skipped.append("trades")
        if spent() < budget:
            summary["candles"] = _load_candles(state, reader, extents)
            log.info("hot state: %d 1-minute candles loaded (%.2f s)", summary["candles"], spent())
        else:
            skipped.append("candles")
        if spent() < budget:
            summary["tickers"] = _load_tickers(state, reader, extents)
            log.info("hot state: %d tickers loaded (%.2f s)", summary["tickers"], spent())
        else:
            skipped.append("tickers")
    if skipped:
        log.warning(
            "hot state: warm-up budget of %.0f s spent; skipped %s (served from the lake)",
            budget,
            ", ".join(skipped),
        )
    state.warm = True
    summary["seconds"] = round(spent(), 3)
    summary["skipped"] = skipped
    metrics.WARMUP_SECONDS.set(summary["seconds"])
    return summary


def _load_trades(state: HotState, reader: LakeReader, extents: Extents) -> int:
    """The newest trades of each product (the lake reads only its newest files for them)."""
    loaded = 0
    seen_all: list[SeenTrade] = []
    for (exchange, product), (lowest, *_) in extents.items():
        rows = reader.trades(exchange, product, None, state.trades_per_product)
        if not rows:
            continue
        rows.reverse()  # oldest first
        first = rows[0]["trade_id"]
        # complete from the oldest loaded trade; from 0 if that is the lake's first one
        ring = TradeRing(state.trades_per_product, 0 if first == lowest else first)
        state.trades[(exchange, product)] = ring
        for row in rows:
            seen = SeenTrade(_trade(row), to_ns(row["recv_time"]))
            ring.add(seen)
            seen_all.append(seen)
        loaded += len(rows)
    seen_all.sort(key=lambda s: (s.trade.time, s.trade.trade_id))
    state.latest.extend(seen_all[-(state.latest.maxlen or 50) :])
    return loaded


def _trade(row: dict[str, Any]) -> Trade:
    return Trade(
        exchange=row["exchange"],
        product_id=row["product_id"],
        trade_id=row["trade_id"],
        price=row["price"],
        size=row["size"],
        side=row["side"],
        time=row["time"],
        recv_ns=to_ns(row["recv_time"]),
        sequence=row["sequence"],
        maker_order_id=row["maker_order_id"],
        taker_order_id=row["taker_order_id"],
        conn_id=row["conn_id"] or "",
        venue_symbol=row.get("venue_symbol") or row["product_id"],
    )


def _load_candles(state: HotState, reader: LakeReader, extents: Extents) -> int:
    since = {
        pair: minute_start(newest) - (state.hot_minutes - 1) * MINUTE
        for pair, (_, _, _, newest) in extents.items()
    }
    for pair, start in since.items():
        oldest = extents[pair][2]
        # None: memory holds every minute the lake has for the product (no lake reads needed)
        state.candles[pair] = MinuteBook(None if oldest >= start else start, state.hot_minutes)
    rows = reader.candles_since(since)
    for row in rows:
        state.candles[(row["exchange"], row["product_id"])].load(Candle.from_row(row))
    return len(rows)


def _load_tickers(state: HotState, reader: LakeReader, extents: Extents) -> int:
    """The newest ticker of each product, looked for near its newest trade."""
    loaded = 0
    for (exchange, product), (*_, newest) in extents.items():
        r = reader.newest_ticker(exchange, product, since=newest - TICKER_LOOKBACK)
        if r is None:
            continue
        state.tickers[(exchange, product)] = Ticker(
            exchange=r["exchange"],
            product_id=r["product_id"],
            sequence=r["sequence"],
            price=_text(r["price"]) or "0",
            best_bid=_text(r["best_bid"]),
            best_ask=_text(r["best_ask"]),
            best_bid_size=_text(r["best_bid_size"]),
            best_ask_size=_text(r["best_ask_size"]),
            open_24h=_text(r["open_24h"]),
            high_24h=_text(r["high_24h"]),
            low_24h=_text(r["low_24h"]),
            volume_24h=_text(r["volume_24h"]),
            volume_30d=_text(r["volume_30d"]),
            side=r["side"],
            last_size=_text(r["last_size"]),
            trade_id=r["trade_id"],
            time=r["time"],
            recv_ns=to_ns(r["recv_time"]),
        )
        loaded += 1
    return loaded


def _text(value: Any) -> str | None:
    return None if value is None else format_decimal(value)
