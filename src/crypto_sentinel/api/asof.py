"""Candle pages as the lake knew them at a past moment (`/candles?as_of=`).

Hot state is the present, so an as-of page comes from the lake alone: the 1-minute candle
table at its Delta version of that time, rolled up as `Lake.candles` rolls it up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crypto_sentinel.api.render import candle_items
from crypto_sentinel.lake.location import LakeRoot


def as_of_items(
    lake: LakeRoot,
    exchange: str,
    product_id: str,
    granularity: int,
    lo: datetime,
    hi: datetime,
    as_of: datetime,
) -> list[dict[str, Any]]:
    """Rendered candles (not forming) in [lo, hi), newest first, as of `as_of` (blocking;
    raises `AsOfError` for a time before the oldest version the Delta log keeps)."""
    from crypto_sentinel.lake.catalog import Lake  # Arrow datasets: loaded when first asked

    rows = Lake(lake).candles(product_id, granularity, lo, hi, exchange, as_of=as_of)
    rows = rows.rename_columns(["bucket" if c == "start" else c for c in rows.column_names])
    items = candle_items(rows, granularity)
    return [items[start] for start in sorted(items, reverse=True)]
