"""Exact decimal levels from a venue's text, checked once per distinct text.

A book feed repeats a few thousand prices and sizes over and over; validating each with
`check_amount` and making a fresh `Decimal` per level was most of the cost of decoding a
book frame. Here the text is the cache key, so the Decimal keeps the venue's exact text
(trailing zeros included, as Kraken's checksum needs) and bad text is never cached: it
raises `FrameError` every time it is seen. The caches are bounded (cleared when full), so a
feed that invents amounts costs time, never memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from crypto_sentinel.books.orderbook import LevelPair
from crypto_sentinel.sources.codec import check_amount

CACHE_LIMIT = 200_000

_prices: dict[str, Decimal] = {}  # text checked as a price (> 0)
_sizes: dict[str, Decimal] = {}  # text checked as a size (0 removes a level)


def price(text: str) -> Decimal:
    value = _prices.get(text)
    if value is None:
        check_amount("price", text)
        if len(_prices) >= CACHE_LIMIT:
            _prices.clear()
        value = _prices[text] = Decimal(text)
    return value


def size(text: str) -> Decimal:
    value = _sizes.get(text)
    if value is None:
        check_amount("size", text, allow_zero=True)
        if len(_sizes) >= CACHE_LIMIT:
            _sizes.clear()
        value = _sizes[text] = Decimal(text)
    return value


def level(price_text: str, size_text: str) -> LevelPair:
    return price(price_text), size(size_text)


def levels(rows: Iterable[tuple[str, str]]) -> list[LevelPair]:
    """(price, size) text pairs -> exact pairs; `FrameError` on the first bad amount."""
    prices, sizes = _prices, _sizes
    out = []
    for price_text, size_text in rows:
        p = prices.get(price_text)
        if p is None:
            p = price(price_text)
        s = sizes.get(size_text)
        if s is None:
            s = size(size_text)
        out.append((p, s))
    return out
