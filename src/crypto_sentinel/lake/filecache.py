"""Data files of a Delta table held in memory as Arrow tables, least recently used out first.

A Delta table's Parquet files never change once written (an upsert or a compaction writes new
files and retires the old ones in the log), so a file read once can be served from memory for
as long as the snapshot lists it, with no invalidation. The API's candle history reads the same
few small files of `gold.candles_1m` for every page; decoding them once instead of per request
takes the Parquet work off every request after the first.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class FileCache:
    """Arrow tables of immutable data files, bounded by their total row count."""

    def __init__(self, max_rows: int, fs: pafs.FileSystem | None = None, prefix: str = "") -> None:
        self.max_rows = max_rows
        self._fs = fs
        self._prefix = prefix  # the URI scheme the filesystem wants stripped ("s3://")
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def table(self, files: list[str]) -> pa.Table | None:
        """The rows of `files` as one table (None for no files); reads only files not held."""
        parts = [self._file(f) for f in files]
        if not parts:
            return None
        return pa.concat_tables(parts, promote_options="default")

    def keep_only(self, live: set[str]) -> None:
        """Forget the files not in `live`: every MERGE of candles and every compaction retires
        files, which would otherwise stay until the row bound pushed them out."""
        with self._lock:
            for uri in [u for u in self._tables if u not in live]:
                self._rows -= self._tables.pop(uri).num_rows

    def _file(self, uri: str) -> pa.Table:
        with self._lock:
            held = self._tables.get(uri)
            if held is not None:
                self._tables.move_to_end(uri)
                return held
        path = uri.removeprefix(self._prefix)  # outside the lock: others go on meanwhile
        table = _plain_strings(pq.read_table(path, filesystem=self._fs))
        with self._lock:
            if uri not in self._tables:
                self._tables[uri] = table
                self._rows += table.num_rows
                while self._rows > self.max_rows and len(self._tables) > 1:
                    _, old = self._tables.popitem(last=False)
                    self._rows -= old.num_rows
        return table


def _plain_strings(table: pa.Table) -> pa.Table:
    """string_view columns (as delta-rs writes them) as plain strings, which every Arrow
    compute kernel takes."""
    fields = [f.with_type(pa.string()) if f.type == pa.string_view() else f for f in table.schema]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    return table if schema.equals(table.schema) else table.cast(schema)


class RowGroupCache:
    """Row groups of immutable Parquet files as Arrow tables, least recently used out first.

    For reads that want a slice of a table by one column (trades by time): row groups whose
    min/max statistics on that column miss the wanted range are never read, and those read
    are kept, so a large compacted file costs one row group per request, not the file.
    Bounded by the total rows held; file footers are kept for as many files as
    `max_footers`.
    """

    def __init__(
        self,
        max_rows: int,
        fs: pafs.FileSystem | None = None,
        prefix: str = "",
        max_footers: int = 8192,
    ) -> None:
        self.max_rows = max_rows
        self.max_footers = max_footers
        self._fs = fs
        self._prefix = prefix
        self._footers: OrderedDict[tuple[str, str], list[tuple[int, int, Any, Any]]] = OrderedDict()
        self._groups: OrderedDict[tuple[str, int, tuple[str, ...] | None], pa.Table] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def keep_only(self, live: set[str]) -> None:
        """Forget the row groups and footers of files not in `live` (a compaction retired
        them): held until the row bound pushed them out, they stood beside the compacted
        file's groups that replace them."""
        with self._lock:
            for key in [k for k in self._groups if k[0] not in live]:
                self._rows -= self._groups.pop(key).num_rows
            for footer in [k for k in self._footers if k[0] not in live]:
                del self._footers[footer]

    def stats(self, uri: str, column: str) -> list[tuple[int, int, Any, Any]]:
        """(index, rows, min, max of `column`) per row group of `uri`; None where the file
        has no min/max statistics. Read from the file's footer once, then kept."""
        key = (uri, column)
        with self._lock:
            held = self._footers.get(key)
            if held is not None:
                self._footers.move_to_end(key)
                return held
        meta = pq.read_metadata(uri.removeprefix(self._prefix), filesystem=self._fs)
        index = meta.schema.to_arrow_schema().get_field_index(column)
        out = []
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            stats = group.column(index).statistics if index >= 0 else None
            if stats is None or not stats.has_min_max:
                out.append((i, group.num_rows, None, None))
            else:
                out.append((i, group.num_rows, stats.min, stats.max))
        with self._lock:
            self._footers[key] = out
            while len(self._footers) > self.max_footers:
                self._footers.popitem(last=False)
        return out

    def group(self, uri: str, index: int, columns: tuple[str, ...] | None = None) -> pa.Table:
        """Row group `index` of `uri` (only `columns`, if given)."""
        key = (uri, index, columns)
        with self._lock:
            held = self._groups.get(key)
            if held is not None:
                self._groups.move_to_end(key)
                return held
        path = uri.removeprefix(self._prefix)
        with contextlib.ExitStack() as stack:
            source = (
                path if self._fs is None else stack.enter_context(self._fs.open_input_file(path))
            )
            parquet = pq.ParquetFile(source)
            wanted = None
            if columns is not None:  # those the file has (older files may lack newer columns)
                names = set(parquet.schema_arrow.names)
                wanted = [c for c in columns if c in names]
            table = parquet.read_row_group(index, columns=wanted)
        table = _plain_strings(table)
        with self._lock:
            if key not in self._groups:
                self._groups[key] = table
                self._rows += table.num_rows
                while self._rows > self.max_rows and len(self._groups) > 1:
                    _, old = self._groups.popitem(last=False)
                    self._rows -= old.num_rows
        return table


def keep_only(live: set[str], *caches: RowGroupCache | FileCache) -> None:
    """Each cache forgets the files not in `live` (those a new table version retired)."""
    for cache in caches:
        cache.keep_only(live)
