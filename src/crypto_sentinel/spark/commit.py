"""One batch into the lake through the embedded engine's writer, derived tables in parallel.

Why threads: a Delta commit is mostly waiting on storage (reading the log, writing a file and
a log entry: tens of milliseconds locally, more on S3), and the tables are independent, so
after bronze their commits can overlap. Two orders are kept, as `lake/writer.py` keeps them:
bronze first (raw first: a derived table that lacks a batch bronze holds is derived again at
start, engine/recovery.py), and trades before candles (engine/repair.py recomputes the
minutes of trades committed after the last candle commit; candles first could count a
batch's trades twice after a crash). Each write keeps its Delta transaction and retries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.writer import Batch, CommitResult, LakeWriter, TableWrite

#: Derived tables written in one thread, in this order.
CHAINED = (T.TRADES.name, T.CANDLES_1M.name)


class ParallelCommit:
    """`commit(batch)` as `LakeWriter.commit`, with each table's seconds in `timings`."""

    def __init__(self, writer: LakeWriter, threads: int = 4) -> None:
        self.writer = writer
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="delta-commit")
        self.timings: dict[str, float] = {}

    def commit(self, batch: Batch) -> CommitResult:
        started = time.perf_counter()
        self.timings = {}
        with self.writer.lock:
            plan = self.writer.plan(batch)
            first = [w for w in plan.writes if w.table == T.BRONZE.name]
            chain = [w for w in plan.writes if w.table in CHAINED]
            others = [w for w in plan.writes if w.table not in (T.BRONZE.name, *CHAINED)]
            self._run(first)
            tasks = [self.pool.submit(self._run, chain)] if chain else []
            tasks += [self.pool.submit(self._run, [w]) for w in others]
            wait(tasks)  # every write has ended before an error is raised
            for task in tasks:
                task.result()
            self.writer.done(batch)
        return CommitResult(batch.version, plan.merged, time.perf_counter() - started)

    def _run(self, writes: Sequence[TableWrite]) -> None:
        for write in writes:
            started = time.perf_counter()
            write.run()
            self.timings[write.table] = round(time.perf_counter() - started, 3)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
