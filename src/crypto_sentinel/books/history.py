"""A book exactly as the engine had it at any moment, rebuilt from the lake.

The newest full-depth snapshot of gold.book_snapshots at or before the moment, then the
silver.book_updates rows after it (in the engine's order: recv_time, conn_id, recv_seq,
position) up to the moment, applied through the same `OrderBook` with the same truncation
and the same update id / time bookkeeping as `books/processor.py`. Validity comes from the
snapshot: every change of validity is a full snapshot of its own.

Reads prune by partition (date, exchange) and by the Delta log's per-file min/max of the
time columns, then by Parquet row-group statistics (`pyarrow.parquet` filters); the add
actions are cached per table version, so a read costs the files that can hold the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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

    # --- files ---------------------------------------------------------------------------

    def _table(self, spec: T.TableSpec) -> DeltaTable | None:
        dt = self._tables.get(spec.name)
        if dt is None:
            uri = spec.uri(self.lake)
            options = storage_options(self.lake)
            if not DeltaTable.is_deltatable(uri, storage_options=options):
                return None
            dt = self._tables[spec.name] = DeltaTable(uri, storage_options=options)
        else:
            dt.update_incremental()
        return dt

    def _file_list(self, spec: T.TableSpec, exchange: str, column: str) -> list[_File]:
        """The exchange's files of `spec` with the min/max of `column`, per table version
        (one caller at a time: API threads share the table objects)."""
        with self._lock:
            return self._list_files(spec, exchange, column)

    def _list_files(self, spec: T.TableSpec, exchange: str, column: str) -> list[_File]:
        dt = self._table(spec)
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
        bids = [(lv["price"], lv["size"]) for lv in snap["bids"]]
        asks = [(lv["price"], lv["size"]) for lv in snap["asks"]]
        exchange_time = snap["exchange_time"]
        book.load_snapshot(bids, asks, snap["update_id"], exchange_time)
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
        filters: list[Any] = [("product_id", "=", product_id), ("reason", "in", _FULL)]
        if bound is not None:
            filters.append((column, "<=", pa.scalar(bound, pa.int64()).cast(T.UTC_TS)))
        best: tuple[Any, ...] | None = None
        best_file: _File | None = None
        for f in files:  # newest first: stop once a file cannot hold anything newer
            if best is not None and f.high is not None and f.high < best[0]:
                break
            table = self._read([f], _SNAPSHOT_KEYS, filters)
            if table is None:
                continue
            for key in _snapshot_keys(table):
                if before is not None and key[1:4] >= before:
                    continue
                if best is None or key > best:
                    best, best_file = key, f
        if best is None or best_file is None:
            return None
        rows = self._read(
            [best_file], None,
            [("product_id", "=", product_id), ("reason", "in", _FULL),
             ("recv_time", "=", pa.scalar(best[1], pa.int64()).cast(T.UTC_TS)),
             ("conn_id", "=", best[2]), ("recv_seq", "=", best[3]), ("position", "=", best[4])],
        )  # fmt: skip
        assert rows is not None
        return dict(rows.slice(0, 1).to_pylist()[0])

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
        files = self._file_list(T.BOOK_UPDATES, exchange, "book_time")
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
    and the connection of the last frame applied."""
    recv = pc.cast(rows["recv_time"], pa.int64()).to_pylist()
    conn = rows["conn_id"].to_pylist()
    seq = rows["recv_seq"].to_pylist()
    pos = rows["position"].to_pylist()
    side = rows["side"].to_pylist()
    price = rows["price"].to_pylist()
    size = rows["size"].to_pylist()
    update_id = rows["update_id"].to_pylist()
    snapshot = rows["snapshot"].to_pylist()
    times = rows["time"].to_pylist()
    book_time = pc.cast(rows["book_time"], pa.int64()).to_pylist()
    n = len(recv)
    i = 0
    while i < n and (recv[i], conn[i], seq[i], pos[i]) < start:
        i += 1
    while i < n:
        frame = (recv[i], conn[i], seq[i])
        while i < n and (recv[i], conn[i], seq[i]) == frame:
            if snapshot[i]:  # a snapshot event: the book is replaced by its levels
                j = i
                while j < n and snapshot[j] and (recv[j], conn[j], seq[j]) == frame \
                        and update_id[j] == update_id[i]:  # fmt: skip
                    j += 1
                levels = list(zip(side[i:j], price[i:j], size[i:j], strict=True))
                book.load_snapshot(
                    [(p, s) for d, p, s in levels if d == "bid"],
                    [(p, s) for d, p, s in levels if d == "ask"],
                    update_id[i], times[i],
                )  # fmt: skip
                last = j - 1
                i = j
            else:
                book.apply(side[i], price[i], size[i])
                last = i
                i += 1
            if times[last] is not None:
                book.time = times[last]
            if update_id[last] is not None:
                book.update_id = update_id[last]
            moment = max(moment, book_time[last])
            conn_id = conn[last]
        if max_depth is not None and (len(book.bids) > max_depth or len(book.asks) > max_depth):
            book.truncate(max_depth)
    return moment, conn_id


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
