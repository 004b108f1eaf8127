"""The Spark sink's driver side on real Delta lakes (no JVM: the frames a Spark batch collects
are handed over directly): its rows equal the embedded engine's, a batch Spark runs again
changes nothing, a kill between bronze and the derived tables is finished at the next start,
and the writer's parallel commit keeps bronze first and trades before candles."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from crypto_sentinel.config import load_settings
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import Batch, CommitPlan, LakeWriter, TableWrite
from crypto_sentinel.model import RawFrame
from crypto_sentinel.simulator.market import Market
from crypto_sentinel.spark import job
from crypto_sentinel.spark.sink import LakeSink, collect_frames
from tests.lakebuild import rest_page

pytestmark = pytest.mark.integration
APP = "sentinel-spark:test"
TABLES = (T.BRONZE, T.TRADES, T.TICKERS, T.CANDLES_1M, T.QUARANTINE, T.GAPS)


def _batches() -> list[list[RawFrame]]:
    """Three batches of two products' matches and tickers in two Kafka partitions, with a
    repeated match, a REST page re-sending stored trades, a malformed frame and a gap record;
    the last batch holds a late trade for a minute the first batch closed."""
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    market = Market(["BTC-USD", "ETH-USD"], seed=4, start_trade_id=100)
    trades = [market.next_trade(t0 + i * timedelta(seconds=7)) for i in range(60)]
    texts: list[list[str]] = [[], [], []]
    for i, trade in enumerate(trades):
        part = texts[min(2, i // 25)]
        part.append(market.match_frame(trade))
        part.append(market.ticker_frame(trade))
    texts[1].append(market.match_frame(trades[3]))  # a copy of a stored trade
    texts[1].append("not json {")
    eth = [t for t in trades[:20] if t.product_id == "ETH-USD"]
    texts[2].append(rest_page("ETH-USD", eth))  # backfill over what is stored
    texts[2].append(
        '{"type":"gap","product_id":"BTC-USD","kind":"trade_id",'
        '"detected_at":"2026-03-01T12:05:00Z","first_missing_id":1,"last_missing_id":2,'
        '"missing":2,"backfilled":2,"outcome":"filled"}'
    )
    late = market.next_trade(t0 + timedelta(seconds=30))  # minute 12:00, long closed
    texts[2].append(market.match_frame(late))
    out: list[list[RawFrame]] = []
    offsets = {0: 0, 1: 0}
    received = int((t0 + timedelta(minutes=10)).timestamp()) * 1_000_000_000
    for batch in texts:
        frames = []
        for seq, text in enumerate(batch):
            partition = 0 if "BTC-USD" in text else 1
            offsets[partition] += 1
            frames.append(
                RawFrame("coinbase", "c1", seq, received + seq, text,
                         partition, offsets[partition])
            )  # fmt: skip
        out.append(frames)
    return out


def _embedded(lake: Path, batches: list[list[RawFrame]]) -> None:
    """The embedded engine's own loop: one batch after another, committed in order."""
    writer = LakeWriter(lake, "sentinel-embedded")
    engine = Engine(writer, 1.0, 1_000_000)
    engine.load_state(LakeReader(lake))
    for frames in batches:
        engine.process_frames(frames)
        batch = engine.cut()
        assert batch is not None
        engine.committed(batch, writer.commit(batch))
    engine.close()


def _sink(lake: Path) -> LakeSink:
    """As the job makes it at start."""
    return job.sink(load_settings(lake_dir=lake, kafka_topic_prefix="t."), APP)


def _rows(lake: Path, spec: T.TableSpec) -> list[dict[str, Any]]:
    rows = DeltaTable(str(spec.path(lake))).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: (tuple(r[k] for k in spec.key), repr(r)))


def _assert_same(a: Path, b: Path) -> None:
    for spec in TABLES:
        rows_a, rows_b = _rows(a, spec), _rows(b, spec)
        assert rows_a == rows_b, spec.name
        assert [repr(r) for r in rows_a] == [repr(r) for r in rows_b], spec.name  # decimal text
    assert len(_rows(a, T.QUARANTINE)) == 1 and len(_rows(a, T.GAPS)) == 1


def test_sink_rows_equal_the_embedded_engines_and_a_rerun_batch_changes_nothing(
    tmp_path: Path,
) -> None:
    batches = _batches()
    _embedded(tmp_path / "embedded", batches)
    sink = _sink(tmp_path / "spark")
    counts = [sink.write(frames, batch_id) for batch_id, frames in enumerate(batches)]
    assert counts[1]["duplicates"] == 1 and counts[1]["quarantined"] == 1
    assert counts[2]["duplicates"] > 0 and counts[2]["gaps"] == 1
    assert {"bronze.raw_messages", "silver.trades", "gold.candles_1m"} <= sink.timings.keys()
    _assert_same(tmp_path / "embedded", tmp_path / "spark")
    versions = {s.name: DeltaTable(str(s.path(tmp_path / "spark"))).version() for s in TABLES}
    sink.write(batches[1], 1)  # Spark runs batch 1 again (say its checkpoint was lost)
    sink.close()
    again = _sink(tmp_path / "spark")  # ... and after a restart
    again.write(batches[2], 2)
    again.close()
    assert {s.name: DeltaTable(str(s.path(tmp_path / "spark"))).version() for s in TABLES} == (
        versions
    )
    _assert_same(tmp_path / "embedded", tmp_path / "spark")


def test_a_kill_after_bronze_is_finished_at_the_next_start(tmp_path: Path) -> None:
    """The driver dies after batch 1's bronze commit: the next start derives batch 1 again
    from bronze, Spark's re-run of batch 1 then skips every table."""
    batches = _batches()
    _embedded(tmp_path / "embedded", batches)
    lake = tmp_path / "spark"
    sink = _sink(lake)
    sink.write(batches[0], 0)
    engine = sink.engine
    engine.process_frames(batches[1])
    batch = engine.cut(version=1)
    assert batch is not None
    batch.txns = {APP: 1}
    with engine.writer.lock:
        plan = engine.writer.plan(batch)
        assert plan.writes[0].table == T.BRONZE.name
        plan.writes[0].run()  # bronze only: the process is killed here
    sink.close()
    assert DeltaTable(str(T.TRADES.path(lake))).transaction_version(APP) == 0
    restarted = _sink(lake)  # load_state derives batch 1 again
    assert DeltaTable(str(T.TRADES.path(lake))).transaction_version(APP) == 1
    restarted.write(batches[1], 1)  # Spark re-runs the batch it never saw finish
    restarted.write(batches[2], 2)
    restarted.close()
    _assert_same(tmp_path / "embedded", lake)


def test_the_writer_commits_bronze_first_and_trades_before_candles(tmp_path: Path) -> None:
    writer = LakeWriter(tmp_path / "lake", APP)
    spans: dict[str, tuple[float, float]] = {}
    clock = threading.Lock()
    counter = iter(range(1_000_000))
    tickers_started = threading.Event()

    def timed(write: TableWrite) -> TableWrite:
        def run() -> None:
            with clock:
                begin = next(counter)
            if write.table == T.TICKERS.name:
                tickers_started.set()
            if write.table == T.CANDLES_1M.name:  # one after the other, this would wait 10 s
                assert tickers_started.wait(10), "tickers did not commit beside candles"
            write.run()
            with clock:
                spans[write.table] = (begin, next(counter))

        return TableWrite(write.table, run)

    real_plan = writer.plan

    def plan(batch: Batch) -> CommitPlan:
        found = real_plan(batch)
        return CommitPlan(found.merged, [timed(w) for w in found.writes])

    writer.plan = plan  # type: ignore[method-assign]
    engine = Engine(writer, 1.0, 10_000)
    engine.process_frames(_batches()[2])
    batch = engine.cut(version=7)
    assert batch is not None
    batch.txns = {APP: 7}
    writer.commit(batch)
    writer.close()
    assert {T.BRONZE.name, T.TRADES.name, T.CANDLES_1M.name, T.TICKERS.name} <= spans.keys()
    bronze_end = spans.pop(T.BRONZE.name)[1]
    assert all(begin > bronze_end for begin, _ in spans.values()), spans
    assert spans[T.TRADES.name][1] < spans[T.CANDLES_1M.name][0], spans
    for spec in (T.BRONZE, T.TRADES, T.CANDLES_1M, T.TICKERS):
        assert DeltaTable(str(spec.path(tmp_path / "lake"))).transaction_version(APP) == 7


def test_collected_frames_keep_kafka_order_per_partition() -> None:
    table = pa.table(
        {
            "exchange": ["b", "a", "a", "a"],
            "conn_id": ["c"] * 4,
            "recv_seq": [1, 2, 3, 4],
            "recv_ns": [10, 20, 30, 40],
            "text": ["x", "y", "z", "w"],
            "partition": pa.array([0, 1, 0, 0], pa.int32()),
            "offset": [5, 1, 9, 2],
        }
    )
    frames = collect_frames(table)
    assert [(f.exchange, f.partition, f.offset) for f in frames] == [
        ("a", 0, 2), ("a", 0, 9), ("a", 1, 1), ("b", 0, 5)
    ]  # fmt: skip
    assert frames[0] == RawFrame("a", "c", 4, 40, "w", 0, 2)
