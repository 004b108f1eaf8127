"""Kraken Spot WebSocket v2 public feed: `trade` (with a snapshot on subscribe) and `ticker`.

Kraken closes idle connections, so the source pings (`{"method":"ping"}`) every 20 s; the
heartbeat channel arrives about once a second on its own. Trade ids are sequential per pair,
so gaps are found by id; Kraken's REST history pages by time (`since`), so the connector
remembers when the trades it saw happened and the backfill pages `GET /0/public/Trades` from
just before a gap (sources/kraken/rest.py), at about one request a second (Kraken's public
limit; `kraken_rest_rate`). REST pair names come from `AssetPairs`, read once at connect.
Books: the `book` channel at `book_depth` clamped to a depth Kraken offers; a resync (asked for
by the engine after a checksum mismatch) unsubscribes and subscribes the product's book, and
Kraken sends a new snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal

import httpx
import orjson

from crypto_sentinel.sources.backfill import RestTrades
from crypto_sentinel.sources.bookfeed import BookSubscriber, kraken_depth
from crypto_sentinel.sources.kraken.codec import symbol_of
from crypto_sentinel.sources.kraken.rest import (
    MAX_COUNT,
    KrakenTrades,
    TradeTimes,
    fallback_pair,
    trade_times,
)

PING_SECONDS = 20.0
#: Third-party clients keep Kraken's public Trades calls to about one a second.
REST_RATE = 1.0
REST_BURST = 1


def subscribe_messages(products: list[str]) -> list[str]:
    symbols = [symbol_of(p) for p in products]
    return [
        orjson.dumps(
            {"method": "subscribe", "params": {"channel": "trade", "symbol": symbols,
             "snapshot": True}, "req_id": 1}
        ).decode(),
        orjson.dumps(
            {"method": "subscribe", "params": {"channel": "ticker", "symbol": symbols},
             "req_id": 2}
        ).decode(),
    ]  # fmt: skip


def book_messages(products: list[str], depth: int, method: str = "subscribe") -> str:
    params = {"channel": "book", "symbol": [symbol_of(p) for p in products], "depth": depth}
    return orjson.dumps({"method": method, "params": params, "req_id": 3}).decode()


class KrakenConnector(BookSubscriber):
    keepalive: tuple[float, str] | None = (PING_SECONDS, '{"method":"ping"}')
    lifetime: float | None = None

    def __init__(self, rest_rate: float = REST_RATE) -> None:
        self.times = TradeTimes()
        self.trades = KrakenTrades(self.times)
        self.rest: RestTrades | None = RestTrades(
            request=lambda product, lo, hi: None,  # by time, through `pages`
            ids=lambda body: [],
            page_size=MAX_COUNT,
            rate=rest_rate,
            burst=REST_BURST,
            pages=self.trades.pages,
        )

    def url(self, base: str, products: list[str]) -> str:
        return base

    def subscribe(self, products: list[str]) -> list[str]:
        messages = subscribe_messages(products)
        if self.books is not None:
            messages.append(book_messages(products, kraken_depth(self.books.depth)))
        return messages

    def resync_book(self, product: str) -> list[str]:
        if self.books is None:
            return []
        depth = kraken_depth(self.books.depth)
        return [book_messages([product], depth, "unsubscribe"), book_messages([product], depth)]

    def check(self, text: str) -> list[str]:
        for product, trade_id, ns in trade_times(text):
            self.times.add(product, trade_id, ns)
        return []

    def new_connection(self) -> None:
        pass

    async def prepare(self, rest_url: str | None, products: list[str]) -> None:
        if rest_url:
            await self.trades.load_pairs(rest_url)


def rest_pair(product: str) -> str:
    """REST pair names call bitcoin XBT: `BTC-USD` -> `XBTUSD` (no AssetPairs needed)."""
    return fallback_pair(product)


async def rest_candles(
    client: httpx.AsyncClient,
    take: Callable[[], Awaitable[None]],
    product: str,
    first: int,
    last: int,
) -> dict[int, list[Decimal]]:
    """1-minute OHLC in [first, last] (unix seconds) as [low, high, open, close, volume].
    Kraken serves the most recent 720 minutes of OHLC at most."""
    await take()
    response = await client.get(
        "/0/public/OHLC", params={"pair": rest_pair(product), "interval": 1, "since": first - 60}
    )
    response.raise_for_status()
    body = json.loads(response.text)
    if body.get("error"):
        raise ValueError(f"Kraken OHLC: {body['error']}")
    out: dict[int, list[Decimal]] = {}
    for key, rows in body.get("result", {}).items():
        if key == "last":
            continue
        for row in rows:  # [time, open, high, low, close, vwap, volume, count]
            minute = int(row[0])
            if first <= minute <= last:
                out[minute] = [Decimal(row[3]), Decimal(row[2]), Decimal(row[1]),
                               Decimal(row[4]), Decimal(row[6])]  # fmt: skip
    return out
