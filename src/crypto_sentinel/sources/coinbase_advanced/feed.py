"""Coinbase Advanced Trade public WebSocket feed: `market_trades`, `ticker`, `heartbeats`.

One subscribe message per channel. `heartbeats` keeps quiet subscriptions open (Coinbase
closes channels without updates after 60-90 s). Every frame carries `sequence_num`, +1 per
frame across all channels of the connection: a break means the connection lost a frame, and
the source resubscribes to `market_trades`, whose snapshot (the last 100 trades per product)
brings short losses back. The public REST has no trade history by id, only the most recent
trades (`GET /api/v3/brokerage/market/products/{id}/ticker?limit=`, at most 1,000): the
backfill asks it once per window, so a gap whose trades are still among the recent ones is
filled, and an older one is recorded with what it could not get (a gap row, never silence).
Books: the public `level2` channel (its frames come as `l2_data`); a sequence break also
re-subscribes every product's `level2` (a fresh snapshot each), and so does the engine's
resync request for one product.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import httpx
import orjson

from crypto_sentinel.sources.backfill import Get, RestTrades
from crypto_sentinel.sources.bookfeed import BookSubscriber

CHANNELS = ("market_trades", "ticker", "heartbeats")
_MARK = '"sequence_num":'
CANDLES_PER_REQUEST = 350
#: The recent-trades window: the most the ticker endpoint returns in one request.
RECENT_LIMIT = 1000
#: Advanced Trade public REST allows 10 requests/s per IP; the backfill stays at half that.
REST_RATE = 5.0
REST_BURST = 5


async def recent_pages(get: Get, product: str, lo: int, hi: int) -> AsyncIterator[str]:
    """The recent-trades window, once per backfill window: it holds [lo, hi] or part of it
    while those trades are among the newest 1,000 (the backfill counts what it holds)."""
    body = await get(f"/api/v3/brokerage/market/products/{product}/ticker", {"limit": RECENT_LIMIT})
    if body is not None:
        yield body


ADVANCED_TRADES = RestTrades(
    request=lambda product, lo, hi: None,  # no request by id: `pages` asks the recent window
    ids=lambda body: [],
    page_size=RECENT_LIMIT,
    rate=REST_RATE,
    burst=REST_BURST,
    pages=recent_pages,
)


def subscribe_messages(
    products: list[str], kind: str = "subscribe", channels: tuple[str, ...] = CHANNELS
) -> list[str]:
    return [
        orjson.dumps({"type": kind, "product_ids": list(products), "channel": channel}).decode()
        for channel in channels
    ]


def resubscribe(products: list[str], channel: str) -> list[str]:
    """Unsubscribe and subscribe again: the venue sends the channel's snapshot afresh."""
    return [
        *subscribe_messages(products, "unsubscribe", (channel,)),
        *subscribe_messages(products, "subscribe", (channel,)),
    ]


def sequence_of(text: str) -> int | None:
    at = text.find(_MARK)
    if at < 0:
        return None
    start = at + len(_MARK)
    end = start
    while end < len(text) and text[end].isdigit():
        end += 1
    return int(text[start:end]) if end > start else None


class CoinbaseAdvancedConnector(BookSubscriber):
    keepalive: tuple[float, str] | None = None  # the heartbeats channel
    lifetime: float | None = None
    rest: RestTrades | None = ADVANCED_TRADES

    def __init__(self) -> None:
        self.products: list[str] = []
        self.last_sequence: int | None = None
        self.resubscribes = 0

    def url(self, base: str, products: list[str]) -> str:
        return base

    def subscribe(self, products: list[str]) -> list[str]:
        self.products = list(products)
        channels = (*CHANNELS, "level2") if self.books is not None else CHANNELS
        return subscribe_messages(products, channels=channels)

    def check(self, text: str) -> list[str]:
        sequence = sequence_of(text)
        if sequence is None:
            return []
        last, self.last_sequence = self.last_sequence, sequence
        if last is None or sequence == last + 1:
            return []
        self.resubscribes += 1
        messages = resubscribe(self.products, "market_trades")
        if self.books is not None:
            for product in self.products:
                self.books.on_resync(product, "sequence")
            messages += resubscribe(self.products, "level2")
        return messages

    def resync_book(self, product: str) -> list[str]:
        return resubscribe([product], "level2") if self.books is not None else []

    def new_connection(self) -> None:
        self.last_sequence = None

    async def prepare(self, rest_url: str | None, products: list[str]) -> None:
        pass  # product ids are the venue's own


async def rest_candles(
    client: httpx.AsyncClient,
    take: Callable[[], Awaitable[None]],
    product: str,
    first: int,
    last: int,
) -> dict[int, list[Decimal]]:
    """Public 1-minute candles in [first, last] (unix seconds) as [low, high, open, close,
    volume], at most 350 per request."""
    out: dict[int, list[Decimal]] = {}
    start = first
    while start <= last:
        end = min(last, start + (CANDLES_PER_REQUEST - 1) * 60)
        await take()
        response = await client.get(
            f"/api/v3/brokerage/market/products/{product}/candles",
            params={"start": start, "end": end + 59, "granularity": "ONE_MINUTE"},
        )
        response.raise_for_status()
        for c in json.loads(response.text).get("candles", []):
            minute = int(c["start"])
            if first <= minute <= last:
                out[minute] = [Decimal(c[k]) for k in ("low", "high", "open", "close", "volume")]
        start = end + 60
    return out
