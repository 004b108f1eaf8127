"""Spread, mid and depth over time from `gold.book_snapshots` (DuckDB over the Delta files).

Each stored snapshot (top levels every `book_snapshot_seconds`) becomes one point, computed
with the same `OrderBook` arithmetic as the live book response, in exact decimals. A snapshot
taken while the book was not valid stays a point (`valid` false, no values): the gap shows.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

from crypto_sentinel.api.render import dec, iso
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.tables import PRICE, UTC_TS, TableSpec

#: One price level as stored: exact price and size.
LEVEL = pa.struct([("price", PRICE), ("size", PRICE)])
#: The layout this module reads (one place: the lake's writer of the table must agree).
BOOK_SNAPSHOTS = TableSpec(
    "gold.book_snapshots",
    pa.schema(
        [
            ("exchange", pa.string()),
            ("product_id", pa.string()),
            ("time", UTC_TS),
            ("valid", pa.bool_()),
            ("bids", pa.list_(LEVEL)),  # best first
            ("asks", pa.list_(LEVEL)),  # best first
            ("date", pa.date32()),
        ]
    ),
    partition_by=("date", "exchange"),
    key=("exchange", "product_id", "time"),
)
#: Longest window one request may ask (3,600 points at the default one-second interval).
MAX_SERIES_WINDOW = timedelta(hours=1)

_SQL = (
    "SELECT time, valid, bids, asks FROM t WHERE exchange = ? AND product_id = ?"
    " AND time >= ? AND time < ? ORDER BY time"
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
