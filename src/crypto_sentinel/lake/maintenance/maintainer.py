"""The maintenance operations on one lake, safe beside a running stream writer: table
properties, compaction, retention, vacuum, checkpoints, and one pass over every table."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from deltalake import DeltaTable, PostCommitHookProperties
from deltalake.exceptions import CommitFailedError

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, storage_options
from crypto_sentinel.lake.lock import LakeLocked, WriterLock, describe, maintenance_lock
from crypto_sentinel.lake.maintenance.files import (
    Partition,
    file_sizes,
    last_checkpoint_version,
    log_file_count,
    partitions,
)
from crypto_sentinel.lake.maintenance.policy import (
    ZORDER_COLUMNS,
    Policy,
    compact_group_rows,
    compact_properties,
    compaction_target,
    expired_dates,
    utc_now,
)
from crypto_sentinel.lake.maintenance.stream_compaction import compact_partition

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)

#: Tables writers only append to. Their compaction (data-unchanged) and an append never
#: conflict, so it runs beside the writer instead of taking its turn: holding the turn, a
#: pass every 15 s delayed commits by up to a second (live frame -> Delta p99 1.1 s,
#: docs/benchmarks.md, session 19). Candles, which every batch MERGEs, take the turn.
APPEND_ONLY = frozenset(spec.name for spec in T.ALL_TABLES if spec != T.CANDLES_1M)
#: Tables compacted by streaming row groups (`stream_compaction`): measured, each merge in a
#: fresh process, silver tickers into 64 MB files +27 MB against delta-rs's +124 MB, trades
#: +22 against +51 MB. Bronze and quarantine, appended and compacted in 1,024-row groups, cost
#: delta-rs no more (+20-25 MB at 16 or 64 MB); the book tables are not measured yet
#: (docs/benchmarks.md, session 20).
STREAMED = frozenset({T.TRADES.name, T.TICKERS.name})
assert STREAMED <= APPEND_ONLY  # its commit is not checked against a concurrent MERGE
#: A compaction commit leaves checkpoints and log cleanup to the writers (and to the
#: `checkpoint` step): a checkpoint or log cleanup beside a writer made its next log read
#: fail (measured), and compaction no longer waits for the writer's turn.
WRITERS_CHECKPOINT = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)

R = TypeVar("R")
P = ParamSpec("P")
#: How long `sentinel maintain` waits for another process's maintenance pass to end.
CLI_LOCK_WAIT_S = 120.0


class MaintenanceBusy(Exception):
    """Another process maintains this lake now; the text is for the user."""

    def __init__(self, lake: LakeRoot, holder: dict[str, Any]) -> None:
        super().__init__(f"another process maintains the lake {lake} ({describe(holder)})")


def _exclusively(
    op: Callable[Concatenate[Maintainer, P], R],
) -> Callable[Concatenate[Maintainer, P], R]:
    """Run a maintenance operation holding the lake's maintenance lock."""

    @functools.wraps(op)
    def run(self: Maintainer, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.exclusive():
            return op(self, *args, **kwargs)

    return run


# --- operations ------------------------------------------------------------------------------


class Maintainer:
    """Runs the maintenance operations on one lake; safe beside a running stream writer."""

    def __init__(
        self,
        lake: LakeRoot,
        policy: Policy | None = None,
        *,
        now: Callable[[], datetime] = utc_now,
        should_stop: Callable[[], bool] = lambda: False,
        writer_lock: contextlib.AbstractContextManager[Any] | None = None,
        lock_wait: float = 0.0,
    ) -> None:
        self.lake = lake
        #: The lock of the stream writer in this process: each step holds it (but compacting
        #: an APPEND_ONLY table), so the writer and maintenance take turns instead of
        #: failing each other's commits.
        self.writer_lock = writer_lock or contextlib.nullcontext()
        self.policy = policy or Policy()
        self.now = now
        self.should_stop = should_stop
        self._options = storage_options(lake)
        self._tables: dict[str, DeltaTable] = {}
        #: Seconds an operation waits for another process's pass before MaintenanceBusy.
        self.lock_wait = lock_wait
        self._lake_lock: WriterLock | None = None
        self._held = 0  # nesting depth of `exclusive` (a pass holds it around its steps)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lake's maintenance lock: one maintaining process per lake at a time (two
        overlapping compactions of a table would both commit and double its rows). Raises
        MaintenanceBusy when another process keeps it longer than `lock_wait`."""
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        lock = self._lake_lock = self._lake_lock or maintenance_lock(self.lake)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                lock.acquire()
                break
            except LakeLocked as locked:
                if time.monotonic() >= deadline:
                    raise MaintenanceBusy(self.lake, locked.holder) from None
                time.sleep(0.5)
        self._held = 1
        try:
            yield
        finally:
            self._held = 0
            lock.release()

    def table(self, spec: T.TableSpec) -> DeltaTable | None:
        """The table at its newest version, or None if it does not exist yet."""
        dt = self._tables.get(spec.name)
        uri = spec.uri(self.lake)
        if dt is not None:
            try:
                dt.update_incremental()
                return dt
            except OSError:  # the log was trimmed meanwhile: reopen from the checkpoint
                pass
        if not DeltaTable.is_deltatable(uri, storage_options=self._options):
            return None
        dt = self._tables[spec.name] = DeltaTable(uri, storage_options=self._options)
        return dt

    def _retry(self, spec: T.TableSpec, what: str, fn: Callable[[DeltaTable], R]) -> R:
        """Commit conflicts (a concurrent MERGE or delete won) are retried on a fresh snapshot;
        so is a log file vanishing under a commit (a writer trimming the log meanwhile)."""
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            dt = self.table(spec)
            assert dt is not None
            try:
                return fn(dt)
            except (CommitFailedError, OSError) as exc:
                if delay is None:
                    raise
                if isinstance(exc, OSError):
                    self._tables.pop(spec.name, None)  # reopen from the newest checkpoint
                log.info("%s %s: commit conflict (attempt %d), retrying: %s",
                         what, spec.name, attempt + 1, exc)  # fmt: skip
                time.sleep(delay)
        raise AssertionError("unreachable")

    # - table properties

    @_exclusively
    def configure(self, spec: T.TableSpec) -> dict[str, Any]:
        """Write the policy's properties into the table (one metadata commit, only on change)."""
        dt = self.table(spec)
        if dt is None:
            return {"table": spec.name, "action": "configure", "missing": True}
        want = self.policy.table_properties()
        have = dt.metadata().configuration
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            self._retry(
                spec,
                "configure",
                lambda d: d.alter.set_table_properties(changed, raise_if_not_exists=False),
            )
            log.info("configured %s: %s", spec.name, changed)
        return {"table": spec.name, "action": "configure", "changed": changed}

    # - compaction

    @_exclusively
    def compact(
        self,
        spec: T.TableSpec,
        *,
        max_files: int | None = None,
        zorder: bool | None = None,
    ) -> dict[str, Any]:
        """Bin-pack every partition holding more than `max_files` files (data unchanged)."""
        result: dict[str, Any] = {"table": spec.name, "action": "compact", "partitions": []}
        dt = self.table(spec)
        if dt is None:
            return {**result, "missing": True}
        bound = self.policy.max_files_per_partition if max_files is None else max_files
        use_zorder = self.policy.zorder if zorder is None else zorder
        today = self.now().date()
        for part in partitions(dt, spec):
            if self.should_stop():
                break
            target = compaction_target(part.sizes, self.policy.target_file_bytes, bound)
            if target is None:
                continue
            columns = ZORDER_COLUMNS.get(spec.name, ())
            sealed = part.date is not None and part.date < today
            z = bool(use_zorder and columns and sealed and target == self.policy.target_file_bytes)
            started = time.perf_counter()
            metrics = self._retry(
                spec,
                "compact",
                self._compactor(spec, part, target, columns if z else ()),
            )
            entry = {
                "partition": part.label(),
                "target_bytes": target,
                "zorder": z,
                "files_before": len(part.sizes),
                "files_removed": metrics.get("numFilesRemoved", 0),
                "files_added": metrics.get("numFilesAdded", 0),
                "seconds": round(time.perf_counter() - started, 3),
            }
            log.info("compacted %s %s", spec.name, entry)
            result["partitions"].append(entry)
        return result

    def _compactor(
        self, spec: T.TableSpec, part: Partition, target: int, zorder: Sequence[str]
    ) -> Callable[[DeltaTable], dict[str, Any]]:
        """The `STREAMED` tables stream their row groups (`stream_compaction`: memory that does
        not grow with the file made); z-ordering and the other tables go through delta-rs."""
        table = spec.uri(self.lake)

        def run(dt: DeltaTable) -> dict[str, Any]:
            if not zorder and spec.name in STREAMED:
                try:
                    return compact_partition(
                        dt, table, part.filters(), target, compact_group_rows(spec),
                        WRITERS_CHECKPOINT, spec.file_schema,
                    )  # fmt: skip
                except ValueError as exc:  # files of other columns (a schema change)
                    log.info("compacting %s %s through delta-rs: %s", spec.name, part.label(), exc)
            options: dict[str, Any] = {
                "partition_filters": part.filters(),
                "target_size": target,
                "max_concurrent_tasks": 1,  # leave the other core to the stream
                "writer_properties": compact_properties(spec),
                "post_commithook_properties": WRITERS_CHECKPOINT,
            }
            if zorder:
                return dict(dt.optimize.z_order(list(zorder), **options))
            return dict(dt.optimize.compact(**options))

        return run

    # - retention

    @_exclusively
    def retain(
        self, spec: T.TableSpec, *, days: int | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Delete the date partitions older than the table's retention (a Delta delete)."""
        keep = self.policy.retention_days.get(spec.name, 0) if days is None else days
        result: dict[str, Any] = {"table": spec.name, "action": "retain", "days": keep}
        dt = self.table(spec)
        if dt is None:
            return {**result, "missing": True}
        if keep <= 0 or "date" not in spec.partition_by:
            return {**result, "expired": []}
        parts = partitions(dt, spec)
        expired = expired_dates([p.date for p in parts if p.date is not None], keep, self.now())
        gone = [p for p in parts if p.date in frozenset(expired)]
        result.update(
            expired=[d.isoformat() for d in expired],
            rows=sum(p.rows for p in gone),
            files=sum(len(p.sizes) for p in gone),
            dry_run=dry_run,
        )
        if expired and not dry_run:
            cutoff = (expired[-1] + timedelta(days=1)).isoformat()
            # A partition-only predicate removes whole files, nothing is rewritten.
            self._retry(spec, "retain", lambda d: d.delete(f"date < '{cutoff}'"))
            log.info("retention %s: deleted %s", spec.name, result)
        return result

    # - vacuum

    @_exclusively
    def vacuum(
        self,
        spec: T.TableSpec,
        *,
        safety_hours: int | None = None,
        full: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete files the table stopped referencing more than `safety_hours` ago."""
        hours = self.policy.vacuum_safety_hours if safety_hours is None else safety_hours
        result: dict[str, Any] = {"table": spec.name, "action": "vacuum", "safety_hours": hours}
        dt = self.table(spec)
        if dt is None:
            return {**result, "missing": True}

        def run(d: DeltaTable, dry: bool) -> list[str]:
            return d.vacuum(
                retention_hours=hours, dry_run=dry, enforce_retention_duration=False, full=full
            )

        candidates = run(dt, True)
        sizes = file_sizes(spec.uri(self.lake), candidates)
        result.update(files=len(candidates), bytes=sum(sizes), dry_run=dry_run)
        if candidates and not dry_run:
            deleted = self._retry(spec, "vacuum", lambda d: run(d, False))
            result["files"] = len(deleted)
            log.info("vacuumed %s: %d files, %d bytes", spec.name, len(deleted), sum(sizes))
        return result

    # - checkpoints and log

    @_exclusively
    def checkpoint(self, spec: T.TableSpec, *, force: bool = False) -> dict[str, Any]:
        """Checkpoint a table nobody else checkpoints, and drop its expired log files.

        delta-rs writers checkpoint by themselves every `checkpoint_interval` commits and
        trim the log as they do (the table carries both settings). A second party doing the
        same beside them makes their next log read fail (measured), so maintenance only steps
        in when the log is twice the interval past the last checkpoint - a writer without
        post-commit hooks - or when forced (`sentinel maintain checkpoint`).
        """
        result: dict[str, Any] = {"table": spec.name, "action": "checkpoint"}
        dt = self.table(spec)
        if dt is None:
            return {**result, "missing": True}
        table = spec.uri(self.lake)
        version = dt.version()
        last = last_checkpoint_version(table)
        behind = version - (last if last is not None else -1)
        made = version > 0 and (force or behind >= 2 * self.policy.checkpoint_interval)
        result.update(version=version, checkpoint=version if made else last, created=made)
        if made:
            before = log_file_count(table)
            dt.create_checkpoint()
            dt.cleanup_metadata()
            result.update(log_files_before=before, log_files=log_file_count(table))
            log.info("checkpointed %s: %s", spec.name, result)
        return result

    # - one pass

    def run_once(self) -> list[dict[str, Any]]:
        """One pass over every table: policy, retention, compaction, checkpoint, vacuum.

        A failing step is logged and the pass goes on; the stream is never affected. The
        tables are let go at the end: a DeltaTable kept between passes and refreshed each
        time grew by ~15 MB resident over 5 minutes of `sentinel up` at 2,000 trades/s
        (measured; reopened each pass, the process stayed flat).
        """
        try:
            with self.exclusive():
                return self._run_steps()
        except MaintenanceBusy as busy:
            log.info("lake maintenance pass skipped: %s", busy)
            return []
        finally:
            self._tables.clear()

    def _run_steps(self) -> list[dict[str, Any]]:
        steps: list[Callable[[T.TableSpec], dict[str, Any]]] = [
            self.configure,
            self.retain,
            self.compact,
            self.checkpoint,
            self.vacuum,
        ]
        done: list[dict[str, Any]] = []
        for spec in T.ALL_TABLES:
            for step in steps:
                if self.should_stop():
                    return done
                alone = step == self.compact and spec.name in APPEND_ONLY
                try:
                    with contextlib.nullcontext() if alone else self.writer_lock:
                        done.append(step(spec))
                except Exception:
                    log.exception("maintenance %s of %s failed", step.__name__, spec.name)
        return done
