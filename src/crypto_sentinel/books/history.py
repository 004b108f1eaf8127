"""A book exactly as the engine had it at any moment, rebuilt from the lake.

The newest full-depth snapshot of gold.book_snapshots at or before the moment, then the
silver.book_updates rows after it (in the engine's order: recv_time, conn_id, recv_seq,
position) up to the moment, applied through the same `OrderBook` with the same truncation
and the same update id / time bookkeeping as `books/processor.py`. Validity comes from the
snapshot: every change of validity is a full snapshot of its own.

Reads prune by partition (date, exchange) and by the Delta log's per-file min/max of the
time columns, then by Parquet row-group statistics (`pyarrow.parquet` filters; the engine
writes book rows in 16,384-row groups); the add actions are cached per table version, so a
read costs the files that can hold the answer. Data files never change, so the full
snapshots' keys are cached per file and the newest few snapshot rows are kept: a read
usually decodes only the updates after its checkpoint.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from crypto_sentinel.books.orderbook import BookView, OrderBook
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, filesystem, storage_options

#: (recv_time in unix microseconds, conn_id, recv_seq): a frame's place in the engine's order.
FrameKey = tuple[int, str, int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_FULL = ("checkpoint", "resync")
KEY_CACHE = 4096  # (file, product) lists of full snapshot keys kept
ROW_CACHE = 32  # full snapshot rows kept (one of 1,000 levels a side is ~0.3 MB)
_SNAPSHOT_KEYS = [
    "product_id", "time", "recv_time", "conn_id", "recv_seq", "position", "depth", "reason",
]  # fmt: skip
_UPDATE_COLUMNS = [
    "side", "price", "size", "update_id", "snapshot", "time", "book_time", "recv_time",
    "conn_id", "recv_seq", "position",
]  # fmt: skip


def _us(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICRO


def _when(us: int) -> datetime:
    return _EPOCH + us * _MICRO


@dataclass(frozen=True)
class _File:
    uri: str
    day: date | None
    low: int | None  # min of the pruning column (unix us), None: no statistics
    high: int | None
    full: bool = True  # may hold full snapshots (rows with a null `depth`)


class BookHistory:
    """Book reads of one lake; keeps the tables and their file lists between calls."""

    def __init__(self, lake: LakeRoot) -> None:
        self.lake = lake
        self._fs, self._prefix = filesystem(lake)
        self._tables: dict[str, DeltaTable] = {}
        self._files: dict[tuple[str, str, str], tuple[int, list[_File]]] = {}
        self._lock = threading.Lock()
        self._keys: OrderedDict[tuple[str, str], list[tuple[Any, ...]]] = OrderedDict()
        self._rows: OrderedDict[tuple[str, str, tuple[Any, ...]], dict[str, Any]] = OrderedDict()

    # --- files ---------------------------------------------------------------------------

    def _table(self, spec: T.TableSpec, refresh: bool = True) -> DeltaTable | None:
        dt = self._tables.get(spec.name)
        if dt is None:
            uri = spec.uri(self.lake)
            options = storage_options(self.lake)
            if not DeltaTable.is_deltatable(uri, storage_options=options):
                return None
            dt = self._tables[spec.name] = DeltaTable(uri, storage_options=options)
        elif refresh:
            dt.update_incremental()
        return dt

    def _file_list(
        self, spec: T.TableSpec, exchange: str, column: str, refresh: bool = True
    ) -> list[_File]:
        """The exchange's files of `spec` with the min/max of `column`, per table version
        (one caller at a time: API threads share the table objects); `refresh=False` when
        the caller has just brought the table up to date."""
        with self._lock:
            return self._list_files(spec, exchange, column, refresh)

    def _list_files(
        self, spec: T.TableSpec, exchange: str, column: str, refresh: bool
    ) -> list[_File]:
        dt = self._table(spec, refresh)
        if dt is None:
            return []
        version = dt.version()
        key = (spec.name, exchange, column)
        hit = self._files.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        actions = pa.table(dt.get_add_actions(flatten=True))
        files: list[_File] = []
        if actions.num_rows:
            mine = actions.filter(pc.equal(actions["partition.exchange"], exchange))
            base = spec.uri(self.lake).rstrip("/")
            lows = _column_us(mine, f"min.{column}")
            # the log's timestamp statistics keep milliseconds: a max may be 999 us short
            highs = [None if h is None else h + 999 for h in _column_us(mine, f"max.{column}")]
            days = mine["partition.date"].to_pylist()
            nulls = (
                mine["null_count.depth"].to_pylist()
                if "null_count.depth" in mine.column_names
                else [None] * mine.num_rows
            )
            for path, day, low, high, null in zip(
                mine["path"].to_pylist(), days, lows, highs, nulls, strict=True
            ):
                when = day if isinstance(day, date) or day is None else date.fromisoformat(day)
                full = null is None or null > 0
                files.append(_File(f"{base}/{unquote(path)}", when, low, high, full))
        self._files[key] = (version, files)
        return files

    def _read(
        self, files: Sequence[_File], columns: list[str] | None, filters: Any
    ) -> pa.Table | None:
        """The rows of `files` that pass `filters` (row groups pruned by their statistics);
        several files are read together, in parallel."""
        if not files:
            return None
        paths = [f.uri.removeprefix(self._prefix) for f in files]
        try:
            table = pq.read_table(
                paths if len(paths) > 1 else paths[0], columns=columns, filters=filters,
                filesystem=self._fs,
            )  # fmt: skip
        except pa.ArrowInvalid:  # files of different schemas: one at a time
            parts = [
                _plain(pq.read_table(p, columns=columns, filters=filters, filesystem=self._fs))
                for p in paths
            ]
            table = pa.concat_tables(parts, promote_options="default")
        return _plain(table) if table.num_rows else None

    def recent_products(self, seconds: float) -> list[tuple[str, str]]:
        """(exchange, product) of the snapshots in the newest `seconds` of book time (every
        kept book has a full one per checkpoint interval): the books a restarted engine
        continues; a book silent for longer is stale anyway."""
        found: set[tuple[str, str]] = set()
        for exchange in self._exchanges():
            files = self._file_list(T.BOOK_SNAPSHOTS, exchange, "time")
            highs = [f.high for f in files if f.high is not None]
            if not highs:
                continue
            since = max(highs) - int(seconds * 1_000_000)
            recent = [f for f in files if f.high is None or f.high >= since]
            table = self._read(recent, ["product_id"], None)
            if table is not None:
                found.update((exchange, p) for p in pc.unique(table["product_id"]).to_pylist())
        return sorted(found)

    def _exchanges(self) -> list[str]:
        with self._lock:
            dt = self._table(T.BOOK_SNAPSHOTS)
            if dt is None:
                return []
            actions = pa.table(dt.get_add_actions(flatten=True))
        if not actions.num_rows:
            return []
        return sorted(set(actions["partition.exchange"].to_pylist()))

    # --- the rebuild -----------------------------------------------------------------------

    def book_at(
        self, exchange: str, product_id: str, at: datetime, depth: int | None = None
    ) -> BookView | None:
        """The book as the engine had it after its last change at or before `at` (book time:
        exchange time, else receive time); None when no full snapshot precedes `at`."""
        found = self._rebuild(exchange, product_id, at_us=_us(at), before=None)
        return None if found is None else found[0].view(depth)

    def book_before(
        self, exchange: str, product_id: str, before: FrameKey | None
    ) -> tuple[OrderBook, int, str] | None:
        """(book, book time in unix us, connection of its last frame) after every change
        stored before the frame `before` (None: after every stored change): how a restarted
        engine continues."""
        return self._rebuild(exchange, product_id, at_us=None, before=before)

    def _rebuild(
        self, exchange: str, product_id: str, at_us: int | None, before: FrameKey | None
    ) -> tuple[OrderBook, int, str] | None:
        snap = self._full_snapshot(exchange, product_id, at_us, before)
        if snap is None or self._expired(exchange, _us(snap["time"])):
            return None
        book = OrderBook(exchange, product_id)
        exchange_time = snap["exchange_time"]
        book.load_snapshot(snap["bids"], snap["asks"], snap["update_id"], exchange_time)
        if not snap["valid"]:
            book.mark_invalid(snap["invalid_reason"] or "")
        moment = _us(snap["time"])
        start: tuple[int, str, int, int] = (
            _us(snap["recv_time"]), snap["conn_id"], snap["recv_seq"], snap["position"],
        )  # fmt: skip
        conn_id = snap["conn_id"]
        rows = self._updates(exchange, product_id, moment, at_us, before)
        if rows is not None:
            moment, conn_id = _replay(book, rows, start, snap["max_depth"], moment, conn_id)
        return book, moment, conn_id

    def _full_snapshot(
        self, exchange: str, product_id: str, at_us: int | None, before: FrameKey | None
    ) -> dict[str, Any] | None:
        column = "time" if before is None else "recv_time"
        bound = at_us if before is None else before[0]
        files = self._file_list(T.BOOK_SNAPSHOTS, exchange, column)
        files = [f for f in files if f.full and (bound is None or f.low is None or f.low <= bound)]
        files.sort(key=lambda f: -(f.high if f.high is not None else 1 << 62))
        at = 0 if before is None else 1  # the key's field `bound` limits
        best: tuple[Any, ...] | None = None
        best_file: _File | None = None
        for f in files:  # newest first: stop once a file cannot hold anything newer
            if best is not None and f.high is not None and f.high < best[0]:
                break
            for key in self._snapshot_keys(f, product_id):
                if bound is not None and key[at] > bound:
                    continue
                if before is not None and key[1:4] >= before:
                    continue
                if best is None or key > best:
                    best, best_file = key, f
        if best is None or best_file is None:
            return None
        return self._snapshot_row(best_file, product_id, best)

    def _snapshot_keys(self, f: _File, product_id: str) -> list[tuple[Any, ...]]:
        """The product's full snapshots in one file (files never change: cached by path)."""
        cache_key = (f.uri, product_id)
        with self._lock:
            hit = self._keys.get(cache_key)
            if hit is not None:
                self._keys.move_to_end(cache_key)
                return hit
        table = self._read([f], _SNAPSHOT_KEYS, [("product_id", "=", product_id),
                                                 ("reason", "in", _FULL)])  # fmt: skip
        keys = [] if table is None else _snapshot_keys(table)
        with self._lock:
            self._keys[cache_key] = keys
            while len(self._keys) > KEY_CACHE:
                self._keys.popitem(last=False)
        return keys

    def _snapshot_row(self, f: _File, product_id: str, key: tuple[Any, ...]) -> dict[str, Any]:
        """One full snapshot row as Python values, the newest few kept: the moments asked of
        a book cluster, and most share a checkpoint."""
        cache_key = (f.uri, product_id, key)
        with self._lock:
            hit = self._rows.get(cache_key)
            if hit is not None:
                self._rows.move_to_end(cache_key)
                return hit
        rows = self._read(
            [f], None,
            [("product_id", "=", product_id), ("reason", "in", _FULL),
             ("recv_time", "=", pa.scalar(key[1], pa.int64()).cast(T.UTC_TS)),
             ("conn_id", "=", key[2]), ("recv_seq", "=", key[3]), ("position", "=", key[4])],
        )  # fmt: skip
        assert rows is not None
        first = rows.slice(0, 1)
        row = dict(first.drop_columns(["bids", "asks"]).to_pylist()[0])
        for name in ("bids", "asks"):  # levels by way of their text: see `_decimals`
            levels = pc.list_flatten(first[name])
            prices = _decimals(pc.struct_field(levels, "price"))
            sizes = _decimals(pc.struct_field(levels, "size"))
            row[name] = list(zip(prices, sizes, strict=True))
        with self._lock:
            self._rows[cache_key] = row
            while len(self._rows) > ROW_CACHE:
                self._rows.popitem(last=False)
        return row

    def _expired(self, exchange: str, from_us: int) -> bool:
        """Whether retention removed updates after a snapshot (gold outlives silver by
        default): the book then cannot be rebuilt exactly, and no answer beats a wrong one."""
        days = [f.day for f in self._file_list(T.BOOK_UPDATES, exchange, "book_time")]
        oldest = min((d for d in days if d is not None), default=None)
        return oldest is None or oldest > _when(from_us).date()

    def _updates(
        self, exchange: str, product_id: str, from_us: int, at_us: int | None,
        before: FrameKey | None,
    ) -> pa.Table | None:  # fmt: skip
        # `_expired` brought the table up to date a moment ago
        files = self._file_list(T.BOOK_UPDATES, exchange, "book_time", refresh=False)
        first_day = _when(from_us).date()
        keep = []
        for f in files:
            if f.day is not None and f.day < first_day:
                continue
            if f.high is not None and f.high < from_us:
                continue
            if at_us is not None and f.low is not None and f.low > at_us:
                continue
            keep.append(f)
        filters: list[Any] = [
            ("product_id", "=", product_id),
            ("book_time", ">=", pa.scalar(from_us, pa.int64()).cast(T.UTC_TS)),
        ]
        if at_us is not None:
            filters.append(("book_time", "<=", pa.scalar(at_us, pa.int64()).cast(T.UTC_TS)))
        if before is not None:
            recv = pa.scalar(before[0], pa.int64()).cast(T.UTC_TS)
            filters.append(("recv_time", "<=", recv))
        table = self._read(keep, _UPDATE_COLUMNS, filters)
        if table is None:
            return None
        order = pc.sort_indices(
            table,
            [("recv_time", "ascending"), ("conn_id", "ascending"), ("recv_seq", "ascending"),
             ("position", "ascending")],
        )  # fmt: skip
        table = table.take(order)
        if before is not None:
            keys = zip(
                pc.cast(table["recv_time"], pa.int64()).to_pylist(),
                table["conn_id"].to_pylist(), table["recv_seq"].to_pylist(), strict=True,
            )  # fmt: skip
            table = table.filter(pa.array([k < before for k in keys], pa.bool_()))
        return table


def _snapshot_keys(table: pa.Table) -> list[tuple[Any, ...]]:
    """(time, recv_time, conn_id, recv_seq, position) of each full snapshot row (us ints)."""
    full = table.filter(pc.is_null(table["depth"]))
    return list(
        zip(
            pc.cast(full["time"], pa.int64()).to_pylist(),
            pc.cast(full["recv_time"], pa.int64()).to_pylist(),
            full["conn_id"].to_pylist(),
            full["recv_seq"].to_pylist(),
            full["position"].to_pylist(),
            strict=True,
        )
    )


def _replay(
    book: OrderBook, rows: pa.Table, start: tuple[int, str, int, int], max_depth: int | None,
    moment: int, conn_id: str,
) -> tuple[int, str]:  # fmt: skip
    """Apply the rows after `start` frame by frame as the processor did; the new book time
    and the connection of the last frame applied.

    A frame of plain updates is applied one side at a time (`apply_many`): the two sides are
    separate, so this is the processor's order level by level; a frame holding a snapshot
    takes the row by row path."""
    recv = pc.cast(rows["recv_time"], pa.int64()).to_pylist()
    conn = rows["conn_id"].to_pylist()
    seq = rows["recv_seq"].to_pylist()
    pos = rows["position"].to_pylist()
    n = len(recv)
    i = 0
    while i < n and (recv[i], conn[i], seq[i], pos[i]) < start:
        i += 1
    if i == n:
        return moment, conn_id
    rows = rows.slice(i)
    conn = conn[i:]
    cols = _ReplayColumns(rows)
    for a, b in _frames(rows):
        if cols.any_snapshot(a, b):
            _apply_rows(book, cols, a, b)
        else:
            _apply_frame(book, cols, a, b)
        moment = max(moment, max(cols.book_time[a:b]))
        conn_id = conn[b - 1]
        if max_depth is not None and (len(book.bids) > max_depth or len(book.asks) > max_depth):
            book.truncate(max_depth)
    return moment, conn_id


class _ReplayColumns:
    """The update rows' columns as Python lists, once per replay."""

    def __init__(self, rows: pa.Table) -> None:
        self.side = rows["side"].to_pylist()
        self.price = _decimals(rows["price"])
        self.size = _decimals(rows["size"])
        self.update_id = rows["update_id"].to_pylist()
        self.snapshot = rows["snapshot"].to_pylist()
        self.times = pc.cast(rows["time"], pa.int64()).to_pylist()  # unix us
        self.book_time = pc.cast(rows["book_time"], pa.int64()).to_pylist()

    def any_snapshot(self, a: int, b: int) -> bool:
        return any(self.snapshot[a:b])


#: Decimal of each stored text seen (bounded): a book's prices and sizes repeat across reads.
_DECIMALS: dict[str, Decimal] = {}
_DECIMALS_LIMIT = 200_000


def _decimals(column: pa.ChunkedArray | pa.Array) -> list[Decimal]:
    """Exact decimal128 values as `Decimal`s by way of their text (Arrow's own `to_pylist`
    of decimals is several times slower); the same text gives the same object. The engine
    never stores a level without price or size."""
    if column.null_count:
        raise ValueError("a stored book level has no price or size")
    made = _DECIMALS
    if len(made) > _DECIMALS_LIMIT:
        made.clear()
    out: list[Decimal] = []
    for text in pc.cast(column, pa.string()).to_pylist():
        value = made.get(text)
        if value is None:
            value = made[text] = Decimal(text)
        out.append(value)
    return out


def _frames(rows: pa.Table) -> list[tuple[int, int]]:
    """[start, end) row ranges of the frames (rows are in the engine's order)."""
    n = rows.num_rows
    if n == 0:
        return []
    changed = pc.or_(
        pc.or_(
            pc.not_equal(rows["recv_time"].slice(1), rows["recv_time"].slice(0, n - 1)),
            pc.not_equal(rows["conn_id"].slice(1), rows["conn_id"].slice(0, n - 1)),
        ),
        pc.not_equal(rows["recv_seq"].slice(1), rows["recv_seq"].slice(0, n - 1)),
    )
    starts = [0] + [k + 1 for k in pc.indices_nonzero(changed).to_pylist()]
    return list(zip(starts, [*starts[1:], n], strict=True))


def _apply_frame(book: OrderBook, c: _ReplayColumns, a: int, b: int) -> None:
    """A frame of plain updates: each side's changes in order, then the ids and time of its
    last row that has them."""
    sides = c.side[a:b]
    pairs = list(zip(c.price[a:b], c.size[a:b], strict=True))
    book.apply_many("bid", [pair for d, pair in zip(sides, pairs, strict=True) if d == "bid"])
    book.apply_many("ask", [pair for d, pair in zip(sides, pairs, strict=True) if d == "ask"])
    for t in reversed(c.times[a:b]):
        if t is not None:
            book.time = _when(t)
            break
    for u in reversed(c.update_id[a:b]):
        if u is not None:
            book.update_id = u
            break


def _apply_rows(book: OrderBook, c: _ReplayColumns, i: int, end: int) -> None:
    """A frame holding a snapshot event, row by row: a snapshot's rows replace the book."""
    side, price, size, update_id, snapshot, times = (
        c.side, c.price, c.size, c.update_id, c.snapshot, c.times,
    )  # fmt: skip
    while i < end:
        if snapshot[i]:  # a snapshot event: the book is replaced by its levels
            j = i
            while j < end and snapshot[j] and update_id[j] == update_id[i]:
                j += 1
            levels = list(zip(side[i:j], price[i:j], size[i:j], strict=True))
            book.load_snapshot(
                [(p, s) for d, p, s in levels if d == "bid"],
                [(p, s) for d, p, s in levels if d == "ask"],
                update_id[i], None if times[i] is None else _when(times[i]),
            )  # fmt: skip
            last = j - 1
            i = j
        else:
            book.apply(side[i], price[i], size[i])
            last = i
            i += 1
        if times[last] is not None:
            book.time = _when(times[last])
        if update_id[last] is not None:
            book.update_id = update_id[last]


def _column_us(table: pa.Table, name: str) -> list[int | None]:
    if name not in table.column_names:
        return [None] * table.num_rows
    column = table[name]
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.int64()).to_pylist()
    return [None if v is None else _us(v) for v in column.to_pylist()]


def _plain(table: pa.Table) -> pa.Table:
    """string_view columns (as delta-rs writes them) as plain strings."""
    fields = [f.with_type(pa.string()) if f.type == pa.string_view() else f for f in table.schema]
    schema = pa.schema(fields)
    return table if schema.equals(table.schema) else table.cast(schema)


@lru_cache(maxsize=16)
def history_of(lake: LakeRoot) -> BookHistory:
    """One `BookHistory` per lake root, kept between calls (file lists are cached in it)."""
    return BookHistory(lake)


def book_at(
    lake: LakeRoot, exchange: str, product_id: str, at: datetime, depth: int | None = None
) -> BookView | None:
    """The book of a product exactly as the engine had it at `at` (see the module doc)."""
    return history_of(lake).book_at(exchange, product_id, at, depth)
