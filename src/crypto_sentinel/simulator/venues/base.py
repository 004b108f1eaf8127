"""What the simulator's server asks of a venue other than Coinbase Exchange, and helpers the
venues share (exact decimal text, time formats, candles, id and time look-ups in the market).

A venue renders the shared ``Market``'s trades in its own protocol: WebSocket subscribe
handling, live trade and ticker frames, heartbeats, a per-connection stamp (Coinbase Advanced
numbers every frame it sends) and its REST routes. Sessions keep their subscriptions in the
server's channel names (``matches``, ``ticker``, ``heartbeat``), so fan-out, hidden trades and
the fault plan work the same for every venue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson

from crypto_sentinel.simulator.depth import BookUpdate, Depth
from crypto_sentinel.simulator.faults import FrameShape
from crypto_sentinel.simulator.market import Market, SimTrade

__all__ = [
    "EPOCH",
    "Candle",
    "Query",
    "RestAnswer",
    "Venue",
    "candles",
    "decimals_of",
    "epoch_ms",
    "epoch_us",
    "plain",
    "quote_of",
    "rfc3339_ns",
    "taker_side",
    "trades_from_id",
    "trades_since",
]

Query = dict[str, list[str]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass
class RestAnswer:
    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)


class Venue:
    """One protocol; the server calls these hooks (see ``server.SimulatorServer``)."""

    name = ""
    shape: FrameShape
    #: True when every outbound frame of a connection gets a per-connection stamp.
    stamps = False
    #: Seconds between batches: ``stamp`` may hold frames back and ``flush`` sends them.
    batch_interval = 0.0
    #: The market's order books (the server sets it); book snapshots and REST depth read it.
    depth: Depth

    def book_frames(self, session: object, update: BookUpdate) -> list[str]:
        """The frames a connection subscribed to the product's book gets for one update."""
        return []

    def ws_refusal(self, path: str, query: Query, market: Market) -> tuple[int, object] | None:
        """None to accept a WebSocket upgrade on ``path``; else (HTTP status, JSON body)."""
        return None

    def on_open(self, session: object, path: str, query: Query, market: Market) -> list[str]:
        """Frames to send when a connection opens; may subscribe it (URL streams)."""
        return []

    def on_message(self, session: object, raw: str | bytes, market: Market) -> list[str]:
        """Apply one client message to ``session.subs``; return the frames that answer it."""
        raise NotImplementedError

    def trade_frame(self, market: Market, t: SimTrade) -> str:
        raise NotImplementedError

    def ticker_frame(self, market: Market, t: SimTrade) -> str:
        raise NotImplementedError

    def heartbeat_frames(self, session: object, now_ns: int, tick: int) -> list[str]:
        """Frames one connection gets at each heartbeat interval (``tick`` counts them)."""
        return []

    def stamp(self, session: object, frame: str) -> str | None:
        """The frame as this connection sends it, or None when held for the next batch."""
        return frame

    def lost(self, session: object, count: int) -> None:
        """``count`` frames of this connection were lost in transit (the fault plan's drops):
        a venue that numbers its frames skips their numbers."""

    def flush(self, session: object) -> list[str]:
        """The batch(es) held for a connection, ready to send (already stamped)."""
        return []

    def is_trades_path(self, path: str) -> bool:
        """Is this the REST trades endpoint (the one REST faults act on)?"""
        raise NotImplementedError

    def rest(self, market: Market, path: str, query: Query) -> RestAnswer:
        raise NotImplementedError

    def throttled(self) -> RestAnswer:
        """The answer to a request the fault plan throttles (HTTP 429)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------- helpers


def taker_side(t: SimTrade) -> str:
    """The market stores the maker's side (Coinbase's convention); the taker is the other."""
    return "buy" if t.maker_side == "sell" else "sell"


def epoch_us(dt: datetime) -> int:
    return (dt - EPOCH) // _US


def epoch_ms(dt: datetime) -> int:
    return epoch_us(dt) // 1000


def rfc3339_ns(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def plain(value: Decimal) -> str:
    """Exact decimal text without exponent or trailing zeros (``65083.67``, ``0.5``, ``12``)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def decimals_of(market: Market, product: str) -> int:
    exponent = Decimal(market.specs[product].quote_increment).normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def quote_of(market: Market, t: SimTrade) -> tuple[str, str, str, str]:
    """(bid, bid size, ask, ask size) around a trade, derived from the trade alone (no
    randomness drawn): the taker's side of the book is where the trade printed."""
    tick = Decimal(market.specs[t.product_id].quote_increment)
    price = Decimal(t.price)
    h = (t.trade_id * 0x9E3779B1 + t.sequence * 0x85EBCA77) & 0xFFFFFFFF
    spread = (1 + h % 3) * tick
    if t.maker_side == "sell":  # the taker bought at the ask
        bid, ask = max(tick, price - spread), price
    else:
        bid, ask = price, price + spread
    bid_size = Decimal(1_000 + (h >> 4) % 50_000_000).scaleb(-8)
    ask_size = Decimal(1_000 + (h >> 12) % 50_000_000).scaleb(-8)
    return plain(bid), plain(bid_size), plain(ask), plain(ask_size)


def _bounds(market: Market, product: str) -> tuple[int, int] | None:
    """(oldest, newest) retained trade id of a product, or None before its first trade."""
    newest = market.trades_page(product, 1)
    if not newest:
        return None
    oldest = market.trades_page(product, 1, before=0)
    return oldest[0].trade_id, newest[0].trade_id


def trades_from_id(market: Market, product: str, first_id: int, limit: int) -> list[SimTrade]:
    """Up to ``limit`` retained trades with ids >= ``first_id``, oldest first."""
    page = market.trades_page(product, limit, before=first_id - 1)
    return page[::-1]


def trades_since(market: Market, product: str, after_us: int, limit: int) -> list[SimTrade]:
    """Up to ``limit`` trades whose time is after ``after_us`` (µs since the epoch), oldest
    first. Times never decrease along a product's ids, so the first is found by bisection."""
    bounds = _bounds(market, product)
    if bounds is None:
        return []
    lo, hi = bounds[0], bounds[1] + 1  # answer in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if epoch_us(market.trades_page(product, 1, before=mid - 1)[0].time) > after_us:
            hi = mid
        else:
            lo = mid + 1
    return trades_from_id(market, product, lo, limit)


def latest(market: Market, product: str, limit: int) -> list[SimTrade]:
    """The ``limit`` newest trades, newest first."""
    return market.trades_page(product, limit)


@dataclass
class Candle:
    start: int  # seconds since the epoch
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)
    quote_volume: Decimal = Decimal(0)
    count: int = 0
    taker_buy_volume: Decimal = Decimal(0)
    taker_buy_quote: Decimal = Decimal(0)

    @property
    def vwap(self) -> Decimal:
        return self.quote_volume / self.volume if self.volume else self.close


def candles(trades: Iterable[SimTrade], seconds: int) -> list[Candle]:
    """Candles of ``seconds`` from trades given oldest first; oldest first, empty buckets
    left out (as the exchanges do)."""
    out: dict[int, Candle] = {}
    for t in trades:
        start = epoch_us(t.time) // 1_000_000 // seconds * seconds
        price, size = Decimal(t.price), Decimal(t.size)
        c = out.get(start)
        if c is None:
            c = out[start] = Candle(start, price, price, price, price)
        c.high = max(c.high, price)
        c.low = min(c.low, price)
        c.close = price
        c.volume += size
        c.quote_volume += price * size
        c.count += 1
        if t.maker_side == "sell":
            c.taker_buy_volume += size
            c.taker_buy_quote += price * size
    return [out[k] for k in sorted(out)]


def window(rows: Sequence[Candle], start: int | None, end: int | None) -> list[Candle]:
    return [
        c for c in rows if (start is None or c.start >= start) and (end is None or c.start <= end)
    ]


def number(text: str) -> orjson.Fragment:
    """Exact decimal text as a JSON number literal (never through float)."""
    return orjson.Fragment(text.encode())


def one(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def int_param(query: Query, name: str, default: int | None = None) -> int | None:
    """A non-negative integer parameter; ValueError names the bad one."""
    value = one(query, name)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"invalid {name}: {value!r}")
    return int(value)
