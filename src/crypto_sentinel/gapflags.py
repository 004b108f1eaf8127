"""Which candles overlap a gap the backfill could not fill (flagged at read time).

The silver and gold schemas stay as they are; the flag comes from `bronze.gaps`. An unfilled
gap's trades never arrived, so their times are unknown: the gap spans from the last stored
trade before it to the first stored trade after it (or to when it was detected). Unfilled
gaps are rare, so the spans are recomputed from the lake at most every `ttl` seconds.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader

Span = tuple[datetime, datetime]

#: SQL condition (over `bronze.gaps` as `t`, aliased `g`): no later `filled` record covers
#: the gap's ids (a rerun of `sentinel history`, or a later backfill, fetched what was
#: refused before; a gap whose last id is unknown is covered from its first id on).
NOT_CLOSED = (
    "NOT EXISTS (SELECT 1 FROM t AS f"
    " WHERE f.outcome = 'filled' AND f.exchange = g.exchange AND f.product_id = g.product_id"
    " AND f.first_missing_id <= g.first_missing_id"
    " AND (g.last_missing_id IS NULL OR f.last_missing_id >= g.last_missing_id)"
    " AND f.detected_at > g.detected_at)"
)
#: A gap of trades (a book resync misses no trade: kind `book`).
TRADE_GAP = "g.kind <> 'book'"
#: A gap with missing trades that is still open.
OPEN_GAP = f"g.outcome <> 'filled' AND g.missing > 0 AND {TRADE_GAP} AND {NOT_CLOSED}"


class GapFlags:
    def __init__(self, reader: LakeReader, ttl: float = 5.0) -> None:
        self.reader = reader
        self.ttl = ttl
        self._spans: dict[tuple[str, str], list[Span]] = {}
        self._loaded = float("-inf")
        self._lock = threading.Lock()

    def fresh(self) -> bool:
        return time.monotonic() - self._loaded < self.ttl

    @property
    def loaded(self) -> bool:
        """Read at least once (the spans may be stale, not missing)."""
        return self._loaded > float("-inf")

    def spans(self, exchange: str, product_id: str) -> list[Span]:
        """Unfilled-gap spans of one product (from the cache; call `load` when not fresh)."""
        return self._spans.get((exchange, product_id), [])

    def load(self) -> None:
        """Re-read unfilled gaps and bound each by the stored trades around it (blocking)."""
        with self._lock:
            if self.fresh():
                return
            spans: dict[tuple[str, str], list[Span]] = {}
            gaps = self.reader.query(
                T.GAPS,
                "SELECT exchange, product_id, first_missing_id AS lo, last_missing_id AS hi,"
                f" detected_at FROM t AS g WHERE {OPEN_GAP}",
            )
            for g in gaps:
                around = self.reader.query(
                    T.TRADES,
                    "SELECT max(time) FILTER (WHERE trade_id < ?) AS before,"
                    " min(time) FILTER (WHERE trade_id > ?) AS after"
                    " FROM t WHERE exchange = ? AND product_id = ?",
                    [g["lo"], g["hi"], g["exchange"], g["product_id"]],
                )
                row = around[0] if around else {}
                start = row.get("before") or g["detected_at"]
                end = row.get("after") or g["detected_at"]
                spans.setdefault((g["exchange"], g["product_id"]), []).append((start, end))
            self._spans = spans
            self._loaded = time.monotonic()


def overlaps(spans: list[Span], start: datetime, seconds: int) -> bool:
    """True if the bucket [start, start + seconds) overlaps any span."""
    end = start + timedelta(seconds=seconds)
    return any(lo < end and hi >= start for lo, hi in spans)
