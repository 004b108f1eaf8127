"""Where a restarted simulator continues: each product's last trade id and price in the lake.

Without it a restart began the price walk again from the seed, so the minute of the restart
got one candle mixing two unrelated runs (issue 20, item 6).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import orjson

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.simulator.market import ResumePoint

__all__ = ["SIMULATOR_EXCHANGE", "merge_points", "points_from_frames", "resume_points"]

SIMULATOR_EXCHANGE = "simulator"  # the lake's exchange name for simulated data


def resume_points(
    reader: LakeReader, products: Sequence[str], exchange: str = SIMULATOR_EXCHANGE
) -> dict[str, ResumePoint]:
    """The newest stored trade (highest id) of each simulated product in silver trades, with
    the highest sequence stored for it."""
    rows = reader.query(
        T.TRADES,
        "SELECT product_id, max(trade_id) AS trade_id, arg_max(price, trade_id) AS price,"
        " max(sequence) AS sequence FROM t WHERE exchange = ? GROUP BY product_id",
        [exchange],
    )
    wanted = set(products)
    return {
        r["product_id"]: ResumePoint(
            int(r["trade_id"]), Decimal(r["price"]), int(r["sequence"] or 0)
        )
        for r in rows
        if r["product_id"] in wanted and r["trade_id"] is not None
    }


def points_from_frames(texts: Iterable[str], products: Sequence[str]) -> dict[str, ResumePoint]:
    """Resume points from raw feed frames (e.g. the tail of the Kafka log, which can hold
    trades the lake has not stored yet): newest match per product, highest sequence seen."""
    wanted = set(products)
    points: dict[str, ResumePoint] = {}
    sequences: dict[str, int] = {}
    for text in texts:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(frame, dict) or frame.get("product_id") not in wanted:
            continue
        product = frame["product_id"]
        sequence = frame.get("sequence")
        if isinstance(sequence, int):
            sequences[product] = max(sequences.get(product, 0), sequence)
        trade_id = frame.get("trade_id")
        if frame.get("type") != "match" or not isinstance(trade_id, int):
            continue
        old = points.get(product)
        if old is None or trade_id > old.trade_id:
            points[product] = ResumePoint(trade_id, Decimal(str(frame.get("price"))))
    return {p: point._replace(sequence=sequences.get(p, 0)) for p, point in points.items()}


def merge_points(*sources: Mapping[str, ResumePoint]) -> dict[str, ResumePoint]:
    """Per product: the newest trade (highest id) of any source, with the highest sequence."""
    out: dict[str, ResumePoint] = {}
    for points in sources:
        for product, point in points.items():
            old = out.get(product)
            if old is None:
                out[product] = point
                continue
            newest = point if point.trade_id > old.trade_id else old
            out[product] = newest._replace(sequence=max(old.sequence, point.sequence))
    return out
