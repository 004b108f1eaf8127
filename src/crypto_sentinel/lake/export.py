"""Writing Arrow results out: an aligned table, CSV, JSON lines or Parquet (`sentinel sql`,
`sentinel export`).

Decimals stay exact in every format: Parquet keeps decimal128; the text formats print the
exact value without the trailing zeros of the lake's fixed scale (`100.5`, never a float).
Exports stream batch by batch, so an extract larger than memory is fine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel.lake.catalog import TIME_COLUMNS, Lake, utc

FORMATS = ("table", "csv", "jsonl", "parquet")


def _text_columns(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Decimals and timestamps as exact text (ISO 8601, UTC); other columns unchanged."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_decimal(field.type) and field.type.scale > 0:
            digits = pc.utf8_rtrim(pc.cast(column, pa.string()), characters="0")
            column = pc.utf8_rtrim(digits, characters=".")
        elif pa.types.is_timestamp(field.type):
            # `%S` of a microsecond timestamp carries six fractional digits: the API's style
            column = pc.strftime(column.cast(pa.timestamp("us", tz="UTC")),
                                 format="%Y-%m-%dT%H:%M:%SZ")  # fmt: skip
        elif pa.types.is_decimal(field.type) or pa.types.is_date(field.type):
            column = pc.cast(column, pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def render_table(table: pa.Table, out: IO[str]) -> None:
    """An aligned plain-text table (numbers right-aligned), with a row count."""
    text = _text_columns(table)
    names = text.column_names
    cells = [["" if v is None else str(v) for v in col.to_pylist()] for col in text.columns]
    widths = [max([len(n), *(len(c) for c in col)]) for n, col in zip(names, cells, strict=True)]
    right = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]

    def line(values: Iterable[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out.write(line(names) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in zip(*cells, strict=True):
        out.write(line(row) + "\n")
    out.write(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n")


class BatchWriter:
    """Writes record batches of one schema to a file (or stdout) in one format."""

    def __init__(self, fmt: str, schema: pa.Schema, out: Path | None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
        if fmt == "parquet" and out is None:
            raise ValueError("--format parquet needs --out FILE")
        self.fmt, self.schema, self.out = fmt, schema, out
        self.rows = 0
        self._held: list[pa.RecordBatch] = []  # the aligned table needs every row's width
        self._parquet: Any = None
        self._csv: Any = None
        self._file: IO[Any] | None = None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            assert out is not None
            self._parquet = pq.ParquetWriter(out, schema, compression="zstd")
        elif out is not None:
            binary = fmt == "csv"
            self._file = open(out, "wb" if binary else "w", encoding=None if binary else "utf-8")  # noqa: SIM115

    def write(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        if self.fmt == "parquet":
            self._parquet.write_batch(batch)
        elif self.fmt == "table":
            self._held.append(batch)
        elif self.fmt == "csv":
            import pyarrow.csv as pacsv

            text = _text_columns(batch)
            if self._csv is None:
                out = self._file if self._file is not None else sys.stdout.buffer
                self._csv = pacsv.CSVWriter(out, text.schema)
            self._csv.write_table(text)
        else:  # jsonl
            sink: IO[str] = self._file if self._file is not None else sys.stdout
            text = _text_columns(batch)
            for row in text.to_pylist():
                sink.write(orjson.dumps(row).decode() + "\n")

    def close(self) -> None:
        if self.fmt == "parquet":
            self._parquet.close()
        elif self.fmt == "table":
            table = pa.Table.from_batches(self._held, schema=self.schema)
            if self._file is not None:
                render_table(table, self._file)
            else:
                render_table(table, sys.stdout)
        elif self.fmt == "csv":
            if self._csv is None:  # no rows: the header alone
                self.write(pa.RecordBatch.from_pylist([], schema=self.schema))
            self._csv.close()
        if self._file is not None:
            self._file.close()
        else:
            sys.stdout.flush()


def write_result(table: pa.Table, fmt: str, out: Path | None) -> int:
    """Write a whole result; the number of rows."""
    writer = BatchWriter(fmt, table.schema, out)
    for batch in table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]:
        writer.write(batch)
    writer.close()
    return writer.rows


def export_batches(
    lake: Lake, table: str, since: datetime | str | None, until: datetime | str | None
) -> tuple[pa.Schema, int, Iterator[pa.RecordBatch]]:
    """The rows of a table with its time column in [since, until), batch by batch:
    (schema, rows the files hold at most, batches). Times are filtered in the scan."""
    import pyarrow.dataset as ds

    lo = None if since is None else utc(since)
    hi = None if until is None else utc(until)
    column = ds.field(TIME_COLUMNS[table])
    where: Any = None
    if lo is not None:
        where = column >= pa.scalar(lo, pa.timestamp("us", tz="UTC"))
    if hi is not None:
        upper = column < pa.scalar(hi, pa.timestamp("us", tz="UTC"))
        where = upper if where is None else where & upper
    dataset = lake.dataset(table, start=lo, end=hi)
    total = sum(f.metadata.num_rows for f in dataset.get_fragments() if f.metadata is not None)
    scanner = dataset.scanner(filter=where, batch_size=65_536)
    return dataset.schema, total, iter(scanner.to_batches())
