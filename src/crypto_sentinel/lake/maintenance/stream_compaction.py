"""Compaction that streams row groups: its memory follows a row group, not the file it makes.

Why: delta-rs's compaction holds about the bytes of the file it is making, twice over for the
silver tables (measured in a fresh process: 300,000 tickers into one 16 MB file +51 MB, into a
64 MB file +128 MB; the 128 MB tier of a busy day would add ~250 MB to `sentinel up`). This
one reads each small file of a bin one row group at a time and writes the new file one row
group at a time (Arrow's Parquet writer): +22 MB and +31 MB for the same two merges
(docs/benchmarks.md, session 20). The new file and the removal of the old ones are one Delta
commit (deltalake's `create_write_transaction`), data unchanged, like delta-rs's own.

The commit needs the lake's maintenance lock, as delta-rs's compaction does: deltalake 1.6
does not check a transaction's removes against a concurrent removal of the same file
(measured: a second compaction of the same files committed and doubled their rows), so two
compactions at once would leave rows twice. Every compaction runs under that lock
(`Maintainer.exclusive`), and so does `sentinel rebuild`'s replace; as a second guard the
files are checked to be live just before the commit. Appends never conflict with it.

The new file's statistics are merged from the old files' (min of mins, max of maxes, sums of
counts): exactly what readers skipped files by before, with no pass over the values.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, RemoveAction

from crypto_sentinel.lake.location import LakeRoot, filesystem, join
from crypto_sentinel.lake.maintenance.files import add_actions, partition_text

#: Marks this module's commits in the table's history (`commitInfo`), whose operation reads
#: WRITE: `sentinel rebuild` counts them as data-unchanged, as it does delta-rs's OPTIMIZE.
OPERATION_KEY = "sentinel.operation"
OPERATION = "compact"


def is_compaction(commit_info: dict[str, Any]) -> bool:
    """A Delta commit (its `commitInfo`, or a `DeltaTable.history()` entry) that compacted
    files: delta-rs's OPTIMIZE or this module's."""
    return commit_info.get("operation") == "OPTIMIZE" or commit_info.get(OPERATION_KEY) == OPERATION


#: Rows decoded from an old file at a time: a whole row group of tickers decoded at once
#: held 13 MB more at the peak of a 16 MB merge (docs/benchmarks.md, session 20).
READ_BATCH_ROWS = 4_096


class FilesChanged(CommitFailedError):
    """A file of the bin left the table before the commit; the caller retries afresh."""


@dataclass(frozen=True)
class LiveFile:
    """One data file of the snapshot, with what its add action says."""

    path: str  # relative to the table, as the log writes it
    size: int
    rows: int
    partition: dict[str, str | None]
    stats: dict[str, dict[str, Any]]  # "minValues" / "maxValues" / "nullCount" -> column -> value


def compact_partition(
    dt: DeltaTable,
    table: LakeRoot,
    filters: Sequence[tuple[str, str, str]],
    target: int,
    group_rows: int,
    hooks: PostCommitHookProperties,
    schema: pa.Schema | None = None,
) -> dict[str, Any]:
    """Bin-pack the partition's files smaller than `target` into files of up to `target`
    bytes, one commit; metrics named as delta-rs's (`numFilesAdded`, `numFilesRemoved`).

    `schema` is what the new files hold (the table's columns but the partition ones, in the
    types delta-rs writes); old files in other types (another engine's) are cast to it, and
    one that cannot be (a schema change) stops the copy with a ValueError. None: the types of
    each bin's first file."""
    files = live_files(dt, filters)
    bins = plan_bins(files, target)
    if not bins:
        return {"numFilesAdded": 0, "numFilesRemoved": 0}
    fs, prefix = filesystem(table)
    root = join(table).removeprefix(prefix)
    written: list[str] = []
    try:
        actions: list[AddAction | RemoveAction] = []
        now = int(time.time() * 1000)
        for group in bins:
            path, size = _copy(fs, root, group, group_rows, schema)
            written.append(path)
            stats = merged_stats(group)
            actions.append(AddAction(path, size, group[0].partition, now, False, stats))
            actions += [RemoveAction(f.path, False, now, f.size, f.partition) for f in group]
        _check_live(dt, [f.path for group in bins for f in group])
        dt.create_write_transaction(
            actions,
            mode="append",
            schema=dt.schema(),
            partition_by=dt.metadata().partition_columns or None,
            commit_properties=CommitProperties(custom_metadata={OPERATION_KEY: OPERATION}),
            post_commithook_properties=hooks,
        )
    except BaseException:
        _delete(fs, root, written)
        raise
    return {
        "numFilesAdded": len(bins),
        "numFilesRemoved": sum(len(group) for group in bins),
    }


def live_files(dt: DeltaTable, filters: Sequence[tuple[str, str, str]]) -> list[LiveFile]:
    """The snapshot's files in the partition `filters` names (column = text), in log order."""
    actions = add_actions(dt)
    names = actions.column_names
    wanted = {column: text for column, _, text in filters}
    out = []
    for row in actions.to_pylist():
        partition = {
            name.removeprefix("partition."): None
            if row[name] is None
            else partition_text(row[name])
            for name in names
            if name.startswith("partition.")
        }
        if any(partition.get(column) != text for column, text in wanted.items()):
            continue
        stats: dict[str, dict[str, Any]] = {"minValues": {}, "maxValues": {}, "nullCount": {}}
        for name in names:
            kind, _, column = name.partition(".")
            key = {"min": "minValues", "max": "maxValues", "null_count": "nullCount"}.get(kind)
            if key is not None and "." not in column and row[name] is not None:
                stats[key][column] = row[name]
        rows = row["num_records"] or 0
        out.append(LiveFile(row["path"], row["size_bytes"], rows, partition, stats))
    return out


def plan_bins(files: Sequence[LiveFile], target: int) -> list[list[LiveFile]]:
    """Files smaller than `target`, packed greedily in log order into bins of at most
    `target` bytes, each of one partition; a bin of one file is left as it is."""
    bins: list[list[LiveFile]] = []
    open_bins: dict[tuple[tuple[str, str | None], ...], tuple[list[LiveFile], int]] = {}
    for file in files:
        if file.size >= target:
            continue
        key = tuple(sorted(file.partition.items()))
        current, filled = open_bins.get(key, ([], 0))
        if current and filled + file.size > target:
            bins.append(current)
            current, filled = [], 0
        current.append(file)
        open_bins[key] = (current, filled + file.size)
    bins += [current for current, _ in open_bins.values()]
    return [group for group in bins if len(group) > 1]


def merged_stats(files: Sequence[LiveFile]) -> str:
    """The Delta statistics of one file holding all of `files`' rows: a column's bound is
    kept only where every file has one (a missing bound means "unknown" to readers)."""
    out: dict[str, Any] = {"numRecords": sum(f.rows for f in files)}
    for key, pick in (("minValues", min), ("maxValues", max), ("nullCount", sum)):
        columns = set.intersection(*(set(f.stats[key]) for f in files))
        merged = {c: pick(f.stats[key][c] for f in files) for c in sorted(columns)}
        encoded = {c: _json_value(v) for c, v in merged.items()}
        out[key] = {c: v for c, v in encoded.items() if v is not None}
    return orjson.dumps(out).decode()


def _json_value(value: Any) -> Any:
    """A statistic as the Delta log writes it (decimals as exact JSON numbers, timestamps as
    ISO text to the millisecond, as delta-rs writes them); None for a type not handled."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value.normalize(), "f").encode())
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    return None


def _copy(
    fs: pafs.FileSystem,
    root: str,
    files: Sequence[LiveFile],
    group_rows: int,
    schema: pa.Schema | None,
) -> tuple[str, int]:
    """Write `files`' rows, in order, into a new file beside the first; (its path relative to
    the table as the log writes it, its size)."""
    folder = files[0].path.rpartition("/")[0]
    name = f"part-00000-{uuid.uuid4()}-c000.zstd.parquet"
    path = f"{folder}/{name}" if folder else name
    schema = schema or _file_schema(fs, root, files[0])
    try:
        with fs.open_output_stream(f"{root}/{unquote(path)}") as sink:
            writer = pq.ParquetWriter(sink, schema, compression="zstd", write_statistics=True)
            try:
                for group in _row_groups(fs, root, files, schema, group_rows):
                    writer.write_table(group, row_group_size=group_rows)
            finally:
                writer.close()
    except BaseException:
        _delete(fs, root, [path])
        raise
    return path, fs.get_file_info(f"{root}/{unquote(path)}").size


def _file_schema(fs: pafs.FileSystem, root: str, file: LiveFile) -> pa.Schema:
    with fs.open_input_file(f"{root}/{unquote(file.path)}") as source:
        return pq.ParquetFile(source).schema_arrow


def _row_groups(
    fs: pafs.FileSystem, root: str, files: Sequence[LiveFile], schema: pa.Schema, rows: int
) -> Iterator[pa.Table]:
    """The files' rows in tables of `rows` rows (the last one shorter) of `schema`, read
    `READ_BATCH_ROWS` at a time; a file that cannot be cast to it stops the copy
    (ValueError)."""
    pending: list[pa.Table] = []
    count = 0
    for file in files:
        with fs.open_input_file(f"{root}/{unquote(file.path)}") as source:
            parquet = pq.ParquetFile(source, pre_buffer=False)
            same = parquet.schema_arrow.equals(schema)
            for batch in parquet.iter_batches(READ_BATCH_ROWS, use_threads=False):
                table = pa.Table.from_batches([batch])
                pending.append(table if same else _cast(table, schema, file))
                count += table.num_rows
                while count >= rows:
                    merged = pa.concat_tables(pending)
                    yield merged.slice(0, rows)
                    rest = merged.slice(rows)
                    pending, count = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if count:
        yield pa.concat_tables(pending)


def _cast(table: pa.Table, schema: pa.Schema, file: LiveFile) -> pa.Table:
    try:
        return table.cast(schema)
    except (ValueError, pa.ArrowException) as exc:
        raise ValueError(f"{file.path} has other columns than the new file: {exc}") from None


def _check_live(dt: DeltaTable, paths: Sequence[str]) -> None:
    """Every file about to be removed is still in the newest snapshot."""
    dt.update_incremental()
    live = set(add_actions(dt).column("path").to_pylist())
    gone = [p for p in paths if p not in live]
    if gone:
        raise FilesChanged(f"{len(gone)} files left the table meanwhile, e.g. {gone[0]}")


def _delete(fs: pafs.FileSystem, root: str, paths: Sequence[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):  # left behind: `sentinel maintain vacuum --full`
            fs.delete_file(f"{root}/{unquote(path)}")
