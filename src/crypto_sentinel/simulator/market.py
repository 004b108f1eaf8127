"""Deterministic trade generator that renders frames exactly like Coinbase Exchange.

Everything random comes from one seeded ``random.Random``, drawn from only at
construction and inside ``next_trade``, so a seed and a start id fix every trade (ids,
prices, sizes, sides, order ids) no matter how fast or slow the caller asks for them.
Wall-clock time only affects the ``time`` field and the rolling 24 h ticker statistics.
"""

from __future__ import annotations

import math
import random
import time as _time
from array import array
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from crypto_sentinel.simulator.books import (
    _EPOCH,
    _MASK64,
    _MICROSECOND,
    HISTORY_LIMIT,
    ProductSpec,
    ResumePoint,
    SimTrade,
    _Book,
    _fixed,
    _normal,
    _units,
    _uuid4,
    format_time,
)

__all__ = [
    "HISTORY_LIMIT",
    "Market",
    "ProductSpec",
    "ResumePoint",
    "SimTrade",
    "format_time",
]


class Market:
    """Deterministic trade generator (random-walk prices) shared by all connections.

    Each product has its own contiguous ``trade_id`` sequence starting at ``start_trade_id``
    and its own ``sequence`` counter that jumps by 1..20 between trades, as the real feed's
    does because order events share it. ``start_trade_id=None`` uses the current time in
    microseconds so a restarted simulator never reuses ids.

    ``resume`` continues products of an earlier run (what the lake holds): their ids go on
    from the last trade id and their price walk starts at the last price, so a restart does
    not put a second, unrelated price path into the same candles.
    """

    def __init__(
        self,
        products: list[str],
        seed: int = 1,
        start_trade_id: int | None = None,
        *,
        history_limit: int = HISTORY_LIMIT,
        resume: Mapping[str, ResumePoint] | None = None,
    ) -> None:
        if not products:
            raise ValueError("at least one product is required")
        if len(set(products)) != len(products):
            raise ValueError(f"duplicate products in {products!r}")
        if start_trade_id is None:
            start_trade_id = int(_time.time() * 1_000_000)
        if start_trade_id < 1:
            raise ValueError("start_trade_id must be >= 1")
        if history_limit < 0:
            raise ValueError("history_limit must be >= 0")
        resume = dict(resume or {})
        for product, point in resume.items():
            if product not in products:
                raise ValueError(f"resume point for {product!r}, which is not simulated")
            if point.trade_id < 0 or not Decimal(point.price) > 0:
                raise ValueError(f"invalid resume point for {product}: {point}")
        self.products = list(products)
        self.seed = seed
        self.start_trade_id = start_trade_id
        self.history_limit = history_limit
        self._rng = random.Random(seed)
        self.specs = {p: ProductSpec.for_id(p) for p in products}
        self.resume = resume
        self._books = {
            p: _Book(
                self.specs[p],
                self._rng,
                resume[p].trade_id + 1 if p in resume else start_trade_id,
                resume.get(p),
            )
            for p in products
        }
        self._order = [self._books[p] for p in products]
        for index, book in enumerate(self._order):
            book.index = index
        self._log = array("H")  # index into self._order of every retained emitted trade
        self._count = 0
        self._last_time = _EPOCH

    # ------------------------------------------------------------------ generation

    @property
    def count(self) -> int:
        """Trades generated since construction (not bounded by the history limit)."""
        return self._count

    def next_trade(self, now: datetime | None = None) -> SimTrade:
        """Generate the next trade on a pseudo-randomly chosen product."""
        book = self._order[self._rng.randrange(len(self._order))]
        return self._trade(book, now)

    def trade_for(self, product_id: str, now: datetime | None = None) -> SimTrade:
        """Generate the next trade on a given product (used to seed a recording's history)."""
        return self._trade(self._books[product_id], now)

    def _trade(self, book: _Book, now: datetime | None) -> SimTrade:
        rng = self._rng
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        # Times never go backwards, as in the real feed.
        if now < self._last_time:
            now = self._last_time
        self._last_time = now

        last = book.last
        if last is not None and rng.random() < 0.3:
            # The same taker sweeps another resting order at the same level.
            price = book.price
            maker_side = last.maker_side
            taker_bits = book.last_taker_bits
            maker_bits = rng.getrandbits(128)
        else:
            old = book.price
            step = rng.gauss(0.0, book.sigma) - book.kappa * (math.log(old) - book.anchor)
            price = max(1, round(old * math.exp(step)))
            side_draw = rng.random()
            if price > old:
                maker_side = "sell"  # an up-tick: a taker bought from a resting sell
            elif price < old:
                maker_side = "buy"
            else:
                maker_side = "buy" if side_draw < 0.5 else "sell"
            taker_bits = rng.getrandbits(128)
            # Large resting orders get filled in several pieces over time.
            if last is not None and maker_side == last.maker_side and rng.random() < 0.2:
                maker_bits = book.last_maker_bits
            else:
                maker_bits = rng.getrandbits(128)
        size_units = max(1, min(int(math.exp(rng.gauss(book.mu, 1.3))), 10**16))
        book.sequence += 1 + int(rng.random() * 20)

        trade = SimTrade(
            book.spec.id,
            book.next_trade_id,
            _normal(price, book.pdec),
            _normal(size_units, 8),
            maker_side,
            now,
            book.sequence,
            _uuid4(maker_bits),
            _uuid4(taker_bits),
        )
        book.next_trade_id += 1
        book.price = price
        book.last = trade
        book.last_maker_bits = maker_bits
        book.last_taker_bits = taker_bits
        book.roll(now.toordinal() * 24 + now.hour, price, size_units)
        self._count += 1
        limit = self.history_limit
        if limit:
            c = book.cols
            c.price.append(price)
            c.size.append(size_units)
            c.time_us.append((now - _EPOCH) // _MICROSECOND)
            c.seq.append(book.sequence)
            c.side.append(maker_side == "sell")
            c.maker_hi.append(maker_bits >> 64)
            c.maker_lo.append(maker_bits & _MASK64)
            c.taker_hi.append(taker_bits >> 64)
            c.taker_lo.append(taker_bits & _MASK64)
            self._log.append(book.index)
            # Trim in chunks so that bounding the history stays amortised O(1).
            slack = limit + max(limit // 8, 1)
            if len(c) > slack:
                c.trim(limit)
            if len(self._log) > slack:
                del self._log[: len(self._log) - limit]
        return trade

    def _rebuild(self, book: _Book, i: int) -> SimTrade:
        """The ``SimTrade`` stored at row ``i`` of a product's columns."""
        c = book.cols
        return SimTrade(
            book.spec.id,
            c.first_id + i,
            _normal(c.price[i], book.pdec),
            _normal(c.size[i], 8),
            "sell" if c.side[i] else "buy",
            _EPOCH + timedelta(microseconds=c.time_us[i]),
            c.seq[i],
            _uuid4(c.maker_hi[i] << 64 | c.maker_lo[i]),
            _uuid4(c.taker_hi[i] << 64 | c.taker_lo[i]),
        )

    def _rows(self, book: _Book) -> tuple[int, int]:
        """Row range of the retained (at most ``history_limit``) trades of a product."""
        n = len(book.cols)
        return max(0, n - self.history_limit), n

    # ------------------------------------------------------------------ queries

    def history(self, product_id: str) -> list[SimTrade]:
        """All retained trades of one product, oldest first (the last ``history_limit``).

        Rebuilt from compact storage on each call: cheap for a page, seconds for a million.
        """
        book = self._books[product_id]
        lo, hi = self._rows(book)
        return [self._rebuild(book, i) for i in range(lo, hi)]

    def emitted(self) -> list[SimTrade]:
        """All retained trades in emission order (the last ``history_limit``)."""
        log = self._log[-self.history_limit :] if self.history_limit else array("H")
        # The log's entries for a product are that product's newest trades, in order.
        row = [len(b.cols) for b in self._order]
        for index in log:
            row[index] -= 1
        out = []
        for index in log:
            book = self._order[index]
            out.append(self._rebuild(book, row[index]))
            row[index] += 1
        return out

    def last_trade(self, product_id: str) -> SimTrade | None:
        """Most recent trade of a product, kept even when history is disabled."""
        return self._books[product_id].last

    def price(self, product_id: str) -> str:
        """Current price of a product's walk (the next trade steps from it)."""
        book = self._books[product_id]
        return _normal(book.price, book.pdec)

    def sequence(self, product_id: str) -> int:
        """Current sequence number of a product (what a heartbeat reports)."""
        return self._books[product_id].sequence

    def trades_page(
        self,
        product_id: str,
        limit: int,
        before: int | None = None,
        after: int | None = None,
    ) -> list[SimTrade]:
        """One REST page, newest first: ``after`` gives ids below it, ``before`` ids above it.

        Ids are contiguous per product, so the page is a slice found by arithmetic.
        """
        book = self._books[product_id]
        lo_all, hi = self._rows(book)
        first = book.cols.first_id
        lo = lo_all
        if after is not None:
            hi = min(hi, max(lo_all, after - first))
        if before is not None:
            lo = max(lo, min(hi, before - first + 1))
        if lo >= hi:
            return []
        if before is not None and after is None:
            hi = min(hi, lo + limit)  # walking forward: the trades just newer than the cursor
        else:
            lo = max(lo, hi - limit)
        return [self._rebuild(book, i) for i in range(hi - 1, lo - 1, -1)]

    # ------------------------------------------------------------------ frames

    def match_frame(self, t: SimTrade, type_: str = "match") -> str:
        """The exact JSON text of a ``match`` (or ``last_match``) frame for a trade."""
        return (
            f'{{"type":"{type_}","trade_id":{t.trade_id},"maker_order_id":"{t.maker_order_id}",'
            f'"taker_order_id":"{t.taker_order_id}","side":"{t.maker_side}","size":"{t.size}",'
            f'"price":"{t.price}","product_id":"{t.product_id}","sequence":{t.sequence},'
            f'"time":"{format_time(t.time)}"}}'
        )

    def ticker_frame(self, t: SimTrade) -> str:
        """The ticker frame for a trade, with the layout of current Coinbase tickers.

        ``side`` is the taker side (opposite of the match side). Best bid/ask and their
        sizes are derived from the trade itself so rendering never consumes randomness;
        24 h statistics are the product's current ones.
        """
        book = self._books[t.product_id]
        d = book.pdec
        price = _units(t.price, d)
        h = (t.trade_id * 0x9E3779B1 + t.sequence * 0x85EBCA77) & 0xFFFFFFFF
        spread = 1 + h % 3
        if t.maker_side == "sell":  # taker bought at the ask
            bid, ask, taker = max(1, price - spread), price, "buy"
        else:
            bid, ask, taker = price, price + spread, "sell"
        # Top-of-book sizes below one unit keep the formatting to a single pad.
        bid_size = 1_000 + (h >> 4) % 50_000_000
        ask_size = 1_000 + (h >> 12) % 50_000_000
        ts = format_time(t.time)
        return (
            f'{{"type":"ticker","sequence":{t.sequence},"product_id":"{t.product_id}",'
            f'"price":"{t.price}",{book.stats_text()},'
            f'"volume_30d":"{_fixed(book.vol30_base + book.vol_total, 8)}",'
            f'"best_bid":"{_fixed(bid, d)}","best_bid_size":"0.{bid_size:08d}",'
            f'"best_ask":"{_fixed(ask, d)}","best_ask_size":"0.{ask_size:08d}",'
            f'"side":"{taker}","time":"{ts}","trade_id":{t.trade_id},'
            f'"last_size":"{t.size}"}}'
        )

    def heartbeat_frame(self, product_id: str, now: datetime) -> str:
        """Heartbeat in the key order real captures show (not the docs' example order).

        ``last_trade_id`` is 0 before the first trade, as the real feed reports it.
        """
        book = self._books[product_id]
        last_id = book.last.trade_id if book.last is not None else 0
        return (
            f'{{"type":"heartbeat","last_trade_id":{last_id},"product_id":"{product_id}",'
            f'"sequence":{book.sequence},"time":"{format_time(now)}"}}'
        )

    def day_stats(self, product_id: str) -> tuple[str, str, str, str]:
        """Rolling 24 h (open, high, low, base volume) as exact decimal text (other venues'
        tickers render these their own way)."""
        book = self._books[product_id]
        d = book.pdec
        if not book.buckets:
            price = _normal(book.price, d)
            return price, price, price, "0"
        open_ = book.buckets[0][1]
        high, low = _normal(book.high, d), _normal(book.low, d)
        return _normal(open_, d), high, low, _normal(book.vol24, 8)

    def rest_trade(self, t: SimTrade) -> dict[str, object]:
        """A ``GET /products/{id}/trades`` item: maker side, prices padded to 8 places."""
        return {
            "trade_id": t.trade_id,
            "side": t.maker_side,
            "size": _pad8(t.size),
            "price": _pad8(t.price),
            "time": format_time(t.time),
        }


def _pad8(text: str) -> str:
    """Pad a decimal string to 8 fractional digits, as the REST trades body shows."""
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(8, '0')}" if len(frac) <= 8 else text
