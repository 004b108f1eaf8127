"""Spread, mid and depth over time from `gold.book_snapshots` (DuckDB over the Delta files).

Each stored snapshot (top levels every `book_snapshot_seconds`) becomes one point, computed
with the same `OrderBook` arithmetic as the live book response, in exact decimals. A snapshot
taken while the book was not valid stays a point (`valid` false, no values): the gap shows.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from crypto_sentinel.api.render import dec, iso
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.tables import BOOK_SNAPSHOTS

#: Longest window one request may ask (3,600 points at the default one-second interval).
MAX_SERIES_WINDOW = timedelta(hours=1)

#: One point per snapshot time: a checkpoint or resync (the whole book) may share its time
#: with the interval's top levels; the smaller row answers the same.
_SQL = (
    "SELECT time, valid, bids, asks FROM t WHERE exchange = ? AND product_id = ?"
    " AND time >= ? AND time < ?"
    " QUALIFY row_number() OVER (PARTITION BY time ORDER BY depth NULLS LAST) = 1"
    " ORDER BY time"
)


def _dates(lo: datetime, hi: datetime) -> list[date]:
    first, last = lo.date(), (hi - timedelta(microseconds=1)).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _levels(raw: Any) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(level["price"]), Decimal(level["size"])) for level in raw or []]


def point(time: datetime, valid: bool, bids: Any, asks: Any, bps: int) -> dict[str, Any]:
    """One snapshot's best bid and ask, spread, mid and the sizes within `bps` of the mid."""
    if not valid:
        return {"time": iso(time), "valid": False, "best_bid": None, "best_ask": None,
                "spread": None, "mid": None, "bid_depth": None, "ask_depth": None}  # fmt: skip
    book = OrderBook("", "")
    book.load_snapshot(_levels(bids), _levels(asks))
    bid_depth, ask_depth = book.depth_within(bps)
    return {
        "time": iso(time),
        "valid": True,
        "best_bid": dec(book.best_bid()),
        "best_ask": dec(book.best_ask()),
        "spread": dec(book.spread()),
        "mid": dec(book.mid()),
        "bid_depth": dec(bid_depth),
        "ask_depth": dec(ask_depth),
    }


def book_series(
    reader: LakeReader, exchange: str, product_id: str, lo: datetime, hi: datetime, bps: int
) -> list[dict[str, Any]]:
    """Points of [lo, hi), oldest first; [] when the lake holds no snapshots there."""
    rows = reader.query(BOOK_SNAPSHOTS, _SQL, [exchange, product_id, lo, hi], _dates(lo, hi))
    return [point(r["time"], bool(r["valid"]), r["bids"], r["asks"], bps) for r in rows]
