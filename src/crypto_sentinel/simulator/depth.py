"""Level-2 order books of the simulated market, kept consistent with its trades.

A product's book exists from the first time a client asks for it (a book subscription or a
REST depth request): nothing is spent on books nobody reads. From then on every trade of the
product moves it: the trade takes liquidity at the best levels of the side it hits (levels
priced through the trade go, the level at the trade price shrinks), the other side backs off
so the book is never crossed, a few resting orders near the top change, and levels are added
around the new price so each side keeps about `LEVELS` levels.

Each changed level gets its own update id (contiguous per product, as Binance numbers them),
so one trade's `BookUpdate` spans ids `first_id..last_id`. A fault plan may make a product's
ids skip (a Binance U/u gap). Prices carry the product's fixed decimals and sizes 8 decimals
(`Decimal` with that exponent), so every venue renders the same exact text and Kraken's
checksum text is well defined. Randomness comes from a per-product `random.Random`, never from
the market's, so trades stay the same whether or not anyone watches a book.
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from crypto_sentinel.books.orderbook import LevelPair, OrderBook, Side
from crypto_sentinel.simulator.books import _decimals
from crypto_sentinel.simulator.market import Market, SimTrade

__all__ = ["LEVELS", "BookUpdate", "Change", "Depth", "SimBook", "TrueBook", "text"]

LEVELS = 150  # levels per side the simulated books keep (about)
_SIZE_DECIMALS = 8
_CHURN = 3  # at most this many resting orders near the top change per trade

Change = tuple[Side, Decimal, Decimal]  # (side, price, new absolute size; 0 removes)


def text(value: Decimal) -> str:
    """A level's exact decimal text with its fixed places, never in exponent form."""
    return format(value, "f")


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """The level changes one trade caused, in the order they happened."""

    product_id: str
    first_id: int
    last_id: int
    changes: list[Change]
    time: datetime


@dataclass(frozen=True, slots=True)
class TrueBook:
    """Ground truth for tests: the best levels and the update id they correspond to."""

    product_id: str
    update_id: int
    bids: list[LevelPair]
    asks: list[LevelPair]
    time: datetime | None


class SimBook:
    """One product's book: integer ticks and size units inside (sorted, for cheap walks),
    mirrored as exact `Decimal` levels in `book` (what truth and snapshots read)."""

    def __init__(self, product_id: str, decimals: int, price: int, seed: int) -> None:
        self.product_id = product_id
        self.decimals = decimals
        self.rng = random.Random(zlib.crc32(f"{seed}:{product_id}".encode()))
        self.book = OrderBook("simulator", product_id)
        self.update_id = self.rng.randrange(1_000_000, 9_000_000)
        self.time: datetime | None = None
        self._units: dict[Side, dict[int, int]] = {"bid": {}, "ask": {}}  # ticks -> units
        self._sorted: dict[Side, list[int]] = {"bid": [], "ask": []}  # ticks, ascending
        self._changes: dict[tuple[Side, int], int] = {}  # this trade's levels: final units
        for i in range(LEVELS):
            self._set("bid", price - 1 - i, self._size())
            self._set("ask", price + 1 + i, self._size())
        self._changes.clear()
        self.book.update_id = self.update_id
        self.book.mark_valid()

    def _size(self) -> int:
        return self.rng.randint(1, 400) * self.rng.choice((1_000, 10_000, 100_000, 1_000_000))

    def _set(self, side: Side, ticks: int, units: int) -> None:
        """Set a level to `units` (<= 0 removes it; removing an absent level does nothing)."""
        levels, ordered = self._units[side], self._sorted[side]
        if units <= 0:
            if levels.pop(ticks, None) is None:
                return
            del ordered[bisect_left(ordered, ticks)]
            units = 0
        else:
            if ticks not in levels:
                insort(ordered, ticks)
            levels[ticks] = units
        price = Decimal(ticks).scaleb(-self.decimals)
        self.book.apply(side, price, Decimal(units).scaleb(-_SIZE_DECIMALS))
        self._changes[(side, ticks)] = units

    def _best(self, side: Side) -> int | None:
        ordered = self._sorted[side]
        if not ordered:
            return None
        return ordered[-1] if side == "bid" else ordered[0]

    # ------------------------------------------------------------------ a trade

    def trade(self, price: int, size: int, maker_side: str, when: datetime) -> list[Change]:
        """Apply one trade at `price` ticks for `size` units; the level changes, in order."""
        self._changes.clear()
        hit: Side = "ask" if maker_side == "sell" else "bid"  # a taker buy lifts the asks
        other: Side = "bid" if hit == "ask" else "ask"
        sign = 1 if hit == "ask" else -1  # asks better below, bids better above
        # Levels the trade walked through are taken, the one at its price shrinks.
        while (best := self._best(hit)) is not None and (price - best) * sign > 0:
            self._set(hit, best, 0)
        self._set(hit, price, self._units[hit].get(price, 0) - size)
        # The other side backs off to strictly behind the price: never crossed.
        while (best := self._best(other)) is not None and (best - price) * sign >= 0:
            self._set(other, best, 0)
        self._churn(price)
        self._refill(price)
        self.time = when
        scale = Decimal(1).scaleb(-self.decimals)
        return [
            (side, Decimal(ticks) * scale, Decimal(units).scaleb(-_SIZE_DECIMALS))
            for (side, ticks), units in self._changes.items()
        ]

    def _churn(self, price: int) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, _CHURN)):
            side: Side = "bid" if rng.random() < 0.5 else "ask"
            ordered = self._sorted[side]
            near = ordered[-20:] if side == "bid" else ordered[:20]
            if near and rng.random() < 0.6:
                ticks = rng.choice(near)
                self._set(side, ticks, 0 if rng.random() < 0.3 else self._size())
            else:
                step = rng.randint(1, 20)
                self._set(side, price - step if side == "bid" else price + step, self._size())

    def _refill(self, price: int) -> None:
        """Quotes come back around the price: a level within 3 ticks on each side, and
        about `LEVELS` levels per side (the worst trimmed past `LEVELS` + 20)."""
        rng = self.rng
        for side, sign in (("bid", -1), ("ask", 1)):
            s: Side = "bid" if side == "bid" else "ask"
            best = self._best(s)
            if best is None or abs(best - price) > 3:
                self._set(s, price + sign * rng.randint(1, 3), self._size())
            ordered = self._sorted[s]
            worst = ordered[0] if s == "bid" else ordered[-1]
            for _ in range(LEVELS - len(ordered)):
                worst += sign * rng.randint(1, 3)
                self._set(s, worst, self._size())
            extra = len(ordered) - (LEVELS + 20)
            if extra > 0:
                for ticks in list(ordered[:extra] if s == "bid" else ordered[-extra:]):
                    self._set(s, ticks, 0)


class Depth:
    """The books of a market, created on first use; `gap` (the fault plan's) may make a
    product's update ids skip."""

    def __init__(self, market: Market, gap: Callable[[str], int] | None = None) -> None:
        self.market = market
        self.gap = gap
        self.books: dict[str, SimBook] = {}
        self.updates = 0

    def ensure(self, product_id: str) -> SimBook:
        """The product's book, made around the current price the first time it is asked for."""
        book = self.books.get(product_id)
        if book is None:
            spec = self.market.specs[product_id]
            decimals = _decimals(spec.quote_increment)
            price = int(Decimal(self.market.price(product_id)).scaleb(decimals))
            book = SimBook(product_id, decimals, price, self.market.seed)
            self.books[product_id] = book
        return book

    def on_trade(self, trade: SimTrade) -> BookUpdate | None:
        """Move the product's book by one trade (None when nobody has asked for it)."""
        book = self.books.get(trade.product_id)
        if book is None:
            return None
        price = int(Decimal(trade.price).scaleb(book.decimals))
        size = int(Decimal(trade.size).scaleb(_SIZE_DECIMALS))
        changes = book.trade(price, size, trade.maker_side, trade.time)
        if not changes:
            return None
        skip = self.gap(trade.product_id) if self.gap is not None else 0
        first = book.update_id + 1 + skip
        book.update_id = first + len(changes) - 1
        book.book.update_id = book.update_id
        self.updates += 1
        return BookUpdate(trade.product_id, first, book.update_id, changes, trade.time)

    def truth(self, product_id: str, depth: int | None = None) -> TrueBook:
        """The product's true book (best `depth` levels a side) and its update id."""
        book = self.ensure(product_id)
        bids, asks = book.book.top(depth)
        return TrueBook(product_id, book.update_id, bids, asks, book.time)
