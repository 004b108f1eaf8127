"""Names, schemas and partitioning of every Delta table in the lake.

One place defines the layout so the embedded engine, the API and later the Spark job agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from crypto_sentinel.model import SCALE

UTC_TS = pa.timestamp("us", tz="UTC")
PRICE = pa.decimal128(28, SCALE)  # one price or size
AMOUNT = pa.decimal128(38, SCALE)  # sums of sizes
NOTIONAL = pa.decimal128(38, 2 * SCALE)  # sums of price * size, exact


@dataclass(frozen=True)
class TableSpec:
    name: str  # e.g. "silver.trades"
    schema: pa.Schema
    partition_by: tuple[str, ...]
    key: tuple[str, ...]

    def path(self, lake: Path) -> Path:
        layer, table = self.name.split(".")
        return lake / layer / table


BRONZE = TableSpec(
    "bronze.raw_messages",
    pa.schema(
        [
            ("source", pa.string()),
            ("conn_id", pa.string()),
            ("recv_seq", pa.int64()),
            ("recv_time", UTC_TS),
            ("frame", pa.string()),
            ("date", pa.date32()),
        ]
    ),
    partition_by=("date", "source"),
    key=("source", "conn_id", "recv_seq"),
)

TRADES = TableSpec(
    "silver.trades",
    pa.schema(
        [
            ("exchange", pa.string()),
            ("product_id", pa.string()),
            ("trade_id", pa.int64()),
            ("price", PRICE),
            ("size", PRICE),
            ("side", pa.string()),
            ("time", UTC_TS),
            ("recv_time", UTC_TS),
            ("sequence", pa.int64()),
            ("maker_order_id", pa.string()),
            ("taker_order_id", pa.string()),
            ("conn_id", pa.string()),
            ("date", pa.date32()),
        ]
    ),
    partition_by=("date", "exchange"),
    key=("exchange", "product_id", "trade_id"),
)

TICKERS = TableSpec(
    "silver.tickers",
    pa.schema(
        [
            ("exchange", pa.string()),
            ("product_id", pa.string()),
            ("sequence", pa.int64()),
            ("price", PRICE),
            ("best_bid", PRICE),
            ("best_ask", PRICE),
            ("best_bid_size", PRICE),
            ("best_ask_size", PRICE),
            ("open_24h", PRICE),
            ("high_24h", PRICE),
            ("low_24h", PRICE),
            ("volume_24h", AMOUNT),
            ("volume_30d", AMOUNT),
            ("side", pa.string()),
            ("last_size", PRICE),
            ("trade_id", pa.int64()),
            ("time", UTC_TS),
            ("recv_time", UTC_TS),
            ("date", pa.date32()),
        ]
    ),
    partition_by=("date", "exchange"),
    key=("exchange", "product_id", "sequence"),
)

CANDLE_FIELDS = [
    ("exchange", pa.string()),
    ("product_id", pa.string()),
    ("start", UTC_TS),
    ("open", PRICE),
    ("high", PRICE),
    ("low", PRICE),
    ("close", PRICE),
    ("volume", AMOUNT),
    ("buy_volume", AMOUNT),
    ("sell_volume", AMOUNT),
    ("quote_volume", NOTIONAL),
    ("vwap", PRICE),
    ("trade_count", pa.int64()),
    ("first_trade_id", pa.int64()),
    ("last_trade_id", pa.int64()),
    ("first_trade_time", UTC_TS),
    ("last_trade_time", UTC_TS),
    ("date", pa.date32()),
]

CANDLES_1M = TableSpec(
    "gold.candles_1m",
    pa.schema(CANDLE_FIELDS),
    partition_by=("date",),
    key=("exchange", "product_id", "start"),
)

QUARANTINE = TableSpec(
    "quarantine.frames",
    pa.schema(
        [
            ("source", pa.string()),
            ("conn_id", pa.string()),
            ("recv_seq", pa.int64()),
            ("recv_time", UTC_TS),
            ("frame", pa.string()),
            ("reason", pa.string()),
            ("date", pa.date32()),
        ]
    ),
    partition_by=("date",),
    key=("source", "conn_id", "recv_seq"),
)

ALL_TABLES = (BRONZE, QUARANTINE, TRADES, TICKERS, CANDLES_1M)


def ensure_tables(lake: Path) -> dict[str, DeltaTable]:
    """Create missing tables (empty, with their schema) so readers never meet a missing path."""
    tables = {}
    for spec in ALL_TABLES:
        path = spec.path(lake)
        if not DeltaTable.is_deltatable(str(path)):
            path.mkdir(parents=True, exist_ok=True)
            try:
                DeltaTable.create(
                    str(path),
                    schema=spec.schema,
                    partition_by=list(spec.partition_by),
                    name=spec.name,
                )
            except Exception:  # another process created it at the same moment: use theirs
                if not DeltaTable.is_deltatable(str(path)):
                    raise
        tables[spec.name] = DeltaTable(str(path))
    return tables
