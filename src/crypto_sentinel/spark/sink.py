"""foreachBatch sink: one Kafka micro-batch -> the lake, exactly once, by the embedded engine.

Per batch one Spark job: the batch's frames (the Kafka envelope as bus/kafka.py builds it,
`decode.frames`) collected to the driver as Arrow. There the embedded engine's own code
decodes, validates, deduplicates, keeps the newer tickers and folds the candles
(`engine.processor.Engine`), and its writer commits through delta-rs (lake/writer.py): bronze
first, then the derived tables in parallel threads.

Why on the driver (issue 22; docs/benchmarks.md, session 9): planned as Spark work, a batch
was six Spark jobs and four or more delta-spark commits, about a second each on 2 cores,
whatever the batch held; a delta-rs commit of a small batch costs tens of milliseconds and
the engine's column-wise decode of 10,000 frames well under a second. A batch is bounded by
`spark_max_offsets_per_trigger`, so what the driver holds is bounded too; the executors read
Kafka, the part that grows with partitions. And the rows are the embedded engine's by
construction: the same code makes them (the conformance suite checks it).

Exactly once: every table's commit carries the Delta transaction (app id, Spark batch id), so
a batch Spark runs again after a crash skips the tables that hold it. Raw first: at start
`Engine.load_state` derives again what bronze holds of this app id and a derived table lacks
(engine/recovery.py) and repairs candles (engine/repair.py), as the embedded engine does.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame

from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.model import RawFrame
from crypto_sentinel.spark import decode

log = logging.getLogger(__name__)


class LakeSink:
    """Callable for `writeStream.foreachBatch`. State: the engine's (trade ids, ticker marks,
    recent candles), learnt from the lake at start and kept up to date by every batch."""

    def __init__(self, engine: Engine, app_id: str, topic_prefix: str) -> None:
        self.engine = engine
        self.app_id = app_id
        self.topic_prefix = topic_prefix
        self.timings: dict[str, float] = {}

    def __call__(self, records: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        with self._step("collect"):  # the batch's only Spark job
            frames = collect_frames(decode.frames(records, self.topic_prefix).toArrow())
        counts = self.write(frames, batch_id)
        log.info(
            "batch %d committed in %.2fs: %s; seconds per step %s",
            batch_id, time.monotonic() - started, counts, self.timings,
        )  # fmt: skip

    def write(self, frames: list[RawFrame], batch_id: int) -> dict[str, int]:
        """Derive and commit one batch; returns row counts by kind."""
        engine = self.engine
        collected = {k: v for k, v in self.timings.items() if k == "collect"}
        self.timings = collected  # this batch's steps only
        before = _counts(engine)
        with self._step("derive"):
            engine.process_frames(frames)
            batch = engine.cut(version=batch_id)
        if batch is None:
            return {}
        batch.positions = {}
        batch.txns = {self.app_id: batch_id}  # the Spark batch, not the Kafka offsets
        with self._step("commit"):
            result = engine.writer.commit(batch)
        self.timings.update(engine.writer.timings)
        engine.committed(batch, result)
        after = _counts(engine)
        return {k: after[k] - before[k] for k in after if after[k] - before[k]}

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - started, 3)

    def close(self) -> None:
        self.engine.close()


def _counts(engine: Engine) -> Counter[str]:
    stats = engine.stats
    return Counter(
        frames=stats.frames, trades=stats.trades, duplicates=stats.duplicates,
        tickers=stats.tickers, quarantined=stats.quarantined, gaps=stats.gap_records,
    )  # fmt: skip


def collect_frames(table: pa.Table) -> list[RawFrame]:
    """Collected frames (decode.FRAME_COLUMNS) as the engine takes them: in Kafka order per
    partition (a product's frames share one), which decides the first of two copies."""
    order = pc.sort_indices(
        table, [("exchange", "ascending"), ("partition", "ascending"), ("offset", "ascending")]
    )
    table = table.take(order)
    columns = [table.column(name).to_pylist() for name in decode.FRAME_COLUMNS]
    return [RawFrame(*values) for values in zip(*columns, strict=True)]
