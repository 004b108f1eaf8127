"""Read the Delta tables with DuckDB (offline: a read_parquet view over the table's live files).

Only files of the current Delta snapshot are read, so files replaced by compaction or
merges are never double counted. Every query is parameterised.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.filecache import FileCache, RowGroupCache
from crypto_sentinel.lake.location import LakeRoot, filesystem, is_remote, storage_options
from crypto_sentinel.lake.recent import TRADE_PAGE_COLUMNS, TRADES_MAX_AGE, RecentReads, _Minutes
from crypto_sentinel.lake.rollup import CANDLE_AGGREGATES as _CANDLE_AGGREGATES
from crypto_sentinel.lake.rollup import roll_up

__all__ = ["CANDLE_HISTORY_MAX_AGE", "TRADES_MAX_AGE", "TRADE_PAGE_COLUMNS", "LakeReader"]

if TYPE_CHECKING:
    import duckdb
    import pyarrow.dataset as ds

#: Candle history pages may read the table as of up to this many seconds ago: checking the
#: Delta log for a new version costs more than answering a page from memory, and a writer
#: commits only every few hundred milliseconds anyway (the API's hot state covers the newest
#: minutes in any case).
CANDLE_HISTORY_MAX_AGE = 0.25
#: Rows of `gold.candles_1m` kept decoded in memory: ~115 days of three products' minutes.
CANDLE_CACHE_ROWS = 500_000
#: Rows of `silver.trades` row groups kept decoded in memory (~70 bytes a row in
#: TRADE_PAGE_COLUMNS, ~180 with every column), in two caches: the newest files' rows (what
#: `/latest` and the first trade pages read), and the row groups older pages read, so that
#: paging through history never pushes out what `/latest` needs.
TRADE_CACHE_ROWS = 400_000
OLD_TRADE_CACHE_ROWS = 600_000
#: File listings (per table version and dates) and candle pages (per set of files) kept.
LISTINGS_KEPT = 512
#: DuckDB settings. Its allocator (a jemalloc of its own) returns freed memory only while
#: DuckDB allocates, unless its background threads purge it: without them the pages of a
#: start-up scan stay (measured: 38-81 MB kept after warm-up over a 600,000-trade lake, 6 MB
#: with them, 10 s later).
DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "allocator_background_threads": True
}


class LakeReader(RecentReads):
    """Thread-safe read access for the API and for engine start-up."""

    def __init__(self, lake: LakeRoot) -> None:
        self.lake = lake
        self._remote = is_remote(lake)
        self._options = storage_options(lake)
        self._fs = filesystem(lake)
        self._db: duckdb.DuckDBPyConnection | None = None  # opened by the first query
        self._db_lock = threading.Lock()
        self._lock = threading.Lock()
        self._tables: dict[str, DeltaTable] = {}
        self._actions: dict[str, tuple[int, pa.Table]] = {}  # add actions per table version
        self._candle_files = FileCache(CANDLE_CACHE_ROWS, *self._fs)
        self._trade_groups = RowGroupCache(TRADE_CACHE_ROWS, *self._fs)
        self._old_trade_groups = RowGroupCache(OLD_TRADE_CACHE_ROWS, *self._fs)
        self._answers: dict[tuple[Any, ...], tuple[int, list[dict[str, Any]]]] = {}
        self._computing: dict[tuple[Any, ...], threading.Lock] = {}
        self._file_lists: dict[tuple[Any, ...], tuple[int, Any]] = {}
        self._window_pages: dict[tuple[Any, ...], list[dict[str, Any]] | None] = {}
        self._listings: dict[tuple[Any, ...], tuple[int, list[str]]] = {}
        self._buckets: dict[tuple[Any, ...], tuple[tuple[str, ...], pa.Table]] = {}
        self._minutes: tuple[float, dict[tuple[str, str], _Minutes]] | None = None
        self._index_lock = threading.Lock()
        self._updated: dict[str, float] = {}  # monotonic time of each table's last refresh
        self._grown: dict[str, int] = {}  # versions each table was brought forward since opened

    def _table(self, spec: T.TableSpec, max_age: float = 0.0) -> DeltaTable | None:
        """The table at its newest version, or at one read at most `max_age` seconds ago."""
        dt = self._tables.get(spec.name)
        path = spec.uri(self.lake)
        if dt is None:
            if not DeltaTable.is_deltatable(path, storage_options=self._options):
                return None
            dt = self._tables[spec.name] = DeltaTable(path, storage_options=self._options)
            self._updated[spec.name] = time.monotonic()
        elif time.monotonic() - self._updated.get(spec.name, 0.0) >= max_age:
            self._updated[spec.name] = time.monotonic()
            with self._lock:
                before = dt.version()
                try:
                    dt.update_incremental()
                except OSError:  # log trimmed under us (maintenance): reopen at the checkpoint
                    dt = self._tables[spec.name] = DeltaTable(path, storage_options=self._options)
                grown = self._grown.get(spec.name, 0) + dt.version() - before
                if grown >= T.REOPEN_AFTER_VERSIONS:
                    # kept up to date forever, its native state only grows (REOPEN_AFTER_VERSIONS)
                    dt = self._tables[spec.name] = DeltaTable(path, storage_options=self._options)
                    grown = 0
                self._grown[spec.name] = grown
        return dt

    def files(
        self,
        spec: T.TableSpec,
        dates: Sequence[date] | None = None,
        max_age: float = 0.0,
        starts: tuple[datetime, datetime] | None = None,
        newest: bool = False,
    ) -> list[str]:
        """Live data files of the table, pruned to the given date partitions and, given
        `starts`, to files whose `start` statistics meet [first, end) (a file without
        statistics is kept). While another thread lists the same files, the listing of the
        version before is the answer, unless `newest` (what the engine learns at start)."""
        dt = self._table(spec, max_age)
        if dt is None:
            return []
        if dates is not None and not dates:
            return []
        # listing files by a predicate costs ms: kept per table version, and listed by one
        # thread at a time while the others go on with the version before
        key = (spec.name, None if dates is None else tuple(dates), starts)
        version = dt.version()
        held = self._listings.get(key)
        if held is not None and held[0] == version:
            return held[1]
        computing = self._computing.setdefault(("files", *key), threading.Lock())
        if not computing.acquire(blocking=held is None or newest):
            assert held is not None
            return held[1]
        try:
            held = self._listings.get(key)
            if held is not None and held[0] == version:
                return held[1]
            where: list[tuple[str, str, Any]] = []
            if dates is not None:
                where.append(("date", "in", [d.isoformat() for d in dates]))
            if starts is not None:
                where += [("start", ">=", starts[0]), ("start", "<", starts[1])]
            found = dt.file_uris(file_pruning_predicate=where or None)
            if spec == T.CANDLES_1M:  # a new version: drop the files it retired
                self._candle_files.keep_only(set(dt.file_uris() if where else found))
            if len(self._listings) >= LISTINGS_KEPT:
                self._listings.clear()
            self._listings[key] = (version, found)
            return found
        finally:
            computing.release()

    def query(
        self,
        spec: T.TableSpec,
        sql: str,
        params: Sequence[Any] = (),
        dates: Sequence[date] | None = None,
        newest: bool = False,
    ) -> list[dict[str, Any]]:
        """Run `sql` with the table available as `t`; [] when there is no data. `newest`:
        over the table's newest version, never the one before (see `files`)."""
        return self._run(spec, self.files(spec, dates, newest=newest), sql, params)

    def query_candles(
        self, sql: str, params: Sequence[Any], dates: Sequence[date]
    ) -> list[dict[str, Any]]:
        """`sql` over `gold.candles_1m` as `t` (no `date` column), from decoded files in memory.

        For the API's candle history: the same small files serve page after page, so they are
        decoded once (`FileCache`), and DuckDB scans the Arrow data instead of Parquet.
        """
        table = self._candle_files.table(self.files(T.CANDLES_1M, dates))
        if table is None:
            return []
        with self._cursor(candle_files=table) as cur:
            return _records(cur.execute("WITH t AS (FROM candle_files) " + sql, params))

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """DuckDB, loaded and opened at the first query that has files to read.

        Loading and opening it costs ~40 MB of resident memory (its code and catalog); an API
        that answers from hot state over a new lake never needs it.
        """
        with self._db_lock:
            if self._db is None:
                import duckdb

                self._db = duckdb.connect(":memory:", config=DUCKDB_CONFIG)
            return self._db

    @contextlib.contextmanager
    def _cursor(self, **arrow: Any) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB cursor in UTC with the given Arrow tables or datasets registered by name."""
        cur = self._connection().cursor()
        try:
            cur.execute("SET TimeZone = 'UTC'")
            for name, data in arrow.items():
                cur.register(name, data)
            yield cur
        finally:
            cur.close()

    # --- engine start-up -------------------------------------------------------------------

    def trade_id_ranges(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """Committed trade ids per (exchange, product) as contiguous ranges (gaps and islands)."""
        rows = self.query(
            T.TRADES,
            """
            SELECT exchange, product_id, min(trade_id) AS lo, max(trade_id) AS hi
            FROM (SELECT exchange, product_id, trade_id,
                         trade_id - row_number() OVER (
                             PARTITION BY exchange, product_id ORDER BY trade_id) AS island
                  FROM t)
            GROUP BY exchange, product_id, island
            ORDER BY exchange, product_id, lo
            """,
            newest=True,  # an engine that learned fewer ids would store trades twice
        )
        ranges: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for r in rows:
            ranges.setdefault((r["exchange"], r["product_id"]), []).append((r["lo"], r["hi"]))
        return ranges

    def ticker_high_water(self) -> dict[tuple[str, str], tuple[int, datetime]]:
        rows = self.query(
            T.TICKERS,
            "SELECT exchange, product_id, max(sequence) AS seq, max(time) AS time"
            " FROM t GROUP BY exchange, product_id",
            newest=True,
        )
        return {(r["exchange"], r["product_id"]): (r["seq"], r["time"]) for r in rows}

    # --- API history -------------------------------------------------------------------

    def trades(
        self,
        exchange: str,
        product_id: str,
        before: int | None,
        limit: int,
        columns: tuple[str, ...] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest-first trades with trade_id < before, reading only the files (and row groups)
        that can hold them.

        Relies on trade ids rising with trade time within a product, as exchanges assign them.
        Without `before`, or with one above what the candles know, the newest files by the
        Delta log's statistics answer (`_newest_in_memory`). With an older `before`, the
        1-minute candles (first trade id and trade count per minute, in memory) give the
        time window that holds the page (`_candle_window`); the window's answer is used only
        if it proves itself complete (see `_window_page`), else the page is read as before.
        """
        if limit <= 0:
            return []
        recent = before is None
        if before is not None:
            window = self._candle_window(exchange, product_id, before, limit)
            recent = window is not None and window[1] is None  # above every known minute
            if window is not None and window[1] is not None:
                page = self._window_page(
                    exchange, product_id, before, limit, window[0], window[1], columns
                )
                if page is not None:
                    return page
        # recent trades from the newest row groups; an old page the candles could not place
        # by DuckDB over the newest files (it may read far back; not through the memory cache)
        if recent:
            found = self._kept(
                ("trades", exchange, product_id, before, limit, columns),
                lambda: self._newest_in_memory(
                    exchange, product_id, before, limit, [("trade_id", "descending")], columns
                ),
            )
            if found is not None:
                return found
        return self.newest_rows(
            T.TRADES,
            "SELECT * FROM t WHERE exchange = ? AND product_id = ? AND trade_id < ?"
            " ORDER BY trade_id DESC LIMIT ?",
            [exchange, product_id, before if before is not None else 2**62, limit],
            limit,
            partitions=[("exchange", "=", exchange)],
        )

    def partition_dates(self, spec: T.TableSpec, max_age: float = 0.0) -> list[date]:
        """Date partitions the table holds, oldest first (from the Delta log, no file listing)."""
        dt = self._table(spec, max_age)
        if dt is None:
            return []
        with self._lock:
            parts = dt.partitions()
        return sorted({date.fromisoformat(p["date"]) for p in parts if p.get("date")})

    def newest_dates(self, spec: T.TableSpec, days: int) -> list[date]:
        """The newest date partition and those up to `days - 1` days before it."""
        dates = self.partition_dates(spec)
        if not dates:
            return []
        return [d for d in dates if (dates[-1] - d).days < days]

    def trade_extents(self) -> dict[tuple[str, str], tuple[int, int, datetime, datetime]]:
        """Lowest and highest trade id, oldest and newest trade time per (exchange, product)."""
        rows = self.query(
            T.TRADES,
            "SELECT exchange, product_id, min(trade_id) AS lo, max(trade_id) AS hi,"
            " min(time) AS oldest, max(time) AS newest FROM t GROUP BY exchange, product_id",
        )
        return {
            (r["exchange"], r["product_id"]): (r["lo"], r["hi"], r["oldest"], r["newest"])
            for r in rows
        }

    def candles_since(self, since: dict[tuple[str, str], datetime]) -> list[dict[str, Any]]:
        """1-minute candles of each (exchange, product) from its own `since` minute on."""
        if not since:
            return []
        first = min(since.values()).date()
        dates = [d for d in self.partition_dates(T.CANDLES_1M) if d >= first]
        keys = list(since)
        return self.query(
            T.CANDLES_1M,
            "SELECT t.* EXCLUDE (date) FROM t JOIN (SELECT unnest(?::VARCHAR[]) AS exchange,"
            " unnest(?::VARCHAR[]) AS product_id, unnest(?::TIMESTAMPTZ[]) AS since) AS w"
            " ON t.exchange = w.exchange AND t.product_id = w.product_id"
            " WHERE t.start >= w.since ORDER BY t.start",
            [[k[0] for k in keys], [k[1] for k in keys], [since[k] for k in keys]],
            dates=dates,
        )

    def products(self) -> list[tuple[str, str]]:
        """Every (exchange, product) with trades in the lake."""
        rows = self.query(T.TRADES, "SELECT DISTINCT exchange, product_id FROM t")
        return [(r["exchange"], r["product_id"]) for r in rows]

    def newest_ticker(
        self, exchange: str, product_id: str, since: datetime | None = None
    ) -> dict[str, Any] | None:
        """The product's newest ticker: the two newest date partitions, or only rows from
        `since` on (Parquet min/max statistics on `time` then skip most files)."""
        if since is None:
            dates, bound = self.newest_dates(T.TICKERS, 2), datetime(1970, 1, 1)
        else:
            dates = [d for d in self.partition_dates(T.TICKERS) if d >= since.date()]
            bound = since
        rows = self.query(
            T.TICKERS,
            "SELECT * FROM t WHERE exchange = ? AND product_id = ? AND time >= ?"
            " ORDER BY time DESC, sequence DESC LIMIT 1",
            [exchange, product_id, bound],
            dates=dates,
        )
        return rows[0] if rows else None

    def candle_buckets(
        self,
        exchange: str,
        product_id: str,
        start: datetime,
        end: datetime,
        granularity: int,
    ) -> pa.Table:
        """Candles of `granularity` seconds combined from the 1-minute rows in [start, end).

        Newest first, as Arrow (the API formats whole columns at once). Buckets are aligned
        to multiples of the granularity since the Unix epoch (UTC), as the exchanges align
        them; the `bucket` column holds each one's start. Amounts keep their exact decimal type.
        """
        days = (end - timedelta(microseconds=1)).date() - start.date()
        dates = [start.date() + timedelta(days=i) for i in range(days.days + 1)]
        # only files whose minutes meet the window: a new commit of the live minute leaves
        # an old window's files, and so its page, as they were
        files = tuple(self.files(T.CANDLES_1M, dates, CANDLE_HISTORY_MAX_AGE, (start, end)))
        # the same files give the same page (Delta data files never change): the same table
        key = (exchange, product_id, start, end, granularity)
        held = self._buckets.get(key)
        if held is not None and held[0] == files:
            return held[1]
        # one computation per window at a time: while it runs, the others answer with the
        # page of the files before (as old as a commit), instead of all rolling up the same
        computing = self._computing.setdefault(("buckets", *key), threading.Lock())
        if not computing.acquire(blocking=held is None):
            assert held is not None
            return held[1]
        try:
            again = self._buckets.get(key)
            if again is not None and again[0] == files:
                return again[1]
            table = self._candle_buckets(list(files), exchange, product_id, start, end, granularity)
            if len(self._buckets) >= LISTINGS_KEPT:
                self._buckets.clear()
            self._buckets[key] = (files, table)
            return table
        finally:
            computing.release()

    def _candle_buckets(
        self,
        files: list[str],
        exchange: str,
        product_id: str,
        start: datetime,
        end: datetime,
        granularity: int,
    ) -> pa.Table:
        table = self._candle_files.table(files)
        return roll_up(table, self._cursor, exchange, product_id, start, end, granularity)

    def neighbor_trade_id(
        self, exchange: str, product_id: str, at: datetime, before: bool
    ) -> int | None:
        """The stored trade next to `at` by way of 1-minute candles: `before`, the last trade
        id of the newest minute starting before `at`; else the first trade id of the oldest
        minute starting at or after it. None when the lake holds no such minute.

        The day of `at` and the one next to it are read first (the answer is nearly always
        there); the rest of the table only when they hold nothing on that side.
        """
        day, one = at.date(), timedelta(days=1)
        near = [day - one, day] if before else [day, day + one]
        for attempt in range(2):
            if attempt == 0:
                dates = near
            else:
                every = self.partition_dates(T.CANDLES_1M)
                dates = [d for d in every if (d < near[0] if before else d > near[1])]
                if not dates:
                    return None
            files = self.files(T.CANDLES_1M, dates, max_age=CANDLE_HISTORY_MAX_AGE)
            table = self._candle_files.table(files)
            if table is None:
                continue
            ts = table.schema.field("start").type
            side = pc.less if before else pc.greater_equal
            keep = pc.and_(
                pc.and_(
                    pc.equal(table["exchange"], exchange),
                    pc.equal(table["product_id"], product_id),
                ),
                side(table["start"], pa.scalar(at, ts)),
            )
            rows = table.filter(keep)
            if rows.num_rows:
                pick = pc.max(rows["start"]) if before else pc.min(rows["start"])
                row = rows.filter(pc.equal(rows["start"], pick))
                column = "last_trade_id" if before else "first_trade_id"
                return int(row[column][0].as_py())
        return None

    def newest_minutes(self, exchange: str) -> dict[str, datetime]:
        """Newest 1-minute candle start per product of `exchange` (two newest date partitions)."""
        rows = self.query_candles(
            "SELECT product_id, max(start) AS newest FROM t WHERE exchange = ? GROUP BY ALL",
            [exchange],
            self.newest_dates(T.CANDLES_1M, 2),
        )
        return {r["product_id"]: r["newest"] for r in rows}

    def candle_spans(
        self, exchange: str, windows: dict[str, tuple[datetime, datetime]]
    ) -> list[dict[str, Any]]:
        """One candle per product combining its 1-minute rows in [start, end) of its window."""
        if not windows:
            return []
        first = min(w[0] for w in windows.values()).date()
        last = max(w[1] for w in windows.values()).date()
        dates = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        names = list(windows)
        return self.query_candles(
            "SELECT t.exchange, t.product_id, min(t.start) AS bucket,"
            + _CANDLE_AGGREGATES
            + " FROM t JOIN (SELECT unnest(?::VARCHAR[]) AS product_id,"
            " unnest(?::TIMESTAMPTZ[]) AS lo, unnest(?::TIMESTAMPTZ[]) AS hi) AS w"
            " ON t.product_id = w.product_id"
            " WHERE t.exchange = ? AND t.start >= w.lo AND t.start < w.hi GROUP BY ALL",
            [names, [windows[n][0] for n in names], [windows[n][1] for n in names], exchange],
            dates,
        )

    def _run(
        self,
        spec: T.TableSpec,
        files: list[str],
        sql: str,
        params: Sequence[Any],
        bound: tuple[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """`sql` over the given files of `spec` as `t`, optionally only rows with column >= bound.

        Local files are read by DuckDB itself; files on object storage through an Arrow
        dataset (DuckDB's own S3 support is an extension downloaded at run time, which
        offline machines do not have), with the same filters pushed down.
        """
        if not files:
            return []
        args: list[Any] = []
        if self._remote:
            arrow = {"lake_files": self._dataset(spec, files)}
            head = "WITH t AS (SELECT * FROM lake_files"
        else:
            arrow = {}
            head = (
                "WITH t AS (SELECT * FROM read_parquet(?, hive_partitioning = true,"
                " union_by_name = true)"
            )
            args.append(files)
        if bound is not None:
            head += f" WHERE {bound[0]} >= ?"  # column names come from our code
            args.append(bound[1])
        with self._cursor(**arrow) as cur:
            return _records(cur.execute(head + ") " + sql, [*args, *params]))

    def _dataset(self, spec: T.TableSpec, files: list[str]) -> ds.Dataset:
        """The files as an Arrow dataset on the lake's filesystem, partition values from the
        paths (as DuckDB's `hive_partitioning` reads them locally)."""
        import pyarrow.dataset as ds  # only lakes on object storage need it (~7 MB loaded)

        fs, prefix = self._fs
        return ds.dataset(
            [f.removeprefix(prefix) for f in files],
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(
                pa.schema([spec.schema.field(name) for name in spec.partition_by]), flavor="hive"
            ),
            partition_base_dir=spec.uri(self.lake).removeprefix(prefix),
        )


def _records(rel: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in rel.description or []]
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]
