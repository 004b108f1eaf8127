"""Binance Spot public WebSocket feed: combined `aggTrade` and 24 h `ticker` streams.

The streams are named in the URL (`/stream?streams=btcusdt@aggTrade/btcusdt@ticker`); the
server pings and the client library answers. Binance ends every connection after 24 h, so
the source reconnects a little before (the disconnect gap and its backfill cover the switch).
Missed aggregate trades come back from `GET /api/v3/aggTrades?fromId=`. The same code serves
Binance.US by URL.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx

from crypto_sentinel.sources.backfill import RestTrades
from crypto_sentinel.sources.binance.codec import symbol_of

#: aggTrades answers at most 1,000 per request and weighs 2 of the 6,000 weight a minute an
#: IP may spend (developers.binance.com, spot REST limits); 5 requests/s stays far below.
REST_PAGE_SIZE = 1000
REST_RATE = 5.0
REST_BURST = 10
LIFETIME_SECONDS = 23.5 * 3600
KLINES_PER_REQUEST = 1000


def _trades_request(product: str, lo: int, hi: int) -> tuple[str, dict[str, Any]]:
    return "/api/v3/aggTrades", {"symbol": symbol_of(product), "fromId": lo, "limit": hi - lo + 1}


BINANCE_TRADES = RestTrades(
    request=_trades_request,
    ids=lambda body: [int(t["a"]) for t in body],
    page_size=REST_PAGE_SIZE,
    rate=REST_RATE,
    burst=REST_BURST,
    asks_forward=True,
)


def streams(products: list[str]) -> list[str]:
    out = []
    for product in products:
        symbol = symbol_of(product).lower()
        out += [f"{symbol}@aggTrade", f"{symbol}@ticker"]
    return out


class BinanceConnector:
    keepalive: tuple[float, str] | None = None  # the server pings; websockets answers
    lifetime: float | None = LIFETIME_SECONDS
    rest: RestTrades | None = BINANCE_TRADES

    def url(self, base: str, products: list[str]) -> str:
        return f"{base.rstrip('/')}/stream?streams={'/'.join(streams(products))}"

    def subscribe(self, products: list[str]) -> list[str]:
        return []

    def check(self, text: str) -> list[str]:
        return []

    def new_connection(self) -> None:
        pass


async def rest_candles(
    client: httpx.AsyncClient,
    take: Callable[[], Awaitable[None]],
    product: str,
    first: int,
    last: int,
) -> dict[int, list[Decimal]]:
    """1-minute klines in [first, last] (unix seconds) as [low, high, open, close, volume]."""
    out: dict[int, list[Decimal]] = {}
    start = first
    while start <= last:
        await take()
        response = await client.get(
            "/api/v3/klines",
            params={
                "symbol": symbol_of(product), "interval": "1m", "startTime": start * 1000,
                "endTime": last * 1000 + 59_999, "limit": KLINES_PER_REQUEST,
            },
        )  # fmt: skip
        response.raise_for_status()
        rows = json.loads(response.text)
        for row in rows:  # [open time ms, open, high, low, close, volume, ...]
            minute = int(row[0]) // 1000
            if first <= minute <= last:
                out[minute] = [Decimal(row[3]), Decimal(row[2]), Decimal(row[1]),
                               Decimal(row[4]), Decimal(row[5])]  # fmt: skip
        if len(rows) < KLINES_PER_REQUEST:
            break
        start = int(rows[-1][0]) // 1000 + 60
    return out
