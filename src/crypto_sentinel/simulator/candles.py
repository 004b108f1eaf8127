"""The exchange's own candles (``GET /products/{id}/candles``) from the simulator's trades.

Coinbase answers ``[time, low, high, open, close, volume]`` rows, newest first, at most 300,
bucketed by trade time. The numbers are written with their exact decimal text (JSON numbers,
as Coinbase sends them), so a checker that parses them as decimals can compare exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

import orjson

from crypto_sentinel.simulator.market import SimTrade

CANDLE_GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
REST_MAX_CANDLES = 300


def _number(value: Decimal) -> orjson.Fragment:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return orjson.Fragment(text.encode())


def candle_rows(
    trades: Iterable[SimTrade],
    granularity: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[list[object]]:
    """Candles of ``granularity`` seconds whose start lies in [start, end], newest first."""
    lo = start.timestamp() if start else float("-inf")
    hi = end.timestamp() if end else float("inf")
    buckets: dict[int, list[Decimal]] = {}  # start -> low, high, open, close, volume
    for t in trades:
        bucket = int(t.time.timestamp()) // granularity * granularity
        if not lo <= bucket <= hi:
            continue
        price, size = Decimal(t.price), Decimal(t.size)
        row = buckets.get(bucket)
        if row is None:
            buckets[bucket] = [price, price, price, price, size]
        else:  # trades arrive oldest first
            row[0] = min(row[0], price)
            row[1] = max(row[1], price)
            row[3] = price
            row[4] += size
    return [[b, *map(_number, buckets[b])] for b in sorted(buckets, reverse=True)]
