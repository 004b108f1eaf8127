"""Proof of completeness per candle: is every trade of a bucket stored?

A bucket (a minute, an hour, ...) of a product is `complete` when
- its trade ids are contiguous: `trade_count == last_trade_id - first_trade_id + 1`;
- they are contiguous with the product's previous and next stored trades: the last trade
  stored before the bucket is `first_trade_id - 1`, the first stored after it
  `last_trade_id + 1` (nothing stored on a side counts as contiguous: a product's history
  starts and ends somewhere, and trades not yet made are not missing);
- no unfilled gap (`bronze.gaps`, outcome other than filled) overlaps it (`gapflags`).

Contiguity catches ids that were never seen, with or without a gap record; the gap records
catch what contiguity cannot: a gap at the end of a product's stream (ids a heartbeat
revealed whose trades never came) or ids the exchange would not serve. So `gap` implies
not `complete`, and an unfilled gap touches exactly the buckets it makes incomplete: the
one holding the stored trade before it, the one holding the stored trade after it, and any
between (those have no trades, hence no candle).

Coinbase trade ids are contiguous per product and rise with time, so a bucket's first and
last trade by time are its lowest and highest id. The rule costs O(1) per candle served plus
one look-up of the stored trades on either side of a page (`ApiContext.trade_neighbors`);
the ingest path does no work for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from crypto_sentinel.gapflags import Span, overlaps


def contiguous(first: int, last: int, count: int, before: int | None, after: int | None) -> bool:
    """A bucket's ids [first, last] (`count` trades) hold no hole, nor do they on either side
    (`before`: the last stored id before the bucket, `after`: the first after; None: none)."""
    return (
        count == last - first + 1
        and (before is None or before == first - 1)
        and (after is None or after == last + 1)
    )


def mark_page(
    items: list[dict[str, Any]],
    granularity: int,
    before: int | None,
    after: int | None,
    spans: list[Span],
) -> None:
    """Set `gap` and `complete` on a page of rendered candles (newest first, as served).

    Neighbouring items are neighbouring stored buckets (buckets without trades have no
    item); `before` and `after` are the stored trade ids just outside the page.
    """
    n = len(items)
    for i, item in enumerate(items):
        gap = bool(spans) and overlaps(spans, datetime.fromisoformat(item["start"]), granularity)
        item["gap"] = gap
        item["complete"] = not gap and contiguous(
            item["first_trade_id"],
            item["last_trade_id"],
            item["trade_count"],
            items[i + 1]["last_trade_id"] if i + 1 < n else before,
            items[i - 1]["first_trade_id"] if i > 0 else after,
        )


def minute_flags(
    minutes: Sequence[tuple[datetime, int, int, int]], spans: list[Span]
) -> list[bool]:
    """`complete` of each of a product's stored minutes: (start, first id, last id, trade
    count), oldest first, the whole stored history (nothing before the first or after the
    last)."""
    out = []
    n = len(minutes)
    for i, (start, first, last, count) in enumerate(minutes):
        before = minutes[i - 1][2] if i > 0 else None
        after = minutes[i + 1][1] if i + 1 < n else None
        out.append(
            contiguous(first, last, count, before, after)
            and not (spans and overlaps(spans, start, 60))
        )
    return out
