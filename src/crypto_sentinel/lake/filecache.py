"""Data files of a Delta table held in memory as Arrow tables, least recently used out first.

A Delta table's Parquet files never change once written (a MERGE or a compaction writes new
files and retires the old ones in the log), so a file read once can be served from memory for
as long as the snapshot lists it, with no invalidation. The API's candle history reads the same
few small files of `gold.candles_1m` for every page; decoding them once instead of per request
takes the Parquet work off every request after the first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

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
