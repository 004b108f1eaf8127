"""Per-product state of the simulated market: product specs, the price walk and counters
of each book, and retained trades as compact columns (split from `market`, which drives them)."""

from __future__ import annotations

import math
import random
import re
from array import array
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import NamedTuple

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
