"""Hot state: recent trades, current tickers and recent 1-minute candles in memory.

The API's hot path reads only this, so `/latest` costs microseconds and never touches disk.
It is fed by the engine's listener on the event loop thread and read on that thread too, so
it needs no locks. Every structure says from where on it is complete (`TradeRing.complete_from`,
`MinuteBook.since`); older requests go to the lake, so memory and lake are never mixed up.

Candles are built here from the candle deltas the engine announces per chunk of frames
(`engine/chunks.py`: the chunk's new trades of one minute), merged into the minute; the
engine's own candle objects are not followed, as they are partial until the lake's row of the
minute is known.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from crypto_sentinel import metrics
from crypto_sentinel.engine.candles import Candle, minute_start
from crypto_sentinel.engine.chunks import ChunkNews
from crypto_sentinel.engine.records import NewTrades, Pair
from crypto_sentinel.model import Ticker, Trade

MINUTE = timedelta(minutes=1)


@dataclass(slots=True)
class SeenTrade:
    trade: Trade
    processed_ns: int
    item: dict[str, Any] | None = None  # rendered `/latest` entry, built on first request
    rest: dict[str, Any] | None = None  # rendered `/v1/.../trades` entry, likewise


def _trade_id(seen: SeenTrade) -> int:
    return seen.trade.trade_id


@dataclass(slots=True)
class _Waiting:
    """One chunk's trades of a product, not yet records; `lo`, `hi`: its id range."""

    trades: NewTrades
    processed_ns: int
    lo: int
    hi: int


class TradeRing(deque[SeenTrade]):
    """The newest trades of one product in trade-id order.

    Invariant: it holds every accepted trade with `trade_id >= complete_from`, so a page of
    trades below a cursor can be answered from memory down to `complete_from` and the rest
    from the lake without skipping or repeating a trade.

    A chunk's trades wait as Arrow rows (`add_new`) until the ring is read (`settle`): at
    ingest rates most are never read before newer ones push them out, so waiting chunks that
    newer ones push out are dropped unread.
    """

    def __init__(self, maxlen: int, complete_from: int) -> None:
        super().__init__(maxlen=maxlen)
        self.size = maxlen
        self.complete_from = complete_from
        self._waiting: list[_Waiting] = []
        self._waiting_rows = 0
        self._cut = False  # waiting rows were dropped (older than the newest `maxlen`)

    def add_new(self, trades: NewTrades, processed_ns: int) -> None:
        """One chunk's new trades of this product (Arrow rows or records alike)."""
        lo, hi = trades.id_range()
        self._waiting.append(_Waiting(trades, processed_ns, lo, hi))
        self._waiting_rows += len(trades)
        if self._waiting_rows > 2 * self.size:
            self._drop_old_waiting()

    def _drop_old_waiting(self) -> None:
        """Drop waiting chunks that newer ones push out of the ring in any case: only while
        each chunk's ids are all above the previous chunk's (the usual case)."""
        waiting = self._waiting
        ascending = all(a.hi < b.lo for a, b in pairwise(waiting))
        if not ascending:  # rare (a backfill): make the records now, memory stays bounded
            self.settle()
            return
        while self._waiting_rows - len(waiting[0].trades) >= self.size:
            self._waiting_rows -= len(waiting.pop(0).trades)
            self._cut = True

    def settle(self) -> None:
        """Make records of the waiting rows and add them (before every read)."""
        if not self._waiting:
            return
        for part in self._waiting:
            for trade in part.trades.records():
                self.add(SeenTrade(trade, part.processed_ns))
        if self._cut and len(self) == self.size:
            # every dropped row is older than the oldest kept: memory is complete from there
            self.complete_from = max(self.complete_from, self[0].trade.trade_id)
        self._waiting, self._waiting_rows, self._cut = [], 0, False

    def add(self, seen: SeenTrade) -> None:
        trade_id = seen.trade.trade_id
        if trade_id < self.complete_from:
            return  # older than what memory covers: the lake has (or will have) it
        if not self or trade_id > self[-1].trade.trade_id:
            if len(self) == self.maxlen:
                self.complete_from = self[1].trade.trade_id
            self.append(seen)
            return
        at = bisect.bisect_left(self, trade_id, key=_trade_id)  # a backfilled trade
        if at < len(self) and self[at].trade.trade_id == trade_id:
            return
        if len(self) == self.maxlen:
            if at == 0:
                return
            self.popleft()
            at -= 1
            self.complete_from = self[0].trade.trade_id
        self.insert(at, seen)

    def below(self, before: int | None, limit: int) -> list[SeenTrade]:
        """Up to `limit` trades with trade_id < before, newest first."""
        end = len(self) if before is None else bisect.bisect_left(self, before, key=_trade_id)
        return [self[i] for i in range(end - 1, max(end - limit, 0) - 1, -1)]


class MinuteBook:
    """1-minute candles of one (exchange, product): complete for every minute >= `since`.

    `since` None means complete for all time (the lake held nothing for the product). Old
    minutes leave once they are `keep` minutes behind the newest. Merged spans of minutes
    are cached; `history` changes whenever a minute other than the newest changes, which
    invalidates the cache.
    """

    def __init__(self, since: datetime | None, keep: int) -> None:
        self.since = since
        self.keep = keep
        self.minutes: dict[datetime, Candle] = {}
        self.newest: datetime | None = None
        self.history = 0
        self._spans: dict[tuple[datetime, datetime], tuple[int, Candle | None]] = {}
        self.rendered: dict[tuple[int, datetime], tuple[int, bool, dict[str, Any]]] = {}

    def covers(self, start: datetime) -> bool:
        return self.since is None or start >= self.since

    def load(self, candle: Candle) -> None:
        """A stored minute from the lake (warm-up)."""
        self.minutes[candle.start] = candle
        if self.newest is None or candle.start > self.newest:
            self.newest = candle.start

    def add(self, delta: Candle) -> None:
        """Merge the candle of some new trades of one minute."""
        start = delta.start
        if self.since is not None and start < self.since:
            return
        candle = self.minutes.get(start)
        if candle is None:
            self.minutes[start] = replace(delta)  # the engine keeps the delta object
            if self.newest is None or start > self.newest:
                self.newest = start
                self._evict()
            else:
                self.history += 1
        else:
            candle.merge(delta)
            if start != self.newest:
                self.history += 1

    def _evict(self) -> None:
        assert self.newest is not None
        cutoff = self.newest - (self.keep - 1) * MINUTE
        if self.since is not None and self.since >= cutoff:
            return
        self.since = cutoff
        for start in [m for m in self.minutes if m < cutoff]:
            del self.minutes[start]
        self.history += 1
        self.rendered = {k: v for k, v in self.rendered.items() if k[1] >= cutoff}

    def span(self, lo: datetime, hi: datetime) -> Candle | None:
        """All trades of minutes in [lo, hi) as one candle (None if none); do not mutate it."""
        newest = self.newest
        if newest is None or hi <= lo:
            return None
        if hi <= newest or lo > newest:
            return self._closed(lo, hi)
        closed = self._closed(lo, newest) if lo < newest else None
        current = self.minutes.get(newest)
        if closed is None:
            return current
        if current is None:
            return closed
        merged = replace(closed)
        merged.merge(current)
        return merged

    def _closed(self, lo: datetime, hi: datetime) -> Candle | None:
        """A span without the forming minute: cached until an older minute changes."""
        key = (lo, hi)
        hit = self._spans.get(key)
        if hit is not None and hit[0] == self.history:
            return hit[1]
        merged: Candle | None = None
        count = int((hi - lo) / MINUTE)
        if count <= len(self.minutes):
            found = (self.minutes.get(lo + i * MINUTE) for i in range(count))
            parts = [c for c in found if c is not None]
        else:
            parts = [c for m, c in self.minutes.items() if lo <= m < hi]
        for part in parts:
            if merged is None:
                merged = replace(part, start=lo)
            else:
                merged.merge(part)
        if len(self._spans) > 4096:
            self._spans.clear()
        self._spans[key] = (self.history, merged)
        return merged


class HotState:
    """Recent market state of every (exchange, product) the engine has seen."""

    def __init__(
        self, trades_per_product: int = 1000, latest_size: int = 50, hot_minutes: int = 1510
    ) -> None:
        self.trades_per_product = trades_per_product
        self.hot_minutes = hot_minutes
        self.latest: deque[SeenTrade] = deque(maxlen=latest_size)
        self.trades: dict[Pair, TradeRing] = {}
        self.tickers: dict[Pair, Ticker] = {}
        self.candles: dict[Pair, MinuteBook] = {}
        #: What the lake held at warm-up: highest trade id and newest trade time per pair.
        #: None until a warm-up ran; then memory knows where the lake ends.
        self.lake_marks: dict[Pair, tuple[int, datetime]] | None = None
        self.lake_pairs: set[Pair] = set()
        self.warm = False
        self.accepted = 0
        self._second = 0  # unix second being counted for the ingest-rate gauge
        self._in_second = 0

    # --- the engine listener -------------------------------------------------------------

    def on_chunk(self, news: ChunkNews) -> None:
        """Engine listener: a chunk's new trades and tickers, and its candle deltas."""
        trades = news.trades
        n = len(trades)
        if n:
            now = time.time_ns()
            latest = self.latest
            self.latest.extend(SeenTrade(t, now) for t in trades.records(-(latest.maxlen or n)))
            for key, part in trades.per_product().items():
                ring = self.trades.get(key)
                if ring is None:
                    first = part.first()
                    ring = self.trades[key] = TradeRing(self.trades_per_product, self._floor(first))
                    self._book(key, first.time)
                ring.add_new(part, now)
            skipped = -self.accepted % 16  # every 16th trade of the stream
            for recv_ns in trades.recv_times()[skipped::16]:
                metrics.CONSUMER_LAG.observe((now - recv_ns) / 1e9)
            self.accepted += n
            second = now // 1_000_000_000
            if second != self._second:
                metrics.INGEST_RATE.set(self._in_second if second == self._second + 1 else 0)
                self._second, self._in_second = second, 0
            self._in_second += n
        for ticker in news.tickers:
            self.tickers[(ticker.exchange, ticker.product_id)] = ticker
        for candle in news.candles:
            self._book((candle.exchange, candle.product_id), candle.first_trade_time).add(candle)

    def _book(self, key: Pair, first_time: datetime) -> MinuteBook:
        """The minute book of a product, made when its first trade arrives."""
        book = self.candles.get(key)
        if book is None:
            book = self.candles[key] = MinuteBook(self._since(key, first_time), self.hot_minutes)
        return book

    def _floor(self, first: Trade) -> int:
        """`complete_from` of a ring that warm-up did not fill."""
        if self.lake_marks is None:  # lake unknown: only what streams from now on
            return first.trade_id
        mark = self.lake_marks.get((first.exchange, first.product_id))
        return 0 if mark is None else mark[0] + 1

    def _since(self, key: Pair, first_time: datetime) -> datetime | None:
        """`since` of a minute book that warm-up did not fill."""
        if self.lake_marks is None:
            return minute_start(first_time) + MINUTE
        mark = self.lake_marks.get(key)
        return None if mark is None else minute_start(mark[1]) + MINUTE

    def refresh_rate(self) -> None:
        """Zero the ingest-rate gauge when trades stopped (it is set only as they arrive)."""
        if time.time_ns() // 1_000_000_000 > self._second + 1:
            metrics.INGEST_RATE.set(0)

    # --- reads ---------------------------------------------------------------------------

    def ring(self, exchange: str, product_id: str) -> TradeRing | None:
        """The product's trades in memory, with every waiting row made a record."""
        ring = self.trades.get((exchange, product_id))
        if ring is not None:
            ring.settle()
        return ring

    def exchanges_of(self, product_id: str) -> list[str]:
        """Exchanges with trades of the product in memory."""
        return sorted(ex for ex, p in self.trades if p == product_id)

    def pairs(self) -> set[Pair]:
        """Every (exchange, product) memory or the lake (as of warm-up) knows."""
        return set(self.trades) | set(self.tickers) | set(self.candles) | self.lake_pairs

    def last_trade(self, exchange: str, product_id: str) -> Trade | None:
        ring = self.ring(exchange, product_id)
        return ring[-1].trade if ring else None
