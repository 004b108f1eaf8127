"""The writer's open Delta tables, opened afresh and brought up to date off the path of a
batch's commit.

Why: a long-lived handle's native state grows with every version it is brought forward, so it
is opened again from the newest checkpoint now and then (`tables.REOPEN_AFTER_VERSIONS`), and
after a maintenance turn every table was brought up to date. Both ran inside a commit: about
190 ms to open every table every 30 batches, 20-130 ms to refresh them, and the live engine's
next batch waited behind that commit (measured in `sentinel up` at 5,000 frames/s). Now a
table is opened afresh in a background thread and swapped in before its next write, and it is
brought up to date right before its own write, in the thread that writes it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import LakeRoot, storage_options

log = logging.getLogger(__name__)


class TableHandles:
    """Keeps `tables` (the writer's dict, changed in place) fresh and bounded."""

    def __init__(self, lake: LakeRoot, tables: dict[str, DeltaTable]) -> None:
        self.lake = lake
        self.tables = tables
        self._opened_at = {name: dt.version() for name, dt in tables.items()}
        self._stale: set[str] = set()
        self._opening: dict[str, Future[DeltaTable]] = {}
        #: One thread (started on the first reopen): tables are opened one after another.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lake-reopen")
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
        """After a commit of ours to the table: once it has grown `REOPEN_AFTER_VERSIONS`
        versions since it was opened, open it afresh in the background."""
        if self._closed or name in self._opening:
            return
        dt = self.tables[name]
        if dt.version() - self._opened_at[name] >= T.REOPEN_AFTER_VERSIONS:
            self._start(name, dt.table_uri)

    def _start(self, name: str, uri: str) -> None:
        self._opening[name] = self._executor.submit(
            DeltaTable, uri, storage_options=storage_options(self.lake)
        )

    def adopt(self, wait: bool = False) -> None:
        """Swap in every table opened afresh (`wait` for those still opening)."""
        for name, opening in list(self._opening.items()):
            if wait or opening.done():
                self._adopt(name, opening)

    def _adopt(self, name: str, opening: Future[DeltaTable]) -> None:
        """A failed open keeps the old handle (and the next commit tries again)."""
        del self._opening[name]
        try:
            dt = opening.result()
            dt.update_incremental()  # our commits since it was opened
        except Exception as exc:  # a storage hiccup: the old handle still works
            log.warning("reopening %s failed, keeping its handle: %s", name, exc)
            return
        self.tables[name] = dt
        self._opened_at[name] = dt.version()
        self._stale.discard(name)

    def close(self) -> None:
        """Let the open under way finish."""
        self._closed = True
        self._executor.shutdown(wait=True)
        self._opening.clear()
