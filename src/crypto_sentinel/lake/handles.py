"""The writer's open Delta tables, kept up: checkpointed, opened afresh and brought up to date
after maintenance, all off the path of a batch's commit.

Why: delta-rs checkpoints a table inside the commit that lands on a multiple of its
`delta.checkpointInterval` (27-51 ms a table here), a long-lived handle is opened again from the
newest checkpoint now and then (its native state grows with every version it is brought
forward, `tables.REOPEN_AFTER_VERSIONS`; about 190 ms for every table at once), and every table
was brought up to date after a maintenance turn (20-130 ms). Inside a commit, the live engine's
next batch waited behind all of that (measured in `sentinel up` at 5,000 frames/s). Now the
writer commits without delta-rs's post-commit checkpoint; a background thread checkpoints that
version instead, on a handle opened for it, which the table's next write adopts. A table is
brought up to date right before its own write, in the thread that writes it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

from deltalake import DeltaTable, PostCommitHookProperties

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, storage_options

log = logging.getLogger(__name__)

#: What the writer's commits run after themselves: nothing (`TableHandles` checkpoints).
NO_POST_COMMIT = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)
#: Delta's default when a table does not set `delta.checkpointInterval`.
DEFAULT_CHECKPOINT_INTERVAL = 100


class TableHandles:
    """Keeps `tables` (the writer's dict, changed in place) fresh and bounded."""

    def __init__(self, lake: LakeRoot, tables: dict[str, DeltaTable]) -> None:
        self.lake = lake
        self.tables = tables
        self._opened_at = {name: dt.version() for name, dt in tables.items()}
        self._stale: set[str] = set()
        self._opening: dict[str, Future[DeltaTable]] = {}
        #: One thread (started on the first job): tables are kept up one after another.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lake-upkeep")
        self._closed = False

    def mark_stale(self) -> None:
        """Another committer (in-process maintenance) wrote: bring each table up to date
        before its next write (a stale snapshot would make that write conflict)."""
        self._stale = set(self.tables)

    def fresh(self, name: str) -> DeltaTable:
        """The table before a write: the handle opened afresh if it is ready, brought up to
        date if it may be stale."""
        opening = self._opening.get(name)
        if opening is not None and opening.done():
            self._adopt(name, opening)
        dt = self.tables[name]
        if name in self._stale:
            self._stale.discard(name)
            dt.update_incremental()
        return dt

    def committed(self, name: str) -> None:
        """After a commit of ours to the table: checkpoint it if the commit landed on its
        checkpoint interval (as delta-rs's own hook would), or open it afresh if it has
        grown `REOPEN_AFTER_VERSIONS` versions since it was opened; in the background."""
        if self._closed or name in self._opening:
            return
        dt = self.tables[name]
        version = dt.version()
        if version > 0 and version % checkpoint_interval(dt) == 0:
            self._start(name, dt.table_uri, version)
        elif version - self._opened_at[name] >= T.REOPEN_AFTER_VERSIONS:
            self._start(name, dt.table_uri, None)

    def _start(self, name: str, uri: str, checkpoint: int | None) -> None:
        self._opening[name] = self._executor.submit(self._open, uri, checkpoint)

    def _open(self, uri: str, checkpoint: int | None) -> DeltaTable:
        """The table opened from its newest checkpoint; given `checkpoint`, at that version,
        checkpointed there and its expired log files dropped (as the post-commit hook)."""
        dt = DeltaTable(uri, version=checkpoint, storage_options=storage_options(self.lake))
        if checkpoint is not None:
            dt.create_checkpoint()
            dt.cleanup_metadata()
        return dt

    def adopt(self, wait: bool = False) -> None:
        """Swap in every table opened afresh (`wait` for those still opening)."""
        for name, opening in list(self._opening.items()):
            if wait or opening.done():
                self._adopt(name, opening)

    def _adopt(self, name: str, opening: Future[DeltaTable]) -> None:
        """A failed open or checkpoint keeps the old handle (the next one is tried later)."""
        del self._opening[name]
        try:
            dt = opening.result()
            dt.update_incremental()  # our commits since it was opened
        except Exception as exc:  # a storage hiccup: the old handle still works
            log.warning("upkeep of %s failed, keeping its handle: %s", name, exc)
            return
        self.tables[name] = dt
        self._opened_at[name] = dt.version()
        self._stale.discard(name)

    def close(self) -> None:
        """Finish the upkeep under way (a checkpoint is not left half written)."""
        self._closed = True
        self._executor.shutdown(wait=True)
        self._opening.clear()


def checkpoint_interval(dt: DeltaTable) -> int:
    """The table's `delta.checkpointInterval` (Delta's default if unset or not a number)."""
    value = dt.metadata().configuration.get("delta.checkpointInterval")
    try:
        return max(1, int(value)) if value else DEFAULT_CHECKPOINT_INTERVAL
    except ValueError:
        return DEFAULT_CHECKPOINT_INTERVAL
