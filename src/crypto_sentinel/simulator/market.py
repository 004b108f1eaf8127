"""Deterministic trade generator that renders frames exactly like Coinbase Exchange.

Everything random comes from one seeded ``random.Random``, drawn from only at
construction and inside ``next_trade``, so a seed and a start id fix every trade (ids,
prices, sizes, sides, order ids) no matter how fast or slow the caller asks for them.
Wall-clock time only affects the ``time`` field and the rolling 24 h ticker statistics.
"""

from __future__ import annotations

import math
import random
import re
import time as _time
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import NamedTuple

__all__ = [
    "HISTORY_LIMIT",
    "Market",
    "ProductSpec",
    "ResumePoint",
    "SimTrade",
    "format_time",
]

HISTORY_LIMIT = 1_000_000
"""Trades kept per product (and in the emission log); older ones are forgotten."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PRODUCT_RE = re.compile(r"^[A-Z0-9]{1,16}-[A-Z0-9]{1,16}$")
_MICROSECOND = timedelta(microseconds=1)
_MASK64 = (1 << 64) - 1
_SIZE_SCALE = 10**8  # every simulated product trades in base increments of 0.00000001

# Rough USD value of a unit of each currency: gives sensible start prices for any pair.
_USD_VALUE = {
    "BTC": 60_000.0,
    "ETH": 3_000.0,
    "SOL": 150.0,
    "USD": 1.0,
    "USDC": 1.0,
    "USDT": 1.0,
    "DAI": 1.0,
    "EUR": 1.08,
    "GBP": 1.27,
}
_QUOTE_INCREMENT = {
    "USD": "0.01",
    "USDC": "0.01",
    "USDT": "0.01",
    "DAI": "0.01",
    "EUR": "0.01",
    "GBP": "0.01",
    "BTC": "0.00000001",
    "ETH": "0.00001",
}


_time_prefix: tuple[tuple[int, int, int, int], str] = ((0, 0, 0, 0), "")


def format_time(dt: datetime) -> str:
    """Render a UTC datetime as Coinbase does: always 6 fractional digits and a ``Z``.

    The part up to the second is cached because it changes at most once per second and
    formatting it dominates the cost of rendering a frame.
    """
    global _time_prefix
    key = (dt.toordinal(), dt.hour, dt.minute, dt.second)
    cached_key, prefix = _time_prefix
    if key != cached_key:
        prefix = dt.strftime("%Y-%m-%dT%H:%M:%S")
        _time_prefix = (key, prefix)
    return f"{prefix}.{dt.microsecond:06d}Z"


def _uuid4(bits: int) -> str:
    """Format 128 random bits as a version-4 UUID string (cheaper than ``uuid.UUID``)."""
    h = f"{bits:032x}"
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def _fixed(units: int, decimals: int) -> str:
    """Integer count of 10**-decimals as a decimal string padded to ``decimals`` places."""
    if decimals == 0:
        return str(units)
    s = str(units).rjust(decimals + 1, "0")
    return f"{s[:-decimals]}.{s[-decimals:]}"


def _normal(units: int, decimals: int) -> str:
    """Like ``_fixed`` but without trailing zeros, as match prices and sizes are sent."""
    if decimals == 0:
        return str(units)
    s = str(units).rjust(decimals + 1, "0")
    frac = s[-decimals:].rstrip("0")
    return f"{s[:-decimals]}.{frac}" if frac else s[:-decimals]


def _units(text: str, decimals: int) -> int:
    """Parse a decimal string back into integer units of 10**-decimals."""
    whole, _, frac = text.partition(".")
    return int(whole + frac.ljust(decimals, "0")) if decimals else int(whole)


def _decimals(increment: str) -> int:
    """Fractional digits of a power-of-ten increment such as ``0.01``; others are refused."""
    sign, digits, exponent = Decimal(increment).normalize().as_tuple()
    if sign or digits != (1,) or not isinstance(exponent, int) or exponent > 0:
        raise ValueError(f"increment {increment!r} is not a power of ten <= 1")
    return -exponent


class ResumePoint(NamedTuple):
    """Where a product's previous run stopped (from the lake): its last trade id and price,
    and the highest feed sequence it used (trades and tickers share it; it never goes back)."""

    trade_id: int
    price: Decimal
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class SimTrade:
    """One simulated trade; ``maker_side`` is what Coinbase puts in match ``side``."""

    product_id: str
    trade_id: int
    price: str
    size: str
    maker_side: str
    time: datetime
    sequence: int
    maker_order_id: str
    taker_order_id: str


@dataclass(frozen=True, slots=True)
class ProductSpec:
    """Static product facts, shaped after one entry of ``GET /products``."""

    id: str
    base_currency: str
    quote_currency: str
    quote_increment: str
    base_increment: str
    start_price: float

    @classmethod
    def for_id(cls, product_id: str) -> ProductSpec:
        """Derive increments and a plausible start price from the two currency codes."""
        if not _PRODUCT_RE.match(product_id):
            raise ValueError(f"invalid product id {product_id!r} (expected e.g. 'BTC-USD')")
        base, quote = product_id.split("-")
        quote_increment = _QUOTE_INCREMENT.get(quote, "0.0001")
        start = _USD_VALUE.get(base, 100.0) / _USD_VALUE.get(quote, 1.0)
        return cls(product_id, base, quote, quote_increment, "0.00000001", start)

    def rest(self) -> dict[str, object]:
        """The product object with the same keys and value types as the real REST body."""
        return {
            "id": self.id,
            "base_currency": self.base_currency,
            "quote_currency": self.quote_currency,
            "base_min_size": "0.00001",
            "base_max_size": "1000000",
            "quote_increment": self.quote_increment,
            "base_increment": self.base_increment,
            "display_name": f"{self.base_currency}/{self.quote_currency}",
            "min_market_funds": "1",
            "max_market_funds": "1000000",
            "margin_enabled": False,
            "post_only": False,
            "limit_only": False,
            "cancel_only": False,
            "trading_disabled": False,
            "status": "online",
            "status_message": "",
        }


class _Columns:
    """Retained trades of one product as parallel typed arrays.

    About 65 bytes a trade instead of ~500 for ``SimTrade`` objects, so keeping a million
    trades per product stays affordable; ``SimTrade`` objects are rebuilt on demand.
    """

    __slots__ = (
        "first_id",
        "maker_hi",
        "maker_lo",
        "price",
        "seq",
        "side",
        "size",
        "taker_hi",
        "taker_lo",
        "time_us",
    )

    def __init__(self, first_id: int) -> None:
        self.first_id = first_id  # trade_id of index 0
        self.price = array("q")
        self.size = array("q")
        self.time_us = array("q")
        self.seq = array("q")
        self.side = array("b")  # 0 = maker buy, 1 = maker sell
        self.maker_hi = array("Q")
        self.maker_lo = array("Q")
        self.taker_hi = array("Q")
        self.taker_lo = array("Q")

    def __len__(self) -> int:
        return len(self.seq)

    def _arrays(self) -> tuple[array[int], ...]:
        return (
            self.price,
            self.size,
            self.time_us,
            self.seq,
            self.side,
            self.maker_hi,
            self.maker_lo,
            self.taker_hi,
            self.taker_lo,
        )

    def trim(self, limit: int) -> None:
        """Keep the last ``limit`` rows; called rarely (in chunks) so it stays O(1) amortised."""
        drop = len(self) - limit
        if drop > 0:
            for column in self._arrays():
                del column[:drop]
            self.first_id += drop


class _Book:
    """Mutable per-product state: price walk, id/sequence counters, stats, history."""

    __slots__ = (
        "anchor",
        "buckets",
        "cols",
        "high",
        "index",
        "kappa",
        "last",
        "last_maker_bits",
        "last_taker_bits",
        "low",
        "mu",
        "next_trade_id",
        "pdec",
        "pre",
        "price",
        "sequence",
        "sigma",
        "spec",
        "stats_key",
        "stats_str",
        "vol24",
        "vol30_base",
        "vol_total",
    )

    def __init__(
        self,
        spec: ProductSpec,
        rng: random.Random,
        start_trade_id: int,
        resume: ResumePoint | None = None,
    ) -> None:
        self.spec = spec
        self.pdec = _decimals(spec.quote_increment)
        tick_value = 10.0**-self.pdec
        self.price = max(1, round(spec.start_price * rng.uniform(0.97, 1.03) / tick_value))
        if resume is not None:  # the walk continues from the last stored price
            units = (Decimal(resume.price).scaleb(self.pdec)).to_integral_value(ROUND_HALF_EVEN)
            self.price = max(1, int(units))
        self.anchor = math.log(self.price)
        # ~0.005 % per trade with a weak pull to the start price: a day stays within a few %.
        self.sigma = 5e-5
        self.kappa = 2e-6
        # Median trade worth about 150 USD-equivalent, log-normally spread.
        self.mu = math.log(
            max(150.0 / (spec.start_price * _usd(spec.quote_currency)), 1e-8) * _SIZE_SCALE
        )
        self.next_trade_id = start_trade_id
        # Sequences start at the trade id so that a restarted simulator (time-based ids)
        # also never goes back in sequence; the offset makes products differ.
        self.sequence = start_trade_id + rng.randrange(1, 1000)
        if resume is not None:  # ... and a resumed one goes on after the stored sequences
            self.sequence = max(self.sequence, resume.sequence)
        self.last: SimTrade | None = None
        self.last_maker_bits = 0
        self.last_taker_bits = 0
        self.cols = _Columns(start_trade_id)
        self.index = 0  # position in the market's product list (set by Market)
        # Synthetic "yesterday" so the first ticker already carries plausible 24 h stats;
        # it is drawn now (not lazily) to keep the random stream independent of timing.
        drift = rng.uniform(-0.04, 0.04)
        span = rng.uniform(0.01, 0.05)
        open_ = max(1, round(self.price * (1 - drift)))
        # A day of 20k..200k trades of the mean log-normal size (exp(mu + 1.3**2 / 2)).
        vol = int(rng.uniform(2e4, 2e5) * math.exp(self.mu + 0.845))
        self.pre = (
            open_,
            round(max(open_, self.price) * (1 + span / 2)),
            max(1, round(min(open_, self.price) * (1 - span / 2))),
            vol,
            rng.randrange(23),  # hour of yesterday's high
            rng.randrange(23),  # hour of yesterday's low
        )
        self.vol30_base = vol * rng.randint(25, 35)
        self.vol_total = 0
        # Hour buckets [hour, open, high, low, volume] covering the last 24 h of trades.
        self.buckets: deque[list[int]] = deque()
        self.high = 0
        self.low = 0
        self.vol24 = 0
        self.stats_key: tuple[int, int, int] = (-1, -1, -1)
        self.stats_str = ("", "")

    def _seed(self, hour: int, price: int) -> None:
        """Spread the synthetic previous day over 23 hourly buckets ending before ``hour``.

        Hourly opens move linearly from the drawn open to the first price, so the stats roll
        off gradually instead of jumping when the first simulated hour ends.
        """
        o0, pre_high, pre_low, vol, k_high, k_low = self.pre
        n = 23
        for j in range(n):
            o = o0 + (price - o0) * j // n
            nxt = o0 + (price - o0) * (j + 1) // n
            hi, lo = max(o, nxt), min(o, nxt)
            if j == k_high:
                hi = max(hi, pre_high)
            if j == k_low:
                lo = min(lo, pre_low)
            self.buckets.append([hour - n + j, o, hi, max(1, lo), vol // 24])

    def roll(self, hour: int, price: int, size: int) -> None:
        """Fold a trade into the rolling 24 h window (hourly buckets)."""
        b = self.buckets
        if not b:
            self._seed(hour, price)
        if b[-1][0] != hour:
            b.append([hour, price, price, price, 0])
            while b[0][0] <= hour - 24:
                b.popleft()
            self.high = max(x[2] for x in b)
            self.low = min(x[3] for x in b)
            self.vol24 = sum(x[4] for x in b)
        cur = b[-1]
        if price > cur[2]:
            cur[2] = price
        if price < cur[3]:
            cur[3] = price
        cur[4] += size
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.vol24 += size
        self.vol_total += size

    def stats_text(self) -> str:
        """``open_24h .. high_24h`` fields as JSON text; prices re-rendered only on change."""
        b = self.buckets
        key = (b[0][1], self.low, self.high) if b else (self.price, self.price, self.price)
        if key != self.stats_key:
            d = self.pdec
            self.stats_key = key
            self.stats_str = (
                _normal(key[0], d),
                f'"low_24h":"{_normal(key[1], d)}","high_24h":"{_normal(key[2], d)}"',
            )
        open_, low_high = self.stats_str
        return f'"open_24h":"{open_}","volume_24h":"{_fixed(self.vol24, 8)}",{low_high}'


def _usd(currency: str) -> float:
    return _USD_VALUE.get(currency, 1.0)


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
