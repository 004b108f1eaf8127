"""The newest rows of a Delta table, found from the Delta log's per-file statistics rather
than by listing or scanning the lake, so a read costs what its answer holds, not what the lake
holds: `/latest`, the first trade pages, and older trade pages placed by the 1-minute candles.

`RecentReads`, part of `LakeReader` (lake/query.py), does this with the reader's caches.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.filecache import FileCache, RowGroupCache, keep_only
from crypto_sentinel.lake.location import LakeRoot

#: The API's reads of `silver.trades` (`/latest` and trade pages over the lake) may see the
#: table as of up to this many seconds ago, as candle history does.
TRADES_MAX_AGE = 0.25
#: The columns the API shows of a trade (`/latest`, trade pages): the order ids and the
#: connection id, most of a row's decoding, are left in the files.
TRADE_PAGE_COLUMNS = ("product_id", "trade_id", "price", "size", "side", "time", "recv_time")
#: Answers of `newest_trades` kept per table version (one per exchange, product and limit).
ANSWER_CACHE = 256
#: Trade pages below a cursor kept (per question and the row groups that answer it).
WINDOW_PAGES = 256
_EMPTY_TRADES = pa.table(
    {f.name: pa.array([], f.type) for f in T.TRADES.schema if f.name != "date"}
)
MINUTE = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Per (exchange, product): minute starts (µs), first trade ids, running trade counts.
_Minutes = tuple[list[int], list[int], list[int]]
#: How old the index of 1-minute candles that guides trade pages below a cursor may be.
MINUTE_INDEX_MAX_AGE = 5.0


class RecentReads:
    """Reads of the newest rows by file statistics (mixed into `LakeReader`)."""

    lake: LakeRoot
    _lock: threading.Lock
    _index_lock: threading.Lock
    _tables: dict[str, DeltaTable]
    _updated: dict[str, float]
    _actions: dict[str, tuple[int, pa.Table]]
    _answers: dict[tuple[Any, ...], tuple[int, list[dict[str, Any]]]]
    _computing: dict[tuple[Any, ...], threading.Lock]  # one computation of an answer at a time
    _file_lists: dict[tuple[Any, ...], tuple[int, Any]]
    _window_pages: dict[tuple[Any, ...], list[dict[str, Any]] | None]
    _minutes: tuple[float, dict[tuple[str, str], _Minutes]] | None
    _candle_files: FileCache
    _trade_groups: RowGroupCache
    _old_trade_groups: RowGroupCache

    if TYPE_CHECKING:  # LakeReader's, used here

        def _table(self, spec: T.TableSpec, max_age: float = 0.0) -> DeltaTable | None: ...

        def _run(
            self,
            spec: T.TableSpec,
            files: list[str],
            sql: str,
            params: Sequence[Any],
            bound: tuple[str, Any] | None = None,
        ) -> list[dict[str, Any]]: ...

        def files(
            self, spec: T.TableSpec, dates: Sequence[date] | None = None, max_age: float = 0.0
        ) -> list[str]: ...

        def query(
            self,
            spec: T.TableSpec,
            sql: str,
            params: Sequence[Any] = (),
            dates: Sequence[date] | None = None,
        ) -> list[dict[str, Any]]: ...

        def newest_dates(self, spec: T.TableSpec, days: int) -> list[date]: ...

    def newest_trades(
        self, exchange: str, product_id: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest trades (optionally of one product), newest first by time then trade id.

        Read from the newest files by the Delta log's statistics, their row groups kept in
        memory; the answer is kept per table version (`/latest` of an API replica asks the
        same few questions many times a second).
        """
        if limit <= 0:
            return []
        kept = self.newest(exchange, product_id, limit)
        rows = None if kept is None else list(kept[1])
        if rows is None:  # a file without statistics: the two newest date partitions
            rows = self.query(
                T.TRADES,
                "SELECT * FROM t WHERE exchange = ? AND (? IS NULL OR product_id = ?)"
                " ORDER BY time DESC, trade_id DESC LIMIT ?",
                [exchange, product_id, product_id, limit],
                dates=self.newest_dates(T.TRADES, 2),
            )
        return rows

    def kept_newest_trades(
        self, exchange: str, product_id: str | None, limit: int
    ) -> list[dict[str, Any]] | None:
        """`newest_trades`' answer if it is kept for the current snapshot and the snapshot
        is fresh enough to use without a look at the Delta log; else None. Never blocks:
        for the event loop, which then needs no worker thread for most `/latest` calls."""
        kept = self.kept_newest(exchange, product_id, limit)
        return None if kept is None else list(kept[1])

    def kept_newest(
        self, exchange: str, product_id: str | None, limit: int
    ) -> tuple[int, Sequence[dict[str, Any]]] | None:
        """(table version, rows) of `kept_newest_trades`, the rows not copied (read only):
        the version lets a caller keep what it makes of them (a rendered body) as long."""
        return self._kept_now(("newest", exchange, product_id, limit))

    def kept_trades(
        self,
        exchange: str,
        product_id: str,
        before: int | None,
        limit: int,
        columns: tuple[str, ...] | None = None,
    ) -> list[dict[str, Any]] | None:
        """`trades`' answer if a recent page's is kept for the current, fresh snapshot; else
        None (never blocks: the trade route then needs no worker thread for it)."""
        key = ("trades", exchange, product_id, before, limit, columns)
        kept = self._kept_now(key)
        return None if kept is None else list(kept[1])

    def _kept_now(self, key: tuple[Any, ...]) -> tuple[int, Sequence[dict[str, Any]]] | None:
        """The answer kept under `key` if it is of the current snapshot and that snapshot
        was looked up less than TRADES_MAX_AGE ago."""
        dt = self._tables.get(T.TRADES.name)
        hit = self._answers.get(key)
        if dt is None or hit is None:
            return None
        if time.monotonic() - self._updated.get(T.TRADES.name, 0.0) >= TRADES_MAX_AGE:
            return None
        cached = self._actions.get(T.TRADES.name)
        if cached is None or cached[0] != hit[0]:
            return None
        return hit

    def _kept(
        self, key: tuple[Any, ...], answer: Callable[[], list[dict[str, Any]] | None]
    ) -> list[dict[str, Any]] | None:
        """`answer()`, kept for as long as `silver.trades` stays at the same version (the
        same question on the same snapshot has the same answer)."""
        kept = self._kept_versioned(key, answer)
        return None if kept is None else list(kept[1])

    def newest(
        self, exchange: str, product_id: str | None, limit: int
    ) -> tuple[int, Sequence[dict[str, Any]]] | None:
        """(table version, rows) of `newest_trades`, the rows not copied (read only), or
        None when a file lacks statistics (then `newest_trades` answers). Blocking: for a
        thread; the version lets a caller keep what it makes of the rows."""
        order = [("time", "descending"), ("trade_id", "descending")]
        return self._kept_versioned(
            ("newest", exchange, product_id, limit),
            lambda: self._newest_in_memory(
                exchange, product_id, None, limit, order, TRADE_PAGE_COLUMNS
            ),
        )

    def _kept_versioned(
        self, key: tuple[Any, ...], answer: Callable[[], list[dict[str, Any]] | None]
    ) -> tuple[int, Sequence[dict[str, Any]]] | None:
        """(version, `answer()`) as `_kept`, the rows not copied: callers must not change
        them."""
        dt = self._table(T.TRADES, TRADES_MAX_AGE)
        if dt is None:
            return 0, []
        version, _ = self._versioned_actions(T.TRADES, dt)
        hit = self._answers.get(key)
        if hit is not None and hit[0] == version:
            return hit
        # One thread computes a new version's answer; the others asking meanwhile take the
        # previous version's (as old as a version, like any answer kept for TRADES_MAX_AGE)
        # instead of each decoding the same row groups at once: the tail of `/latest` under
        # many clients.
        computing = self._computing.setdefault(key, threading.Lock())
        if not computing.acquire(blocking=hit is None):
            assert hit is not None
            return hit
        try:
            hit = self._answers.get(key)
            if hit is not None and hit[0] == version:  # computed while this one waited
                return hit
            rows = answer()
            if rows is None:
                return None
            if len(self._answers) >= ANSWER_CACHE:
                self._answers.clear()
                self._computing.clear()
            self._answers[key] = (version, rows)
            return version, rows
        finally:
            computing.release()

    def newest_rows(
        self,
        spec: T.TableSpec,
        sql: str,
        params: Sequence[Any],
        limit: int,
        *,
        column: str = "time",
        partitions: Sequence[tuple[str, str, Any]] = (),
    ) -> list[dict[str, Any]]:
        """Run `sql` - at most `limit` rows, newest first by `column` - over the newest files.

        The table `t` that `sql` sees holds only rows with `column >= bound`. The bound comes
        from the Delta log's per-file statistics: the files with the newest max(`column`) that
        together hold `limit` rows set it to their smallest min(`column`), and only files
        whose max reaches it are read (then row groups are skipped by the same filter). If
        `sql`'s own filters leave fewer than `limit` rows, the bound widens (twice the rows)
        until the answer is complete or every file is read. `partitions` are (column, "=" or
        "in", value) filters on partition columns.
        """
        dt = self._table(spec)
        if dt is None or limit <= 0:
            return []
        actions = self._add_actions(spec, dt)
        budget = limit
        while True:
            bound = _lower_bound(actions, column, partitions, budget)
            where: list[tuple[str, str, Any]] = [*partitions]
            if bound is not None:
                where.append((column, ">=", bound))
            with self._lock:
                files = dt.file_uris(file_pruning_predicate=where or None)
            rows = self._run(
                spec, files, sql, params, (column, bound) if bound is not None else None
            )
            if len(rows) >= limit or bound is None:
                return rows
            budget *= 2

    def _add_actions(self, spec: T.TableSpec, dt: DeltaTable) -> pa.Table:
        """The snapshot's live files with rows and min/max stats, cached per table version."""
        return self._versioned_actions(spec, dt)[1]

    def _versioned_actions(self, spec: T.TableSpec, dt: DeltaTable) -> tuple[int, pa.Table]:
        """(table version, `_add_actions`). Listing files with statistics costs tens of ms: one
        thread lists a new version while the others go on with the one before, not queueing."""
        version = dt.version()
        cached = self._actions.get(spec.name)
        if cached is not None and cached[0] == version:
            return cached
        computing = self._computing.setdefault(("actions", spec.name), threading.Lock())
        if not computing.acquire(blocking=cached is None):
            assert cached is not None
            return cached
        try:
            cached = self._actions.get(spec.name)
            if cached is not None and cached[0] == version:
                return cached
            actions = pa.table(dt.get_add_actions(flatten=True))
            self._actions[spec.name] = (version, actions)
            if spec == T.TRADES:  # the caches forget the files this version retired
                base = T.TRADES.uri(self.lake).rstrip("/")
                live = {f"{base}/{unquote(path)}" for path in actions["path"].to_pylist()}
                keep_only(live, self._trade_groups, self._old_trade_groups)
            return version, actions
        finally:
            computing.release()

    def _trade_files(
        self, exchange: str, lo: datetime | None, hi: datetime | None
    ) -> list[tuple[str, int, datetime, datetime]] | None:
        """(uri, rows, min time, max time) of the exchange's trade files whose time statistics
        meet [lo, hi) (None: open), newest max first; None when a file lacks statistics."""
        dt = self._table(T.TRADES, TRADES_MAX_AGE)
        if dt is None:
            return []
        version, actions = self._versioned_actions(T.TRADES, dt)
        key = ("files", exchange)
        hit = self._file_lists.get(key)  # a dict's get and set need no lock of ours
        if hit is not None and hit[0] == version:
            files = hit[1]
        else:
            files = self._list_trade_files(actions, exchange)
            self._file_lists[key] = (version, files)
        if files is None:
            return None
        return [f for f in files if (lo is None or f[3] >= lo) and (hi is None or f[2] < hi)]

    def _list_trade_files(
        self, actions: pa.Table, exchange: str
    ) -> list[tuple[str, int, datetime, datetime]] | None:
        if actions.num_rows == 0:
            return []
        if "max.time" not in actions.column_names:
            return None
        mine = actions.filter(pc.equal(actions["partition.exchange"], exchange))
        if mine["min.time"].null_count or mine["max.time"].null_count:
            return None
        mine = mine.sort_by([("max.time", "descending")])
        base = T.TRADES.uri(self.lake).rstrip("/")
        return [
            (f"{base}/{unquote(path)}", rows or 0, low, high)
            for path, rows, low, high in zip(
                mine["path"].to_pylist(),
                mine["num_records"].to_pylist(),
                mine["min.time"].to_pylist(),
                mine["max.time"].to_pylist(),
                strict=True,
            )
        ]

    def _trade_rows(
        self,
        exchange: str,
        groups: Sequence[tuple[str, int]],
        product_id: str | None,
        lo: datetime | None,
        hi: datetime | None,
        columns: tuple[str, ...] | None = None,
        cache: RowGroupCache | None = None,
    ) -> pa.Table:
        """The trades of row `groups` (uri, index; kept in `cache`, by default the newest
        rows' one) in [lo, hi), of one product; only `columns` (and `exchange`) if given."""
        held = self._trade_groups if cache is None else cache
        parts = [held.group(uri, i, columns) for uri, i in groups]
        if not parts:
            return _EMPTY_TRADES
        table = pa.concat_tables(parts, promote_options="default")
        keep: Any = None

        def both(a: Any, b: Any) -> Any:
            return b if a is None else pc.and_(a, b)

        if product_id is not None:
            keep = both(keep, pc.equal(table["product_id"], product_id))
        if lo is not None:
            keep = both(keep, pc.greater_equal(table["time"], pa.scalar(lo, T.UTC_TS)))
        if hi is not None:
            keep = both(keep, pc.less(table["time"], pa.scalar(hi, T.UTC_TS)))
        if keep is not None:
            table = table.filter(keep)
        return table.append_column("exchange", pa.array([exchange] * table.num_rows, pa.string()))

    def _groups_in(
        self, files: Sequence[tuple[str, int, datetime, datetime]], lo: Any, hi: Any
    ) -> list[tuple[str, int]]:
        """Row groups of `files` whose time statistics meet [lo, hi] (None: open)."""
        out = []
        for uri, *_ in files:
            for i, _, low, high in self._trade_groups.stats(uri, "time"):
                if (lo is None or high is None or high >= lo) and (
                    hi is None or low is None or low <= hi
                ):
                    out.append((uri, i))
        return out

    def _newest_in_memory(
        self,
        exchange: str,
        product_id: str | None,
        before: int | None,
        limit: int,
        order: list[tuple[str, str]],
        columns: tuple[str, ...] | None = None,
    ) -> list[dict[str, Any]] | None:
        """The `limit` first rows by `order` (newest first) among the exchange's trades (of
        one product, below `before`), reading only row groups that can hold them.

        As `newest_rows`, but by row group: the row groups with the newest max(time) that
        together hold `budget` rows set the bound to their smallest min(time), and only row
        groups whose max reaches it are read (a compacted day is one file of many row
        groups). If the filters leave fewer than `limit` rows, the budget doubles until the
        answer is complete or every row group is read. None when a file lacks statistics.
        """
        files = self._trade_files(exchange, None, None)
        if files is None:
            return None
        budget = limit
        while True:
            bound = self._row_group_bound(files, budget)
            reach = [f for f in files if bound is None or f[3] >= bound]
            table = self._trade_rows(
                exchange, self._groups_in(reach, bound, None), product_id, bound, None, columns
            )
            if before is not None:
                table = table.filter(pc.less(table["trade_id"], before))
            if table.num_rows >= limit or bound is None:
                return _rows(table.sort_by(order).slice(0, limit))
            budget *= 2

    def _row_group_bound(
        self, files: Sequence[tuple[str, int, datetime, datetime]], budget: int
    ) -> datetime | None:
        """A time with at least `budget` rows at or after it, as late as the row group
        statistics of the newest files tell; None when the files hold fewer rows (or a row
        group has no statistics): then every row is wanted."""
        groups: list[tuple[Any, Any, int]] = []  # (max, min, rows) per row group
        seen = 0
        for uri, rows, _low, high in files:
            if seen >= budget and high < _kth_max(groups, budget):
                break  # row groups of this and older files all end before the bound
            for _, count, low, top in self._trade_groups.stats(uri, "time"):
                if low is None or top is None:
                    return None
                groups.append((top, low, count))
            seen += rows
        return _kth_max(groups, budget) if seen >= budget else None

    def _candle_window(
        self, exchange: str, product_id: str, before: int, limit: int
    ) -> tuple[datetime | None, datetime | None] | None:
        """Trade times [lo, hi) that should hold the `limit` trades of the product below
        `before`, from 1-minute candles (None: open): hi is the end of the oldest minute whose
        first trade id is >= before, lo the start of the minute from which the minutes before
        the newest one starting below `before` add up to `limit` trades. Only a hint (candles
        may lag the trades, or be rewritten): `_window_page` checks it. None when no minute
        starts below `before`."""
        index = self._minute_index().get((exchange, product_id))
        if index is None:
            return None
        starts, firsts, cumulative = index
        j = bisect.bisect_left(firsts, before)  # minutes with first trade id < before
        if j == 0:
            return None
        hi = _from_micros(starts[j]) + MINUTE if j < len(starts) else None
        top = j - 1
        if top == 0:
            return None, hi
        enough = cumulative[top - 1] - limit
        if enough < 0:
            return None, hi
        k = bisect.bisect_right(cumulative, enough)
        return _from_micros(starts[k]), hi

    def _minute_index(self) -> dict[tuple[str, str], _Minutes]:
        """Per (exchange, product): minute starts (µs), first trade ids (made non-decreasing)
        and running trade counts of `gold.candles_1m`, oldest first. Rebuilt at most every
        MINUTE_INDEX_MAX_AGE seconds: it only guides reads that check what they find."""
        now = time.monotonic()
        held = self._minutes
        if held is not None and now - held[0] < MINUTE_INDEX_MAX_AGE:
            return held[1]
        with self._index_lock:
            held = self._minutes
            if held is not None and now - held[0] < MINUTE_INDEX_MAX_AGE:
                return held[1]
            index: dict[tuple[str, str], _Minutes] = {}
            table = self._candle_files.table(self.files(T.CANDLES_1M, None))
            if table is not None:
                table = table.select(
                    ["exchange", "product_id", "start", "first_trade_id", "trade_count"]
                ).sort_by([("exchange", "ascending"), ("product_id", "ascending"),
                           ("start", "ascending")])  # fmt: skip
                exchanges = table["exchange"].to_pylist()
                products = table["product_id"].to_pylist()
                starts = table["start"].cast(pa.int64()).to_pylist()
                firsts = table["first_trade_id"].fill_null(0).to_pylist()
                counts = table["trade_count"].fill_null(0).to_pylist()
                for (ex, product), rows in itertools.groupby(
                    range(len(starts)), key=lambda i: (exchanges[i], products[i])
                ):
                    at = list(rows)
                    index[(ex, product)] = (
                        [starts[i] for i in at],
                        list(itertools.accumulate((firsts[i] for i in at), max)),
                        list(itertools.accumulate(counts[i] for i in at)),
                    )
            self._minutes = (now, index)
            return index

    def _window_page(
        self,
        exchange: str,
        product_id: str,
        before: int,
        limit: int,
        lo: datetime | None,
        hi: datetime,
        columns: tuple[str, ...] | None = None,
    ) -> list[dict[str, Any]] | None:
        """The page of trades below `before` if trades in [lo, hi) prove it complete: the
        window holds a trade with id >= before (so, ids rising with time, no later trade is
        below it) and `limit` trades below `before` (so no earlier trade is among the
        newest `limit`), or reaches back to the first trade. Else None."""
        files = self._trade_files(exchange, lo, hi)
        if files is None:
            return None
        groups = self._groups_in(files, lo, hi)
        # the same question over the same row groups (files never change) has the same
        # answer: kept, as history pages are asked again and again
        key = (exchange, product_id, before, limit, lo, hi, columns, tuple(groups))
        if key in self._window_pages:
            page = self._window_pages[key]
            return None if page is None else list(page)
        page = self._read_window(exchange, product_id, before, limit, lo, hi, columns, groups)
        if len(self._window_pages) >= WINDOW_PAGES:
            self._window_pages.clear()
        self._window_pages[key] = page
        return None if page is None else list(page)

    def _read_window(
        self,
        exchange: str,
        product_id: str,
        before: int,
        limit: int,
        lo: datetime | None,
        hi: datetime,
        columns: tuple[str, ...] | None,
        groups: list[tuple[str, int]],
    ) -> list[dict[str, Any]] | None:
        """`_window_page` read from the row groups."""
        table = self._trade_rows(
            exchange, groups, product_id, lo, hi, columns, self._old_trade_groups
        )
        if table.num_rows == 0:
            return None
        if pc.max(table["trade_id"]).as_py() < before:
            return None
        table = table.filter(pc.less(table["trade_id"], before))
        if table.num_rows < limit and lo is not None:
            return None
        return _rows(table.sort_by([("trade_id", "descending")]).slice(0, limit))


def _lower_bound(
    actions: pa.Table, column: str, partitions: Sequence[tuple[str, str, Any]], rows: int
) -> Any | None:
    """Smallest min(`column`) over the newest files (by max) that hold `rows` rows; None when
    those are all the files or a file lacks statistics (then everything must be read)."""
    if actions.num_rows == 0:
        return None
    keep = [True] * actions.num_rows
    for name, op, value in partitions:
        wanted = set(value) if op == "in" else {value}
        values = actions.column(f"partition.{name}").to_pylist()
        keep = [k and v in wanted for k, v in zip(keep, values, strict=True)]
    if f"max.{column}" not in actions.column_names:
        return None
    highs = actions.column(f"max.{column}").to_pylist()
    lows = actions.column(f"min.{column}").to_pylist()
    counts = actions.column("num_records").to_pylist()
    files = [i for i, k in enumerate(keep) if k]
    if any(highs[i] is None or lows[i] is None for i in files):
        return None
    files.sort(key=lambda i: highs[i], reverse=True)
    seen, bound = 0, None
    for n, i in enumerate(files):
        seen += counts[i] or 0
        bound = lows[i] if bound is None else min(bound, lows[i])
        if seen >= rows:
            return bound if n + 1 < len(files) else None
    return None


def _kth_max(groups: list[tuple[Any, Any, int]], rows: int) -> Any:
    """The smallest min(time) among the row groups with the newest max that hold `rows`."""
    taken, bound = 0, None
    for _top, low, count in sorted(groups, key=lambda g: g[0], reverse=True):
        taken += count
        bound = low if bound is None else min(bound, low)
        if taken >= rows:
            break
    return bound


def _from_micros(value: Any) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, as `to_pylist` makes them, but timestamps (UTC) built from their
    integer value: `to_pylist` converts each through its time zone, most of the cost."""
    columns: dict[str, list[Any]] = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(field.type) and field.type.unit == "us":
            micros = column.cast(pa.int64()).to_pylist()
            columns[field.name] = [
                None if v is None else _EPOCH + timedelta(microseconds=v) for v in micros
            ]
        else:
            columns[field.name] = column.to_pylist()
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
