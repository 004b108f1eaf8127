"""Candles of every granularity from 1-minute candles: hot minutes from memory, older from the lake.

A page covers buckets aligned to multiples of the granularity since the Unix epoch (UTC).
The minutes of a page split at one instant, `cut`: before it the lake answers (DuckDB sums the
1-minute rows per bucket), from it on memory does (`MinuteBook.span`). A bucket that
straddles the cut is merged from both parts; `Candle.merge` is exact, so the result equals a
recomputation from the trades.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from crypto_sentinel.api.render import candle_items
from crypto_sentinel.api.state import MINUTE, HotState, MinuteBook
from crypto_sentinel.engine.candles import Candle
from crypto_sentinel.lake.query import LakeReader

GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
MAX_CANDLES = 300
DAY = timedelta(days=1)


class WindowError(ValueError):
    """A request window the API refuses (the message names the parameter)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def floor_time(value: datetime, granularity: int) -> datetime:
    seconds = int(value.timestamp())
    return datetime.fromtimestamp(seconds - seconds % granularity, UTC)


def ceil_time(value: datetime, granularity: int) -> datetime:
    floor = floor_time(value, granularity)
    return floor if floor == value else floor + timedelta(seconds=granularity)


def page_window(
    granularity: int, start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """[first bucket start, end of last bucket) of a page; at most MAX_CANDLES buckets."""
    step = timedelta(seconds=granularity)
    if start is None and end is None:
        hi = floor_time(now, granularity) + step
        return hi - MAX_CANDLES * step, hi
    if start is None:
        assert end is not None
        hi = ceil_time(utc(end), granularity)
        return hi - MAX_CANDLES * step, hi
    lo = floor_time(utc(start), granularity)
    hi = lo + MAX_CANDLES * step if end is None else ceil_time(utc(end), granularity)
    if hi <= lo:
        raise WindowError("start", "start must be before end")
    if (hi - lo) / step > MAX_CANDLES:
        raise WindowError(
            "end",
            f"at most {MAX_CANDLES} candles per request: with granularity {granularity} the"
            f" window may span {MAX_CANDLES * granularity} seconds",
        )
    return lo, hi


class CandleService:
    """Assembles candle pages from hot state and the lake."""

    def __init__(self, state: HotState, reader: LakeReader) -> None:
        self.state = state
        self.reader = reader
        self._lake_parts: dict[tuple[Any, ...], Candle | None] = {}
        self._lake_pages: dict[tuple[Any, ...], tuple[Any, dict[datetime, dict[str, Any]]]] = {}
        self._rendering: dict[tuple[Any, ...], threading.Lock] = {}

    def book(self, exchange: str, product_id: str) -> MinuteBook | None:
        return self.state.candles.get((exchange, product_id))

    @staticmethod
    def cut(book: MinuteBook | None, lo: datetime, hi: datetime) -> datetime:
        """Where memory takes over from the lake within [lo, hi)."""
        if book is None:
            return hi
        if book.since is None:
            return lo
        return min(max(book.since, lo), hi)

    def hot(
        self, book: MinuteBook, granularity: int, cut: datetime, hi: datetime
    ) -> dict[datetime, Candle]:
        """Buckets from memory for minutes in [cut, hi) (call on the event loop)."""
        out: dict[datetime, Candle] = {}
        if book.newest is None or cut >= hi:
            return out
        top = min(hi, book.newest + MINUTE)
        if granularity == 60:
            minutes = book.minutes
            if (top - cut) // MINUTE <= len(minutes):
                m = cut
                while m < top:
                    candle = minutes.get(m)
                    if candle is not None:
                        out[m] = candle
                    m += MINUTE
            else:
                out = {m: c for m, c in minutes.items() if cut <= m < top}
            return out
        step = timedelta(seconds=granularity)
        bucket = floor_time(cut, granularity)
        while bucket < top:
            candle = book.span(max(bucket, cut), bucket + step)
            if candle is not None:
                if candle.start != bucket:
                    candle = replace(candle, start=bucket)
                out[bucket] = candle
            bucket += step
        return out

    def lake(
        self, exchange: str, product_id: str, granularity: int, lo: datetime, cut: datetime
    ) -> dict[datetime, Candle]:
        """Buckets from the lake for minutes in [lo, cut) (blocking: call in a thread)."""
        if cut <= lo:
            return {}
        rows = self.reader.candle_buckets(exchange, product_id, lo, cut, granularity)
        return {utc(r["bucket"]): candle_from_aggregate(r) for r in rows.to_pylist()}

    def lake_items(
        self, exchange: str, product_id: str, granularity: int, lo: datetime, cut: datetime
    ) -> dict[datetime, dict[str, Any]]:
        """`lake`, already rendered (`candle_items`), not forming (blocking: call in a thread).

        The reader hands back the same table while the page's files stay the same, so the
        rendering is kept for it (copies: the route marks items `forming`)."""
        _, items = self.lake_page(exchange, product_id, granularity, lo, cut)
        return {start: dict(item) for start, item in items.items()}

    def lake_page(
        self, exchange: str, product_id: str, granularity: int, lo: datetime, cut: datetime
    ) -> tuple[object, dict[datetime, dict[str, Any]]]:
        """(token, items) of `lake_items`, the items not copied (read only). The token is the
        same object for as long as the page's files stay the same, so a caller can keep what
        it makes of the items (a rendered page) as long (blocking: call in a thread)."""
        if cut <= lo:
            return None, {}
        rows = self.reader.candle_buckets(exchange, product_id, lo, cut, granularity)
        key = (exchange, product_id, granularity, lo, cut)
        hit = self._lake_pages.get(key)
        if hit is not None and hit[0] is rows:
            return hit
        # many clients asking for a changed page: one renders it, the others meanwhile
        # answer with the page before (as old as one commit)
        rendering = self._rendering.setdefault(key, threading.Lock())
        if not rendering.acquire(blocking=hit is None):
            assert hit is not None
            return hit
        try:
            hit = self._lake_pages.get(key)
            if hit is None or hit[0] is not rows:
                if len(self._lake_pages) > 512:
                    self._lake_pages.clear()
                    self._rendering.clear()
                hit = self._lake_pages[key] = (rows, candle_items(rows, granularity))
            return hit
        finally:
            rendering.release()

    def lake_part(
        self, exchange: str, product_id: str, granularity: int, bucket: datetime, cut: datetime
    ) -> Candle | None:
        """The lake's share of one straddling bucket, cached (live push asks for it often)."""
        key = (exchange, product_id, granularity, bucket, cut)
        if key not in self._lake_parts:
            if len(self._lake_parts) > 1024:
                self._lake_parts.clear()
            found = self.lake(exchange, product_id, granularity, bucket, cut)
            self._lake_parts[key] = found.get(bucket)
        return self._lake_parts[key]

    # --- stored trades next to a window (`complete`) ------------------------------------

    @staticmethod
    def memory_before(book: MinuteBook | None, lo: datetime) -> tuple[bool, int | None]:
        """The last stored trade id before `lo` as memory knows it: (True, id or None when
        nothing is stored before), or (False, None) when only the lake can tell."""
        known, minute = CandleService.memory_minute_before(book, lo)
        if minute is None:
            return known, None
        assert book is not None
        return True, book.minutes[minute].last_trade_id

    @staticmethod
    def memory_minute_before(book: MinuteBook | None, lo: datetime) -> tuple[bool, datetime | None]:
        """The newest minute with trades before `lo` in memory (as `memory_before`)."""
        if book is None:
            return False, None
        minutes = book.minutes
        floor = book.since if book.since is not None else min(minutes, default=None)
        if floor is None or book.newest is None:
            return book.since is None, None
        top = min(lo, book.newest + MINUTE) - MINUTE
        if top >= floor:
            if (top - floor) // MINUTE < len(minutes):
                m = top
                while m >= floor:
                    if m in minutes:
                        return True, m
                    m -= MINUTE
            else:
                found = max((m for m in minutes if floor <= m <= top), default=None)
                if found is not None:
                    return True, found
        return book.since is None, None

    @staticmethod
    def memory_after(book: MinuteBook | None, hi: datetime) -> tuple[bool, int | None]:
        """The first stored trade id at or after `hi` as memory knows it (as `memory_before`)."""
        if book is None or not book.covers(hi):
            return False, None
        newest = book.newest
        if newest is None or hi > newest:
            return True, None
        minutes = book.minutes
        if (newest - hi) // MINUTE < len(minutes):
            m = hi
            while m <= newest:
                candle = minutes.get(m)
                if candle is not None:
                    return True, candle.first_trade_id
                m += MINUTE
            return True, None
        found = min((m for m in minutes if m >= hi), default=None)
        return True, None if found is None else minutes[found].first_trade_id

    def lake_neighbors(
        self,
        exchange: str,
        product_id: str,
        lo: datetime | None,
        hi: datetime | None,
        book: MinuteBook | None,
    ) -> tuple[int | None, int | None]:
        """The stored trade ids before `lo` and at or after `hi` from the lake (None: not
        asked, or none stored); blocking: call in a thread."""
        before = after = None
        if lo is not None:
            before = self.reader.neighbor_trade_id(exchange, product_id, lo, before=True)
        if hi is not None:
            after = self.reader.neighbor_trade_id(exchange, product_id, hi, before=False)
            if after is None and book is not None and book.since is not None:
                after = self.memory_after(book, book.since)[1]  # only memory has them yet
        return before, after

    # --- 24 hour statistics ------------------------------------------------------------

    @staticmethod
    def day_window(book: MinuteBook | None) -> tuple[datetime, datetime] | None:
        """The 24 h up to and including the newest minute memory has for the product."""
        if book is None or book.newest is None:
            return None
        hi = book.newest + MINUTE
        return hi - DAY, hi

    def lake_spans(
        self, exchange: str, windows: dict[str, tuple[datetime, datetime]]
    ) -> dict[str, Candle]:
        """One combined candle per product over its window (blocking: call in a thread)."""
        rows = self.reader.candle_spans(exchange, windows)
        return {r["product_id"]: candle_from_aggregate(r) for r in rows}


def candle_from_aggregate(row: dict[str, Any]) -> Candle:
    """A candle from an aggregate of 1-minute rows (amounts as decimals or exact text)."""
    return Candle(
        exchange=row["exchange"],
        product_id=row["product_id"],
        start=utc(row["bucket"]),
        open=Decimal(row["open"]),
        high=Decimal(row["high"]),
        low=Decimal(row["low"]),
        close=Decimal(row["close"]),
        volume=Decimal(row["volume"]),
        buy_volume=Decimal(row["buy_volume"]),
        sell_volume=Decimal(row["sell_volume"]),
        quote_volume=Decimal(row["quote_volume"]),
        trade_count=row["trade_count"],
        first_trade_id=row["first_trade_id"],
        last_trade_id=row["last_trade_id"],
        first_trade_time=row["first_trade_time"],
        last_trade_time=row["last_trade_time"],
    )
