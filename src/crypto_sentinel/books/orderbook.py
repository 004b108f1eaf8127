"""One product's level-2 order book: exact decimal levels, best first on demand.

Every venue's book keeper (the sync rule of `sources/<venue>/book.py`), the engine's book
processor, the `at=` rebuild from the lake and the API share this one structure, so a book
rebuilt from stored updates is compared level by level with the live one.

Prices are keys as `Decimal` (so `2.27` and `2.27000000` are one level); sizes keep the
venue's exact text as `Decimal` (Kraken's checksum is computed from it). A size of 0 removes
a level, and removing an absent level is normal (every venue documents it).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

Side = Literal["bid", "ask"]
LevelPair = tuple[Decimal, Decimal]  # (price, size)

_ZERO = Decimal(0)
_BPS = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class BookView:
    """A consistent copy of the top of a book, what the API and push send."""

    exchange: str
    product_id: str
    bids: list[LevelPair]  # best (highest) first
    asks: list[LevelPair]  # best (lowest) first
    update_id: int | None  # the venue's id of the last applied update, when it has one
    time: datetime | None  # exchange time of the last applied update
    valid: bool
    invalid_reason: str  # why not valid ("" when valid)


@dataclass
class OrderBook:
    """The full book of one product. Not thread-safe: one owner applies, others take views."""

    exchange: str
    product_id: str
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    update_id: int | None = None
    time: datetime | None = None
    valid: bool = False  # a book is valid only between a snapshot and the next break
    invalid_reason: str = "no snapshot yet"
    version: int = 0  # bumped by every change (levels, ids, time, validity): readers cache by it
    _bid_prices: list[Decimal] = field(default_factory=list)  # ascending
    _ask_prices: list[Decimal] = field(default_factory=list)  # ascending

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self._bid_prices.clear()
        self._ask_prices.clear()
        self.version += 1

    def load_snapshot(
        self,
        bids: Iterable[LevelPair],
        asks: Iterable[LevelPair],
        update_id: int | None = None,
        time: datetime | None = None,
    ) -> None:
        """Replace the whole book; the book is valid afterwards (levels of size 0 are
        skipped)."""
        self.clear()
        self.apply_many("bid", bids)
        self.apply_many("ask", asks)
        self.update_id = update_id
        self.time = time
        self.mark_valid()

    def apply(self, side: Side, price: Decimal, size: Decimal) -> None:
        """Set one level to an absolute size; 0 removes it."""
        levels, prices = (
            (self.bids, self._bid_prices) if side == "bid" else (self.asks, self._ask_prices)
        )
        if size == _ZERO:
            if levels.pop(price, None) is not None:
                del prices[bisect_left(prices, price)]
        else:
            if price not in levels:
                insort(prices, price)
            levels[price] = size
        self.version += 1

    def apply_many(self, side: Side, changes: Iterable[LevelPair]) -> None:
        """`apply` for each (price, size) of one side: one loop with no call per level (the
        engine's hot path)."""
        levels, prices = (
            (self.bids, self._bid_prices) if side == "bid" else (self.asks, self._ask_prices)
        )
        pop, count = levels.pop, 0
        for price, size in changes:
            count += 1
            if size == _ZERO:
                if pop(price, None) is not None:
                    del prices[bisect_left(prices, price)]
            else:
                if price not in levels:
                    insort(prices, price)
                levels[price] = size
        self.version += count

    def truncate(self, depth: int) -> None:
        """Keep the best `depth` levels of each side (Kraken: after every message)."""
        for levels, prices, worst in (
            (self.bids, self._bid_prices, slice(0, max(len(self._bid_prices) - depth, 0))),
            (self.asks, self._ask_prices, slice(depth, None)),
        ):
            for price in prices[worst]:
                del levels[price]
            del prices[worst]
        self.version += 1

    def mark_valid(self) -> None:
        self.valid = True
        self.invalid_reason = ""
        self.version += 1

    def mark_invalid(self, reason: str) -> None:
        """Out of sync (a sequence break, a checksum mismatch, a reconnect): levels stay for
        inspection, but nothing may present them as the book until the next snapshot."""
        self.valid = False
        self.invalid_reason = reason
        self.version += 1

    def top(self, depth: int | None = None) -> tuple[list[LevelPair], list[LevelPair]]:
        """(bids best first, asks best first), at most `depth` levels each (all when None)."""
        bid_prices = (
            self._bid_prices if depth is None else self._bid_prices[-depth:] if depth else []
        )
        ask_prices = self._ask_prices if depth is None else self._ask_prices[:depth]
        bids = [(p, self.bids[p]) for p in reversed(bid_prices)]
        asks = [(p, self.asks[p]) for p in ask_prices]
        return bids, asks

    def view(self, depth: int | None = None) -> BookView:
        bids, asks = self.top(depth)
        return BookView(
            self.exchange, self.product_id, bids, asks, self.update_id, self.time, self.valid,
            self.invalid_reason,
        )  # fmt: skip

    def best_bid(self) -> Decimal | None:
        return self._bid_prices[-1] if self._bid_prices else None

    def best_ask(self) -> Decimal | None:
        return self._ask_prices[0] if self._ask_prices else None

    def crossed(self) -> bool:
        """Best bid at or above best ask: never true of a correct book."""
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid >= ask

    def spread(self) -> Decimal | None:
        bid, ask = self.best_bid(), self.best_ask()
        return None if bid is None or ask is None else ask - bid

    def mid(self) -> Decimal | None:
        bid, ask = self.best_bid(), self.best_ask()
        return None if bid is None or ask is None else (bid + ask) / 2

    def depth_within(self, bps: Decimal | int) -> tuple[Decimal, Decimal]:
        """(bid size, ask size) of the levels within `bps` basis points of the mid."""
        mid = self.mid()
        if mid is None:
            return _ZERO, _ZERO
        reach = mid * Decimal(bps) * _BPS
        low, high = mid - reach, mid + reach
        bid_size = sum(
            (self.bids[p] for p in self._bid_prices[bisect_left(self._bid_prices, low) :]), _ZERO
        )
        ask_end = bisect_left(self._ask_prices, high)
        if ask_end < len(self._ask_prices) and self._ask_prices[ask_end] == high:
            ask_end += 1
        ask_size = sum((self.asks[p] for p in self._ask_prices[:ask_end]), _ZERO)
        return bid_size, ask_size

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)


def kraken_checksum(book: OrderBook, places: tuple[int, int] | None = None) -> int:
    """CRC32 of the top 10 levels as Kraken defines it (asks low->high, then bids
    high->low; each price and size with the '.' removed and leading zeros stripped),
    computed from the exact decimal text the venue sent; or, given `places` (the pair's
    price and size decimals), from each value written with that many decimals, as Kraken
    writes them (a book read back from the lake holds the lake's scale, not the text)."""
    import zlib

    bids, asks = book.top(10)
    if places is None:
        text = _checksum_text
        size_text = _checksum_text
    else:
        price_unit, size_unit = (Decimal(1).scaleb(-n) for n in places)

        def text(value: Decimal) -> str:
            return _checksum_text(value.quantize(price_unit))

        def size_text(value: Decimal) -> str:
            return _checksum_text(value.quantize(size_unit))

    parts = [text(p) + size_text(s) for p, s in asks]
    parts += [text(p) + size_text(s) for p, s in bids]
    return zlib.crc32("".join(parts).encode())


def _checksum_text(value: Decimal) -> str:
    text = format(value, "f")
    return text.replace(".", "").lstrip("0")
