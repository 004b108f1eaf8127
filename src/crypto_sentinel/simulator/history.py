"""A past for the simulated exchange: trades over a configured time range, served by REST.

`sentinel history` and its benchmark page backwards through `GET /products/{id}/trades`; the
simulator answers from its retained trades (`Market.trades_page`), so seeding the market with
a range of past trades is all a history run needs.
"""

from __future__ import annotations

from datetime import datetime

from crypto_sentinel.simulator.market import Market, SimTrade


def seed_history(market: Market, count: int, since: datetime, until: datetime) -> list[SimTrade]:
    """Generate `count` trades (random products) evenly spread over [since, until), oldest
    first, into the market's retained history; returns them (the exact expected set)."""
    if count < 0 or until <= since:
        raise ValueError("seed_history needs count >= 0 and since < until")
    if count > market.history_limit:
        raise ValueError(f"at most {market.history_limit} trades are retained")
    step = (until - since) / max(count, 1)
    return [market.next_trade(since + i * step) for i in range(count)]
