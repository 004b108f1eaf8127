"""Names, schemas and partitioning of every Delta table in the lake.

One place defines the layout so the embedded engine, the API and later the Spark job agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.schema import Field

from crypto_sentinel.lake.location import LakeRoot, is_remote, join, storage_options
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

    def uri(self, lake: LakeRoot) -> str:
        """The table's location below a local or remote lake root (`lake.location`)."""
        return join(lake, *self.name.split("."))


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
            # last: a lake from before it gets the column appended (`ensure_tables`)
            ("venue_symbol", pa.string()),
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
    # time too: Kraken's ticker has no sequence (0) and Advanced numbers it per connection
    key=("exchange", "product_id", "sequence", "time"),
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

#: One row per disconnect and per detected trade-id gap, with the REST backfill's outcome.
#: Candles whose minute overlaps an unfilled gap are flagged at read time from this table.
GAPS = TableSpec(
    "bronze.gaps",
    pa.schema(
        [
            ("exchange", pa.string()),
            ("product_id", pa.string()),
            ("kind", pa.string()),  # disconnect | trade_id | heartbeat | startup
            ("detected_at", UTC_TS),
            ("first_missing_id", pa.int64()),
            ("last_missing_id", pa.int64()),
            ("missing", pa.int64()),
            ("backfilled", pa.int64()),
            ("outcome", pa.string()),  # filled | partial | unfilled
            ("recv_time", UTC_TS),
            ("conn_id", pa.string()),
            ("date", pa.date32()),
        ]
    ),
    partition_by=("date",),
    key=("exchange", "product_id", "detected_at", "kind"),
)

ALL_TABLES = (BRONZE, QUARANTINE, TRADES, TICKERS, CANDLES_1M, GAPS)


def ensure_tables(lake: LakeRoot) -> dict[str, DeltaTable]:
    """Create missing tables (empty, with their schema) so readers never meet a missing path."""
    tables = {}
    options = storage_options(lake)
    for spec in ALL_TABLES:
        uri = spec.uri(lake)
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            if not is_remote(lake):
                Path(uri).mkdir(parents=True, exist_ok=True)
            try:
                DeltaTable.create(
                    uri,
                    schema=spec.schema,
                    partition_by=list(spec.partition_by),
                    name=spec.name,
                    storage_options=options,
                )
            except Exception:  # another process created it at the same moment: use theirs
                if not DeltaTable.is_deltatable(uri, storage_options=options):
                    raise
        table = DeltaTable(uri, storage_options=options)
        add_missing_columns(table, spec)
        tables[spec.name] = table
    return tables


def add_missing_columns(table: DeltaTable, spec: TableSpec) -> None:
    """Append the columns a newer release added to `spec` (nullable; old rows read null), so
    a lake written by an earlier version keeps working without a rewrite."""
    have = {f.name for f in table.schema().fields}
    missing = [f for f in spec.schema if f.name not in have]
    if missing:
        fields = [Field.from_arrow(f) for f in missing]
        try:
            table.alter.add_columns(fields)
        except Exception:  # another process added them at the same moment
            table.update_incremental()
            if any(f.name not in {g.name for g in table.schema().fields} for f in missing):
                raise
