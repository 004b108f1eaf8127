"""Kraken Spot WebSocket v2 public feed: `trade` (with a snapshot on subscribe) and `ticker`.

Kraken closes idle connections, so the source pings (`{"method":"ping"}`) every 20 s; the
heartbeat channel arrives about once a second on its own. Kraken's REST trade history pages
by time (`since`), not by trade id, so gaps are recorded and left unfilled for now: the
subscribe snapshot (the last 50 trades) fills short ones after a reconnect.
"""

from __future__ import annotations

import orjson

from crypto_sentinel.sources.backfill import RestTrades
from crypto_sentinel.sources.kraken_codec import symbol_of

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
