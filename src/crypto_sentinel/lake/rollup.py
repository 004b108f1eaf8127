"""Candles of any granularity combined from 1-minute candle rows.

One definition, shared by the API's candle pages (`LakeReader.candle_buckets`) and the
analysts' `Lake.candles`, so both answer the same candle for the same minutes. Buckets are
aligned to multiples of the granularity since the Unix epoch (UTC), as the exchanges align
them; amounts keep their exact decimal types.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel.lake import tables as T

if TYPE_CHECKING:
    import duckdb

#: Combining 1-minute candle rows into one candle. Each row is one minute, so first and last
#: trade times never tie between rows and pick open, close and the trade ids exactly.
CANDLE_AGGREGATES = """
    arg_min(open, first_trade_time) AS open, max(high) AS high, min(low) AS low,
    arg_max(close, last_trade_time) AS close, sum(volume) AS volume,
    sum(buy_volume) AS buy_volume, sum(sell_volume) AS sell_volume,
    sum(quote_volume) AS quote_volume, sum(trade_count)::BIGINT AS trade_count,
    arg_min(first_trade_id, first_trade_time) AS first_trade_id,
    min(first_trade_time) AS first_trade_time,
    arg_max(last_trade_id, last_trade_time) AS last_trade_id,
    max(last_trade_time) AS last_trade_time
"""

#: The columns of a table of buckets, in order.
BUCKET_COLUMNS = [
    "exchange", "product_id", "bucket", "open", "high", "low", "close", "volume", "buy_volume",
    "sell_volume", "quote_volume", "trade_count", "first_trade_id", "first_trade_time",
    "last_trade_id", "last_trade_time",
]  # fmt: skip
EMPTY_BUCKETS = pa.table(
    {name: pa.array([], T.CANDLES_1M.schema.field(name).type) for name in BUCKET_COLUMNS
     if name != "bucket"} | {"bucket": pa.array([], T.UTC_TS)}
).select(BUCKET_COLUMNS)  # fmt: skip

Cursor = Callable[..., AbstractContextManager["duckdb.DuckDBPyConnection"]]


def roll_up(
    minutes: pa.Table | None,
    cursor: Cursor,
    exchange: str | None,
    product_id: str,
    start: datetime,
    end: datetime,
    granularity: int,
) -> pa.Table:
    """Buckets of `granularity` seconds from the 1-minute rows in [start, end), newest first.

    `cursor(name=table)` opens a DuckDB cursor with Arrow tables registered by name (only
    used for granularities above a minute). `exchange` None: every exchange's buckets.
    """
    if minutes is None or minutes.num_rows == 0:
        return EMPTY_BUCKETS
    if granularity == 60:  # the rows themselves: a filter in Arrow, no SQL
        ts = minutes.schema.field("start").type
        keep = pc.and_(
            pc.equal(minutes["product_id"], product_id),
            pc.and_(
                pc.greater_equal(minutes["start"], pa.scalar(start, ts)),
                pc.less(minutes["start"], pa.scalar(end, ts)),
            ),
        )
        if exchange is not None:
            keep = pc.and_(keep, pc.equal(minutes["exchange"], exchange))
        rows = minutes.filter(keep).sort_by([("start", "descending"), ("exchange", "ascending")])
        return rows.append_column("bucket", rows["start"]).select(BUCKET_COLUMNS)
    params = {"g": granularity, "ex": exchange, "p": product_id, "lo": start, "hi": end}
    with cursor(candle_files=minutes) as cur:
        rel = cur.sql(
            "SELECT exchange, product_id,"
            " to_timestamp((epoch(start)::BIGINT // $g) * $g) AS bucket,"
            + CANDLE_AGGREGATES
            + " FROM candle_files WHERE ($ex IS NULL OR exchange = $ex) AND product_id = $p"
            " AND start >= $lo AND start < $hi GROUP BY ALL ORDER BY bucket DESC, exchange",
            params=params,
        )
        return rel.to_arrow_table().select(BUCKET_COLUMNS)
