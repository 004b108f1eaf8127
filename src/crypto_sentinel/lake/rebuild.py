"""Recompute silver, gold and quarantine from bronze (after a fix to normalisation or candles).

Bronze frames are fed in arrival order through a fresh `Engine` - the live path's own decode,
dedupe and candle code - into a staging lake. Each derived table is then replaced with one
overwrite commit, so a reader sees the old table or the new one, never a mix, and the old
files stay until vacuum's safety window has passed. Running it again gives the same tables.

Bronze keeps only its retention (7 days by default). Derived rows received before bronze's
first day cannot be recomputed, so the dates holding such rows are kept as they are and only
later dates are replaced.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from crypto_sentinel.books.processor import BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.engine.processor import CHUNK_FRAMES, Engine
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance.files import partitions
from crypto_sentinel.lake.maintenance.maintainer import CLI_LOCK_WAIT_S, Maintainer, MaintenanceBusy
from crypto_sentinel.lake.maintenance.policy import compact_properties
from crypto_sentinel.lake.maintenance.stream_compaction import is_compaction
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import RawFrame

#: Tables derived from bronze, in the order they are replaced (candles last: they summarise
#: the trades).
DERIVED = (T.QUARANTINE, T.TICKERS, T.TRADES, T.CANDLES_1M)
#: ... and, when books are kept, the book tables (after them: a reader of books sees the
#: updates and snapshots of one rebuild together).
BOOK_TABLES = (T.BOOK_UPDATES, T.BOOK_SNAPSHOTS)

#: Commits that leave a table's rows as they were; anything else during a rebuild means
#: someone is writing and the rebuild must not replace the table.
UNCHANGED_OPS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES"})

STAGING_APP_ID = "sentinel-rebuild"


class RebuildError(RuntimeError):
    """The rebuild could not run or was abandoned; the lake is left as it was."""


def rebuild(
    lake: Path,
    *,
    batch_frames: int = 100_000,
    progress: Callable[[str], Any] | None = None,
    on_frames: Callable[[int, int], Any] | None = None,
    books: BookSettings | None = None,
) -> dict[str, Any]:
    """Recompute the derived tables of `lake` from its bronze table; see the module doc.
    `progress` hears a line per step, `on_frames` (frames fed so far, bronze's frames) the
    progress of the long part. With `books`, the book tables are derived again too (with
    those settings); without, they are left as they are."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    tables = T.ensure_tables(lake)
    bronze = tables[T.BRONZE.name]
    bronze_version = bronze.version()
    bronze_dates = sorted(p.date for p in partitions(bronze, T.BRONZE) if p.date is not None)
    derived = DERIVED + (BOOK_TABLES if books is not None else ())
    derived_versions = {spec.name: tables[spec.name].version() for spec in derived}
    if not bronze_dates:
        if any(tables[s.name].file_uris() for s in derived):
            raise RebuildError("bronze is empty: nothing to rebuild from; tables left as they are")
        return {"rebuilt": False, "reason": "empty lake"}
    replace_from = _replace_from(tables, bronze_dates[0], derived)
    staging = lake / "_rebuild" / uuid.uuid4().hex
    try:
        tick = _frame_counter(bronze, on_frames)
        frames = _stage(bronze, bronze_dates, staging, batch_frames, say, tick, books)
        rows = {}
        with _no_maintenance(lake):  # a compaction must not put back the files replaced
            _check_unchanged(tables, {T.BRONZE.name: bronze_version, **derived_versions})
            for spec in derived:
                rows[spec.name] = _replace(tables[spec.name], spec, staging, replace_from)
                say(f"replaced {spec.name}: {rows[spec.name]:,} rows")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(staging.parent)
    return {
        "rebuilt": True,
        "bronze_version": bronze_version,
        "bronze_frames": frames,
        "replaced_from": replace_from.isoformat() if replace_from else None,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _replace_from(
    tables: dict[str, DeltaTable], first_bronze: date, derived: tuple[T.TableSpec, ...]
) -> date | None:
    """First date to replace: None (all) while bronze still holds every frame the derived rows
    came from. After retention, rows received before bronze's first day cannot be recomputed:
    keep every date that has such a row and replace from the day after the newest of them."""
    kept = None
    received = datetime.combine(first_bronze, datetime.min.time(), UTC)
    for spec in (T.TRADES, T.TICKERS, T.QUARANTINE, *(s for s in derived if s in BOOK_TABLES)):
        files = tables[spec.name].file_uris(file_pruning_predicate=[("recv_time", "<", received)])
        if not files:
            continue
        import duckdb  # here: `sentinel up` imports this module (its CLI), never runs it

        with duckdb.connect(":memory:") as db:
            (newest,) = db.execute(
                "SELECT max(date) FROM read_parquet(?, hive_partitioning = true,"
                " union_by_name = true) WHERE recv_time < ?",
                [files, received],
            ).fetchall()[0]
        if newest is not None and (kept is None or newest > kept):
            kept = newest
    return kept + timedelta(days=1) if kept is not None else None


def _stage(
    bronze: DeltaTable,
    dates: list[date],
    staging: Path,
    batch_frames: int,
    say: Callable[[str], Any],
    tick: Callable[[int], Any] = lambda _n: None,
    books: BookSettings | None = None,
) -> int:
    """Feed bronze through a fresh engine into the staging lake; return the frame count."""
    writer = LakeWriter(staging, STAGING_APP_ID)
    processor = None if books is None else BookProcessor(BookRegistry(), books)
    engine = Engine(writer, batch_interval=1.0, batch_max_frames=batch_frames, books=processor)
    engine.keeps_bronze = False  # the staging lake keeps no second copy of bronze
    total = pending = 0

    def flush() -> None:
        batch = engine.cut()
        if batch is None:
            return
        engine.committed(batch, writer.commit(batch))

    try:
        for day in dates:
            count = 0
            chunk: list[RawFrame] = []
            for frame in _frames(bronze, day):
                chunk.append(frame)
                if len(chunk) == CHUNK_FRAMES:
                    engine.process_frames(chunk)
                    tick(len(chunk))
                    count, pending, chunk = count + len(chunk), pending + len(chunk), []
                if pending >= batch_frames:
                    flush()
                    pending = 0
            engine.process_frames(chunk)
            tick(len(chunk))
            count += len(chunk)
            total += count
            say(f"bronze {day}: {count:,} frames")
        flush()
    finally:
        engine.close()
    return total


def _frame_counter(
    bronze: DeltaTable, on_frames: Callable[[int, int], Any] | None
) -> Callable[[int], Any]:
    """A `tick(n)` that reports (frames so far, bronze's frames) to `on_frames`."""
    if on_frames is None:
        return lambda _n: None
    actions = bronze.get_add_actions(flatten=True)
    total = int(pa.compute.sum(pa.table(actions)["num_records"]).as_py() or 0)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        on_frames(done, total)

    return tick


def _frames(bronze: DeltaTable, day: date) -> Iterator[RawFrame]:
    """One date partition of bronze in arrival order (receive time, connection, sequence)."""
    files = bronze.file_uris(file_pruning_predicate=[("date", "=", day.isoformat())])
    if not files:
        return
    import duckdb

    db = duckdb.connect(":memory:")
    try:
        reader = db.sql(
            "SELECT source, conn_id, recv_seq, epoch_us(recv_time) AS recv_us, frame"
            " FROM read_parquet(?, hive_partitioning = true, union_by_name = true)"
            " ORDER BY recv_time, conn_id, recv_seq",
            params=[files],
        ).to_arrow_reader(50_000)
        for batch in reader:
            c = batch.to_pydict()
            for source, conn, seq, recv_us, text in zip(
                c["source"], c["conn_id"], c["recv_seq"], c["recv_us"], c["frame"], strict=True
            ):
                yield RawFrame(source, conn, seq, recv_us * 1000, text)
    finally:
        db.close()


@contextlib.contextmanager
def _no_maintenance(lake: Path) -> Iterator[None]:
    """Hold the lake's maintenance lock (waiting for a running pass, as `sentinel maintain`
    does): compaction commits its removes unchecked (see
    `maintenance.stream_compaction`)."""
    try:
        with Maintainer(lake, lock_wait=CLI_LOCK_WAIT_S).exclusive():
            yield
    except MaintenanceBusy as busy:
        raise RebuildError(f"{busy}; nothing was replaced, run rebuild again later") from None


def _check_unchanged(tables: dict[str, DeltaTable], versions: dict[str, int]) -> None:
    for name, version in versions.items():
        dt = tables[name]
        dt.update_incremental()
        if dt.version() == version:
            continue
        commits = dt.history(dt.version() - version)
        changed = [
            h.get("operation")
            for h in commits
            if h.get("operation") not in UNCHANGED_OPS and not is_compaction(h)
        ]
        if changed:
            raise RebuildError(
                f"{name} changed while rebuilding ({', '.join(map(str, changed))}); is a"
                " pipeline writing? Stop it and run rebuild again - nothing was replaced."
            )


def _replace(dt: DeltaTable, spec: T.TableSpec, staging: Path, since: date | None) -> int:
    """Replace the table's rows (from `since`, or all) with the staging table's, one commit."""
    import pyarrow.dataset as ds  # here, like DuckDB: `sentinel up` imports this module

    source = DeltaTable(str(spec.path(staging))).to_pyarrow_dataset()
    condition = ds.field("date") >= pa.scalar(since, pa.date32()) if since else None
    rows = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        scanner = source.scanner(columns=spec.schema.names, filter=condition)
        for batch in scanner.to_batches():
            rows += batch.num_rows
            yield batch.cast(spec.schema)

    write_deltalake(
        dt,
        pa.RecordBatchReader.from_batches(spec.schema, batches()),
        mode="overwrite",
        predicate=f"date >= '{since.isoformat()}'" if since else None,
        partition_by=list(spec.partition_by),
        writer_properties=compact_properties(spec),
    )
    return rows


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
