"""`Lake`: the analysts' door into the lake, without the HTTP API.

`Lake(".sentinel/lake")` (or `Lake("s3://bucket/prefix")`) reads the Delta tables the engine
writes and answers with Arrow tables (exact decimals stay decimal128; `.to_pandas()` or
`polars.from_arrow()` is one call away). Each read takes the tables' current Delta snapshot,
so it never sees a half-written batch; `as_of=` reads a table as it was at that moment (Delta
time travel), for backtests that must not see later corrections.

Files come from the Delta log, never from listing folders, so files replaced by compaction or
a candle rewrite are never counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, filesystem, parse_lake, storage_options
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.rollup import BUCKET_COLUMNS, roll_up

if TYPE_CHECKING:
    import duckdb

#: SQL view name -> table; `Lake.sql` and `sentinel sql|export` know these names.
VIEWS: dict[str, T.TableSpec] = {
    "trades": T.TRADES,
    "tickers": T.TICKERS,
    "candles_1m": T.CANDLES_1M,
    "gaps": T.GAPS,
    "quarantine": T.QUARANTINE,
}
#: The time column of each view (time filters of `export` and the readers).
TIME_COLUMNS = {
    "trades": "time",
    "tickers": "time",
    "candles_1m": "start",
    "gaps": "detected_at",
    "quarantine": "recv_time",
}
GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
#: The columns of `Lake.candles`, in order (a rolled-up bucket's start is `start`).
CANDLE_COLUMNS = ["start" if c == "bucket" else c for c in BUCKET_COLUMNS]


class LakeError(ValueError):
    """A request the lake cannot answer (unknown table, bad SQL, bad time); one line."""


class AsOfError(LakeError):
    """`as_of` before the oldest table version the Delta log still holds."""


def utc(value: datetime | str) -> datetime:
    """A time as an aware UTC datetime; naive times and ISO text without offset are UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise LakeError(f"not an ISO 8601 time: {value!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _dates(start: datetime | None, end: datetime | None) -> list[date] | None:
    """Date partitions that can hold [start, end); None (all) when either is open."""
    if start is None or end is None:
        return None
    last = (end - timedelta(microseconds=1)).date()
    return [start.date() + timedelta(days=i) for i in range((last - start.date()).days + 1)]


class Lake:
    """Read access to a Crypto Sentinel lake: trades, candles, gaps and SQL over all tables."""

    def __init__(self, root: str | Path) -> None:
        self.root: LakeRoot = parse_lake(str(root))
        self._reader = LakeReader(self.root)
        self._options = storage_options(self.root)
        self._fs, self._prefix = filesystem(self.root)

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    # --- snapshots and datasets -------------------------------------------------------------

    def snapshot(self, table: str, as_of: datetime | str | None = None) -> DeltaTable | None:
        """The Delta table behind a view name, now or as of a time; None if never written.

        Raises AsOfError when `as_of` is before the oldest version the Delta log keeps (the
        log and vacuum retention bound how far back time travel reaches).
        """
        spec = self._spec(table)
        uri = spec.uri(self.root)
        if not DeltaTable.is_deltatable(uri, storage_options=self._options):
            return None
        dt = DeltaTable(uri, storage_options=self._options)
        if as_of is None:
            return dt
        when = utc(as_of)
        try:
            dt.load_as_version(when)
        except DeltaError as exc:  # e.g. a log with no commit at or before that time
            raise AsOfError(f"as_of {when.isoformat()}: {_first_line(exc)}") from None
        committed = self._commit_time(spec, dt.version())
        # delta-rs falls back to the oldest version it still has for an older time
        if committed is None or committed > when:
            kept = "" if committed is None else f" ({committed.isoformat()})"
            raise AsOfError(
                f"as_of {when.isoformat()} is before the oldest version of {table} the lake"
                f" keeps{kept}; history goes back as far as the Delta log and vacuum retention"
                " allow (SENTINEL_MAINTENANCE_LOG_RETENTION_MINUTES,"
                " SENTINEL_MAINTENANCE_VACUUM_SAFETY_HOURS)"
            )
        return dt

    def _commit_time(self, spec: T.TableSpec, version: int) -> datetime | None:
        """When a version was committed, at the latest: its log file's modification time (as
        Delta time travel by timestamp reads it), else its checkpoint's (written after the
        commit); None when the log holds neither (the version cannot be placed in time)."""
        import pyarrow.fs as pafs

        log = f"{spec.uri(self.root)}/_delta_log/{version:020d}".removeprefix(self._prefix)
        for suffix in (".json", ".checkpoint.parquet"):
            info = self._fs.get_file_info(log + suffix)
            if info.type != pafs.FileType.NotFound and info.mtime is not None:
                return utc(info.mtime)
        return None

    def dataset(
        self,
        table: str,
        as_of: datetime | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> ds.Dataset:
        """The live files of a table as an Arrow dataset (only date partitions that can hold
        [start, end) when both are given), with the table's schema and partition columns."""
        spec = self._spec(table)
        dates = _dates(start, end)
        if as_of is None:
            files = self._reader.files(spec, dates)
        else:
            dt = self.snapshot(table, as_of)
            files = [] if dt is None else _file_uris(dt, dates)
        return ds.dataset(
            [f.removeprefix(self._prefix) for f in files],
            schema=spec.schema,
            format="parquet",
            filesystem=self._fs,
            partitioning=ds.partitioning(
                pa.schema([spec.schema.field(name) for name in spec.partition_by]), flavor="hive"
            ),
            partition_base_dir=spec.uri(self.root).removeprefix(self._prefix),
        )

    @staticmethod
    def _spec(table: str) -> T.TableSpec:
        spec = VIEWS.get(table)
        if spec is None:
            raise LakeError(f"unknown table {table!r}: one of {', '.join(VIEWS)}")
        return spec

    def _read(
        self,
        table: str,
        product_id: str | None,
        start: datetime | str | None,
        end: datetime | str | None,
        exchange: str | None,
        as_of: datetime | str | None = None,
    ) -> pa.Table:
        """Rows of one product (None: all) and exchange (None: all) with time in [start, end)."""
        lo = None if start is None else utc(start)
        hi = None if end is None else utc(end)
        if lo is not None and hi is not None and hi <= lo:
            raise LakeError("start must be before end")
        # Everything is filtered in the scan (row groups skipped by their time statistics),
        # but files written by MERGE hold string_view columns, which Arrow's scan filters
        # cannot compare with a string: then names are filtered after the scan.
        column = ds.field(TIME_COLUMNS[table])
        where: Any = None
        if lo is not None:
            where = column >= pa.scalar(lo, T.UTC_TS)
        if hi is not None:
            upper = column < pa.scalar(hi, T.UTC_TS)
            where = upper if where is None else where & upper
        names = [(n, v) for n, v in (("product_id", product_id), ("exchange", exchange)) if v]
        dataset = self.dataset(table, as_of, lo, hi)
        full = where
        for name, value in names:
            full = ds.field(name) == value if full is None else full & (ds.field(name) == value)
        try:
            return dataset.to_table(filter=full)
        except pa.ArrowNotImplementedError:
            rows = dataset.to_table(filter=where)
        keep: Any = None
        for name, value in names:
            same = pc.equal(rows[name], value)
            keep = same if keep is None else pc.and_(keep, same)
        return rows if keep is None else rows.filter(keep)

    # --- the analysts' reads ------------------------------------------------------------

    def trades(
        self,
        product_id: str | None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        exchange: str | None = None,
    ) -> pa.Table:
        """Trades of a product (None: every product) with `time` in [start, end) (open ends:
        all), oldest first. Every exchange's unless `exchange` names one; the `date` partition
        column is left out.
        """
        rows = self._read("trades", product_id, start, end, exchange).drop_columns(["date"])
        return rows.sort_by([("time", "ascending"), ("exchange", "ascending"),
                             ("trade_id", "ascending")])  # fmt: skip

    def candles(
        self,
        product_id: str,
        granularity: int = 60,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        exchange: str | None = None,
        as_of: datetime | str | None = None,
    ) -> pa.Table:
        """OHLCV candles of `granularity` seconds starting in [start, end), oldest first.

        Rolled up from the 1-minute candles exactly as the API rolls them up (buckets aligned
        to multiples of the granularity since the Unix epoch; a bucket is included when its
        start is in the window). `as_of`: the candles as the lake held them at that time.
        """
        if granularity not in GRANULARITIES:
            raise LakeError(
                f"granularity {granularity}: one of {', '.join(map(str, GRANULARITIES))} seconds"
            )
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        lo = epoch if start is None else utc(start)
        lo -= (lo - epoch) % timedelta(seconds=granularity)  # the bucket holding start
        hi = datetime(9999, 1, 1, tzinfo=UTC) if end is None else utc(end)
        minutes = self._read(
            "candles_1m", product_id, None if start is None else lo, end, exchange, as_of
        )
        rows = roll_up(minutes, self._cursor, exchange, product_id, lo, hi, granularity)
        rows = rows.rename_columns(CANDLE_COLUMNS)
        return rows.sort_by([("start", "ascending"), ("exchange", "ascending")])

    def gaps(
        self,
        product_id: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        exchange: str | None = None,
    ) -> pa.Table:
        """Gap records (disconnects, trade-id gaps, what REST refused) detected in [start, end)."""
        rows = self._read("gaps", product_id, start, end, exchange).drop_columns(["date"])
        return rows.sort_by([("detected_at", "ascending"), ("exchange", "ascending")])

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """One SELECT over the views trades, tickers, candles_1m, gaps, quarantine (DuckDB).

        Times are UTC. `params` fill `?` placeholders. Anything but one read-only SELECT is
        refused (LakeError), as is SQL DuckDB cannot run (the message is DuckDB's first line).
        """
        import duckdb

        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise LakeError(_first_line(exc)) from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise LakeError("only one SELECT statement is allowed")
        views = {name: self.dataset(name) for name in VIEWS}
        with self._cursor(**views) as cur:
            try:
                return cur.sql(query, params=list(params or [])).to_arrow_table()
            except duckdb.Error as exc:
                raise LakeError(_first_line(exc)) from None

    @contextmanager
    def _cursor(self, **arrow: Any) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh DuckDB connection in UTC with Arrow tables or datasets registered by name."""
        import duckdb

        con = duckdb.connect(":memory:")
        try:
            con.execute("SET TimeZone = 'UTC'")
            for name, data in arrow.items():
                con.register(name, data)
            yield con
        finally:
            con.close()


def _file_uris(dt: DeltaTable, dates: list[date] | None) -> list[str]:
    if dates is None:
        return list(dt.file_uris())
    if not dates:
        return []
    predicate = [("date", "in", [d.isoformat() for d in dates])]
    return list(dt.file_uris(file_pruning_predicate=predicate))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
