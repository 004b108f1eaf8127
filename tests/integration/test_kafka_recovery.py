"""Raw first over Kafka, with several processors on one lake: the one that takes a dead one's
partitions finds that one's last bronze commit however many commits the others made since (it
was searched for only among bronze's newest 64 commits, and the batch in it could stay
underived for good); and recovering touches only the candles of the batches it derives
again, never those another processor is committing at that moment."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from deltalake import DeltaTable

from crypto_sentinel.engine import recovery
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake import tables as T
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
