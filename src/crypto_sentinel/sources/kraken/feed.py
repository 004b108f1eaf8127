"""Kraken Spot WebSocket v2 public feed: `trade` (with a snapshot on subscribe) and `ticker`.

Kraken closes idle connections, so the source pings (`{"method":"ping"}`) every 20 s; the
heartbeat channel arrives about once a second on its own. Kraken's REST trade history pages
by time (`since`), not by trade id, so gaps are recorded and left unfilled for now: the
subscribe snapshot (the last 50 trades) fills short ones after a reconnect.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal

import httpx
import orjson

from crypto_sentinel.sources.backfill import RestTrades
from crypto_sentinel.sources.kraken.codec import symbol_of

PING_SECONDS = 20.0


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


class KrakenConnector:
    keepalive: tuple[float, str] | None = (PING_SECONDS, '{"method":"ping"}')
    lifetime: float | None = None
    rest: RestTrades | None = None

    def url(self, base: str, products: list[str]) -> str:
        return base

    def subscribe(self, products: list[str]) -> list[str]:
        return subscribe_messages(products)

    def check(self, text: str) -> list[str]:
        return []

    def new_connection(self) -> None:
        pass


def rest_pair(product: str) -> str:
    """REST pair names call bitcoin XBT: `BTC-USD` -> `XBTUSD`."""
    return "".join("XBT" if part == "BTC" else part for part in product.split("-"))


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
