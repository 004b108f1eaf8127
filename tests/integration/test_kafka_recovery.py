"""Raw first over Kafka, with several processors on one lake: the one that takes a dead one's
partitions finds that one's last bronze commit however many commits the others made since (it
was searched for only among bronze's newest 64 commits, and the batch in it could stay
underived for good); and recovering touches only the candles of the batches it derives
again, never those another processor is committing at that moment."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from crypto_sentinel.engine import recovery
from crypto_sentinel.engine.candles import Candle
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.engine.repair import repair_candles
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.errors import LakeWriteFailed
from crypto_sentinel.lake.location import parse_lake
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import RawFrame, Trade


def frame(partition: int, offset: int) -> RawFrame:
    return RawFrame(
        "coinbase", f"kafka-{partition}", offset, 1_764_800_000_000_000_000 + offset,
        '{"type":"heartbeat"}', partition, offset,
    )  # fmt: skip


def commit_bronze(writer: LakeWriter, partition: int, offset: int) -> None:
    writer.commit(Batch(version=0, frames=[frame(partition, offset)], positions={
        ("coinbase", partition): offset,
    }))  # fmt: skip


def test_the_dead_processors_last_commit_is_found_behind_many_others(tmp_path: Path) -> None:
    lake = parse_lake(str(tmp_path / "lake"))
    writer = LakeWriter(lake, "group")
    commit_bronze(writer, 3, 41)  # the dead processor's last batch (partition 3)
    for offset in range(150):  # the survivor's own batches until the session timed out
        commit_bronze(writer, 0, offset)
    bronze = DeltaTable(str(T.BRONZE.path(tmp_path / "lake")))
    found = recovery.in_doubt(lake, bronze, {writer.partition_app_id("coinbase", 3)})
    assert [c.txns for c in found] == [{"group:coinbase:3": 41}]
    # an app id bronze never recorded costs no search, and finds nothing
    assert recovery.in_doubt(lake, bronze, {writer.partition_app_id("coinbase", 5)}) == []


def test_recovery_leaves_the_candles_another_processor_is_committing(tmp_path: Path) -> None:
    lake = parse_lake(str(tmp_path / "lake"))
    other = LakeWriter(lake, "group")
    when = datetime(2026, 12, 4, 10, 0, 5, tzinfo=UTC)
    now = time.time_ns()
    trade = Trade("coinbase", "ETH-USD", 7, Decimal("3000.5"), Decimal("0.2"), "buy", when, now)
    batch = Batch(version=0, frames=[frame(3, 9)], trades=[trade], positions={("coinbase", 3): 9})
    plan = other.plan(batch)
    for write in plan.writes:  # the other processor, between its trades and candles commits
        write.run()
    engine = Engine(LakeWriter(lake, "group"), 0.1, 1000)
    engine.load_state(LakeReader(lake), {"group:coinbase:0"})  # this one owns partition 0
    candles = DeltaTable(str(T.CANDLES_1M.path(tmp_path / "lake")))
    assert candles.to_pyarrow_table().num_rows == 0  # the other's minute is the other's to write


# --- a candle write retried after a conflict computes its candles again -----------------------

MINUTE = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def trade_at(trade_id: int, price: str) -> Trade:
    when = MINUTE.replace(second=trade_id)
    return Trade("coinbase", "ETH-USD", trade_id, Decimal(price), Decimal("1"), "buy", when, 0)


def candle_of(*trades: Trade) -> Candle:
    candle = Candle.from_trade(trades[0], MINUTE)
    for trade in trades[1:]:
        candle.add(trade)
    return candle


def stored_candle(path: Path) -> Candle:
    rows = DeltaTable(str(T.CANDLES_1M.path(path))).to_pyarrow_table().to_pylist()
    assert len(rows) == 1, rows
    return Candle.from_row(rows[0])


def test_a_partial_candle_retried_after_a_conflict_keeps_the_winners_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor that took a partition over folds its partial candle into the lake's row.
    If another commit updates that row between its read and its commit (a repair, or the
    previous owner's last batch), the retry must fold into the new row: folding into the
    old one again would write the other's update away."""
    lake = parse_lake(str(tmp_path / "lake"))
    t1, t2, t3 = trade_at(1, "100"), trade_at(2, "103"), trade_at(3, "99")
    first = LakeWriter(lake, "group")
    first.commit(Batch(version=1, trades=[t1], candles=[candle_of(t1)]))
    taker = LakeWriter(lake, "group")  # the processor that now owns the product
    other = LakeWriter(lake, "other")
    merge = taker._merge_partials
    calls = []

    def merge_then_lose_the_race(batch: Batch) -> list[Candle]:
        merged = merge(batch)
        if not calls:  # the other commit lands between this read and the commit
            other.commit(Batch(version=1, trades=[t2], candles=[candle_of(t1, t2)]))
        calls.append(merged)
        return merged

    monkeypatch.setattr(taker, "_merge_partials", merge_then_lose_the_race)
    partial = candle_of(t3)
    plan = taker.plan(Batch(version=2, trades=[t3], partial_candles=[partial]))
    for write in plan.writes:
        write.run()
    assert len(calls) == 2  # the first commit conflicted with the other's, and was retried
    assert stored_candle(tmp_path / "lake") == candle_of(t1, t2, t3)
    assert plan.merged == [candle_of(t1, t2, t3)]  # the engine adopts what the lake holds


def test_a_candle_repair_retried_after_a_conflict_reads_silver_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair recomputes a minute from silver. If the minute's owner commits a trade and its
    candle between the repair's read and its commit, the retried repair must read silver
    again: the candle it computed first lacks that trade."""
    lake = parse_lake(str(tmp_path / "lake"))
    t1, t2, t3 = trade_at(1, "100"), trade_at(2, "103"), trade_at(3, "99")
    dead = LakeWriter(lake, "group")
    dead.commit(Batch(version=1, trades=[t1], candles=[candle_of(t1)]))
    dead.commit(Batch(version=2, trades=[t2]))  # ended before this batch's candle commit
    owner = LakeWriter(lake, "owner")
    reader = LakeReader(lake)
    query = reader.query
    reads = []

    def read_then_lose_the_race(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        rows = query(*args, **kwargs)
        if not reads:  # the owner's trade and candle land between this read and the commit
            owner.commit(Batch(version=1, trades=[t3], candles=[candle_of(t1, t3)]))
        reads.append(len(rows))
        return rows

    monkeypatch.setattr(reader, "query", read_then_lose_the_race)
    written = repair_candles(LakeWriter(lake, "group"), reader, {candle_of(t1).key})
    assert reads == [2, 3] and written == 1
    assert stored_candle(tmp_path / "lake") == candle_of(t1, t2, t3)


def test_a_commit_that_lands_after_a_rebalance_leaves_the_relearnt_book_alone(
    tmp_path: Path,
) -> None:
    """A batch in flight when the engine relearns its state (`forget`, at a Kafka assignment)
    ends after it: its candles are not adopted as the book's (their products may belong to
    another processor now), and adopting them used to fail on the book's cleared index."""
    lake = parse_lake(str(tmp_path / "lake"))
    reader = LakeReader(lake)
    engine = Engine(LakeWriter(lake, "group"), 0.1, 1000)
    engine.load_state(reader, {"group:coinbase:0"})
    t1 = trade_at(1, "100")
    batch = Batch(version=engine.next_version, trades=[t1], partial_candles=[candle_of(t1)])

    async def commit_across_a_rebalance() -> None:
        task = engine.submit(batch)
        engine.forget(reader, {"group:coinbase:0"})
        await task

    asyncio.run(commit_across_a_rebalance())
    assert engine._book == {}  # relearnt from the lake: the next trade of the minute is merged
    assert engine.stats.batches == 1
    assert stored_candle(tmp_path / "lake") == candle_of(t1)


def test_a_candle_write_that_keeps_losing_to_a_busy_neighbour_still_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processors of one group own different products, whose candles share each date's
    file: every candle commit of one rewrites the file the other read. A write that loses
    many times in a row (more than storage errors are retried) keeps retrying while the
    other keeps committing, and each lost race is counted at /metrics."""
    from prometheus_client import REGISTRY

    from crypto_sentinel.lake import writer as writer_module

    monkeypatch.setattr(writer_module, "CONFLICT_FIRST_DELAY", 0.001)
    lake = parse_lake(str(tmp_path / "lake"))
    eth = [trade_at(i, str(100 + i)) for i in range(1, 15)]
    btc = Trade("coinbase", "BTC-USD", 1, Decimal("5"), Decimal("1"), "buy", MINUTE, 0)
    LakeWriter(lake, "seed").commit(
        Batch(version=1, trades=[eth[0], btc], candles=[candle_of(eth[0]), candle_of(btc)])
    )  # one file holds both products' rows
    busy = LakeWriter(lake, "busy")
    victim = LakeWriter(lake, "victim")
    upsert = victim._upsert_candles
    losses = len(writer_module.RETRY_DELAYS) + 5
    calls = 0

    def neighbour_commits_first(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= losses:  # the busy one rewrites the shared file before each attempt
            done = eth[: calls + 1]
            busy.commit(Batch(version=calls, trades=[done[-1]], candles=[candle_of(*done)]))
        upsert(*args)

    monkeypatch.setattr(victim, "_upsert_candles", neighbour_commits_first)
    before = REGISTRY.get_sample_value("sentinel_commit_retries_total", {"reason": "conflict"})
    btc2 = Trade("coinbase", "BTC-USD", 2, Decimal("6"), Decimal("2"), "sell", MINUTE, 0)
    victim.commit(Batch(version=1, trades=[btc2], candles=[candle_of(btc, btc2)]))
    after = REGISTRY.get_sample_value("sentinel_commit_retries_total", {"reason": "conflict"})
    assert calls == losses + 1 and after - (before or 0) == losses
    rows = DeltaTable(str(T.CANDLES_1M.path(tmp_path / "lake"))).to_pyarrow_table().to_pylist()
    stored = {row["product_id"]: Candle.from_row(row) for row in rows}
    assert stored == {"ETH-USD": candle_of(*eth[: losses + 1]), "BTC-USD": candle_of(btc, btc2)}


def test_a_storage_error_that_persists_fails_the_batch_after_its_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike a conflict, a storage error says nothing about progress: it is retried a few
    times, then the batch fails (the engine stops; the next start derives it from bronze)."""
    from crypto_sentinel.lake import writer as writer_module

    monkeypatch.setattr(writer_module, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    writer = LakeWriter(parse_lake(str(tmp_path / "lake")), "group")
    calls = []

    def disk_full(*args: Any) -> None:
        calls.append(args)
        raise OSError("No space left on device")

    monkeypatch.setattr(writer, "_upsert_candles", disk_full)
    t1 = trade_at(1, "100")
    with pytest.raises(LakeWriteFailed, match="No space left"):
        writer.commit(Batch(version=1, trades=[t1], candles=[candle_of(t1)]))
    assert len(calls) == 4
