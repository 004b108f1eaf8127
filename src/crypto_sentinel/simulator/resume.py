"""Where a restarted simulator continues: each product's last trade id and price in the lake.

Without it a restart began the price walk again from the seed, so the minute of the restart
got one candle mixing two unrelated runs (issue 20, item 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.simulator.market import ResumePoint

__all__ = ["SIMULATOR_EXCHANGE", "resume_points"]

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
