"""Coinbase Exchange public WebSocket feed (matches, ticker, heartbeat).

Real network code: the same source talks to wss://ws-feed.exchange.coinbase.com and to our
simulator (the shared connection code is sources/feed.py). Heartbeats keep quiet products
gap-checked; missed trades come back from GET /products/{id}/trades.
Books: `level2` needs an authenticated subscribe since 2023-08; with an API key (key, secret,
passphrase) the feed sends a signed one, without it one log line says books need credentials
and the trades go on alone. A resync re-subscribes the product's `level2` (signed afresh).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson

from crypto_sentinel.sources.backfill import RestTrades
from crypto_sentinel.sources.bookfeed import BookOptions, BookSubscriber, coinbase_signature
from crypto_sentinel.sources.feed import MAX_FRAME_BYTES, FeedSource
from crypto_sentinel.sources.ratelimit import COINBASE_PUBLIC_BURST, COINBASE_PUBLIC_RATE

__all__ = ["MAX_FRAME_BYTES", "CoinbaseConnector", "CoinbaseSource", "subscribe_message"]

CHANNELS = ("matches", "ticker", "heartbeat")
#: GET /products/{id}/trades returns at most this many trades per page.
REST_PAGE_SIZE = 1000
#: Public REST endpoints: 10 requests/s per IP, bursts of 15 (ratelimit.py has the source).
REST_RATE = COINBASE_PUBLIC_RATE
REST_BURST = COINBASE_PUBLIC_BURST
CANDLES_PER_REQUEST = 300
log = logging.getLogger(__name__)


def subscribe_message(products: list[str]) -> str:
    """Product ids go inside each channel object (Coinbase rejects the empty-channel form)."""
    channels = [{"name": name, "product_ids": list(products)} for name in CHANNELS]
    return orjson.dumps({"type": "subscribe", "channels": channels}).decode()


def _trades_request(product: str, lo: int, hi: int) -> tuple[str, dict[str, Any]]:
    """Coinbase's cursor: `after=N` returns the trades below N, newest first."""
    return f"/products/{product}/trades", {"after": hi + 1, "limit": hi - lo + 1}


COINBASE_TRADES = RestTrades(
    request=_trades_request,
    ids=lambda body: [int(t["trade_id"]) for t in body],
    page_size=REST_PAGE_SIZE,
    rate=REST_RATE,
    burst=REST_BURST,
)


class CoinbaseConnector(BookSubscriber):
    #: The heartbeat channel keeps the connection and the gap check alive.
    keepalive: tuple[float, str] | None = None
    lifetime: float | None = None
    rest: RestTrades | None = COINBASE_TRADES

    def url(self, base: str, products: list[str]) -> str:
        return base

    def use_books(self, options: BookOptions) -> None:
        if options.credentials is None:
            log.warning(
                "Coinbase Exchange books need credentials (coinbase_api_key, _secret,"
                " _passphrase): level2 is not subscribed, trades go on"
            )
            return
        self.books = options

    def _level2(self, products: list[str], kind: str = "subscribe") -> str:
        assert self.books is not None and self.books.credentials is not None
        channels = [{"name": "level2", "product_ids": list(products)}]
        message = {"type": kind, "channels": channels, **coinbase_signature(self.books.credentials)}
        return orjson.dumps(message).decode()

    def subscribe(self, products: list[str]) -> list[str]:
        if self.books is None:
            return [subscribe_message(products)]
        return [subscribe_message(products), self._level2(products)]

    def resync_book(self, product: str) -> list[str]:
        if self.books is None:
            return []
        return [self._level2([product], "unsubscribe"), self._level2([product])]

    def check(self, text: str) -> list[str]:
        return []

    def new_connection(self) -> None:
        pass

    async def prepare(self, rest_url: str | None, products: list[str]) -> None:
        pass  # product ids are the venue's own


class CoinbaseSource(FeedSource):
    def __init__(
        self,
        products: list[str],
        url: str,
        exchange: str = "coinbase",
        kind: str = "coinbase",
        **options: Any,
    ) -> None:
        super().__init__(CoinbaseConnector(), products, url, exchange, kind, **options)


async def rest_candles(
    client: httpx.AsyncClient,
    take: Callable[[], Awaitable[None]],
    product: str,
    first: int,
    last: int,
) -> dict[int, list[Decimal]]:
    """The exchange's 1-minute candles in [first, last] (unix seconds), 300 per request, as
    [low, high, open, close, volume]."""
    out: dict[int, list[Decimal]] = {}
    start = first
    while start <= last:
        end = min(last, start + (CANDLES_PER_REQUEST - 1) * 60)
        await take()
        response = await client.get(
            f"/products/{product}/candles",
            params={
                "granularity": 60,
                "start": datetime.fromtimestamp(start, UTC).isoformat(),
                "end": datetime.fromtimestamp(end, UTC).isoformat(),
            },
        )
        response.raise_for_status()
        for row in json.loads(response.text, parse_float=Decimal, parse_int=Decimal):
            out[int(row[0])] = [Decimal(v) for v in row[1:6]]
        start = end + 60
    return out
