"""Names, schemas and partitioning of every Delta table in the lake.

One place defines the layout so the embedded engine, the API and later the Spark job agree.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    @property
    def file_schema(self) -> pa.Schema:
        """The columns of its data files: all but the partition ones (in the folder names)."""
        return pa.schema([f for f in self.schema if f.name not in self.partition_by])


DATE = ("date", pa.date32())  # the partition column every table has

#: A frame as it arrived: bronze and quarantine both keep these, in this order.
RECEIVED = [
    ("source", pa.string()),
    ("conn_id", pa.string()),
    ("recv_seq", pa.int64()),
    ("recv_time", UTC_TS),
    ("frame", pa.string()),
]


def product_schema(
    columns: list[tuple[str, pa.DataType]], appended: Sequence[tuple[str, pa.DataType]] = ()
) -> pa.Schema:
    """A per-product table: exchange and product id first, then `columns`, then the date;
    `appended` are columns a later release added, kept after the date so older lakes get
    them appended in the same order (`add_missing_columns`)."""
    head = [("exchange", pa.string()), ("product_id", pa.string())]
    return pa.schema([*head, *columns, DATE, *appended])


BRONZE = TableSpec(
    "bronze.raw_messages",
    pa.schema([*RECEIVED, DATE]),
    partition_by=("date", "source"),
    key=("source", "conn_id", "recv_seq"),
)

TRADES = TableSpec(
    "silver.trades",
    product_schema(
        [
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
        ],
        appended=[("venue_symbol", pa.string())],
    ),
    partition_by=("date", "exchange"),
    key=("exchange", "product_id", "trade_id"),
)

TICKERS = TableSpec(
    "silver.tickers",
    product_schema(
        [
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
        ],
    ),
    partition_by=("date", "exchange"),
    # time too: Kraken's ticker has no sequence (0) and Advanced numbers it per connection
    key=("exchange", "product_id", "sequence", "time"),
)

CANDLES_1M = TableSpec(
    "gold.candles_1m",
    product_schema(
        [
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
        ]
    ),
    partition_by=("date",),
    key=("exchange", "product_id", "start"),
)

QUARANTINE = TableSpec(
    "quarantine.frames",
    pa.schema([*RECEIVED, ("reason", pa.string()), DATE]),
    partition_by=("date",),
    key=("source", "conn_id", "recv_seq"),
)

#: One row per disconnect and per detected trade-id gap, with the REST backfill's outcome.
#: Candles whose minute overlaps an unfilled gap are flagged at read time from this table.
GAPS = TableSpec(
    "bronze.gaps",
    product_schema(
        [
            ("kind", pa.string()),  # disconnect | trade_id | heartbeat | startup
            ("detected_at", UTC_TS),
            ("first_missing_id", pa.int64()),
            ("last_missing_id", pa.int64()),
            ("missing", pa.int64()),
            ("backfilled", pa.int64()),
            ("outcome", pa.string()),  # filled | partial | unfilled
            ("recv_time", UTC_TS),
            ("conn_id", pa.string()),
        ],
        # null for trade gaps; kind "book": why the book was resynced
        appended=[("reason", pa.string())],
    ),
    partition_by=("date",),
    key=("exchange", "product_id", "detected_at", "kind"),
)

#: Every level change the engine applied to a book, snapshot levels included. The engine's
#: order of one product's changes is (recv_time, conn_id, recv_seq, position): frames in
#: arrival order (one connection per product at a time; receive times never go back within a
#: connection, and a new connection starts later), changes in the order of their frame.
#: `book_time` is the moment the book reached the change: its exchange time; for a message
#: without one (Binance's REST snapshot) the newest exchange time seen of the product, else
#: the receive time; never before the product's previous change. `at=` reads select by it.
BOOK_UPDATES = TableSpec(
    "silver.book_updates",
    product_schema(  # its date: of book_time
        [
            ("side", pa.string()),  # bid | ask
            ("price", PRICE),
            ("size", PRICE),  # absolute size; 0 removes the level
            ("update_id", pa.int64()),  # the venue's id of the message (Binance `u`)
            ("first_update_id", pa.int64()),  # Binance `U`; null elsewhere
            ("snapshot", pa.bool_()),  # part of a snapshot: the book was replaced by it
            ("time", UTC_TS),  # exchange time, null when the venue sent none
            ("book_time", UTC_TS),
            ("recv_time", UTC_TS),
            ("conn_id", pa.string()),
            ("recv_seq", pa.int64()),
            ("position", pa.int32()),  # the change's index within its frame
        ],
    ),
    partition_by=("date", "exchange"),
    key=("exchange", "product_id", "conn_id", "recv_seq", "position"),
)

BOOK_LEVEL = pa.struct([("price", PRICE), ("size", PRICE)])

#: Books as the engine had them: the top `depth` levels every interval, the full book
#: (`depth` null) at every checkpoint and after every snapshot or break ("resync"). A full
#: one plus the updates after it gives the book at any later moment (`books/history.py`).
BOOK_SNAPSHOTS = TableSpec(
    "gold.book_snapshots",
    product_schema(
        [
            ("time", UTC_TS),  # book_time of the last change applied
            ("recv_time", UTC_TS),  # position of the last frame applied:
            ("conn_id", pa.string()),  # (recv_time, conn_id, recv_seq) as in book_updates
            ("recv_seq", pa.int64()),
            ("position", pa.int32()),  # that frame's changes before it (later ones follow it)
            ("update_id", pa.int64()),
            ("exchange_time", UTC_TS),  # of the last update applied (the view's `time`)
            ("reason", pa.string()),  # interval | checkpoint | resync
            ("depth", pa.int32()),  # levels per side kept here; null: the whole book
            ("max_depth", pa.int32()),  # the engine truncates its books to this many levels
            ("valid", pa.bool_()),
            ("invalid_reason", pa.string()),
            ("bids", pa.list_(BOOK_LEVEL)),  # best first
            ("asks", pa.list_(BOOK_LEVEL)),
        ],
    ),
    partition_by=("date", "exchange"),
    key=("exchange", "product_id", "recv_time", "conn_id", "recv_seq", "position", "reason"),
)

ALL_TABLES = (BRONZE, QUARANTINE, TRADES, TICKERS, CANDLES_1M, GAPS, BOOK_UPDATES, BOOK_SNAPSHOTS)


#: A long-lived DeltaTable handle (the writer's, a reader's) is opened afresh after it has been
#: brought forward this many versions. Why: a handle updated commit after commit keeps growing
#: in native memory; one opened from the newest checkpoint holds the live state. `sentinel
#: bench memory`, 2 minutes: peak RSS 282 MB never reopened, 270 MB at 100, 265 MB at 30.
REOPEN_AFTER_VERSIONS = 30


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
