"""Compaction that streams row groups (lake/maintenance/stream_compaction.py) on real Delta
tables: the same rows in the same order, statistics readers can still skip files by, the
spec's row groups, nothing committed when a file left the table meanwhile, and rebuild
waiting for a maintenance pass."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import Maintainer, Policy
from crypto_sentinel.lake.maintenance.maintainer import WRITERS_CHECKPOINT
from crypto_sentinel.lake.maintenance.policy import ROW_GROUP_ROWS
from crypto_sentinel.lake.maintenance.stream_compaction import (
    FilesChanged,
    LiveFile,
    compact_partition,
    is_compaction,
    live_files,
    merged_stats,
    plan_bins,
)
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import Trade
from tests.conftest import read_table
from tests.integration.test_maintenance import trade

MIDNIGHT = datetime(2024, 5, 1, tzinfo=UTC)


def write_batches(lake: Path, batches: int, per_batch: int) -> list[Trade]:
    """`batches` commits of `per_batch` trades, a second apart: one small file each."""
    writer = LakeWriter(lake, "stream")
    trades = []
    for v in range(batches):
        when = MIDNIGHT + timedelta(seconds=v, microseconds=123_456)
        batch = [trade(v * per_batch + k, "coinbase", when) for k in range(per_batch)]
        writer.commit(Batch(version=v + 1, trades=batch))
        trades.extend(batch)
    return trades


def table_of(lake: Path) -> DeltaTable:
    return DeltaTable(str(T.TRADES.path(lake)))


def last_commit(lake: Path) -> list[dict[str, object]]:
    newest = sorted((T.TRADES.path(lake) / "_delta_log").glob("*.json"))[-1]
    return [json.loads(line) for line in newest.read_text().splitlines()]


def test_rows_order_and_row_groups_survive_and_the_commit_changes_no_data(lake: Path) -> None:
    trades = write_batches(lake, 40, 1_000)
    before = read_table(lake, T.TRADES)
    result = Maintainer(lake, Policy(max_files_per_partition=8)).compact(T.TRADES)

    [entry] = result["partitions"]
    assert (entry["files_before"], entry["files_removed"], entry["files_added"]) == (40, 40, 1)
    after = read_table(lake, T.TRADES)
    assert after.equals(before)  # every row, in the order readers saw them
    assert after.num_rows == len(trades)
    assert sorted(after.column("price").to_pylist()) == sorted(t.price for t in trades)

    [path] = table_of(lake).file_uris()
    meta = pq.ParquetFile(path).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 40_000 - 2 * ROW_GROUP_ROWS]

    actions = last_commit(lake)
    info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
    assert is_compaction(info)
    changes = [a.get("add") or a.get("remove") for a in actions if "add" in a or "remove" in a]
    assert len(changes) == 41 and all(c["dataChange"] is False for c in changes)
    assert not any("metaData" in a for a in actions)  # a writer's commit would conflict
    assert table_of(lake).transaction_version("stream") == 40


def test_statistics_are_the_old_files_bounds_and_readers_skip_by_them(lake: Path) -> None:
    write_batches(lake, 12, 50)
    old = live_files(table_of(lake), [])
    Maintainer(lake, Policy(max_files_per_partition=4)).compact(T.TRADES)

    add = next(a["add"] for a in last_commit(lake) if "add" in a)
    stats = json.loads(add["stats"])
    assert stats["numRecords"] == 600
    assert stats["minValues"]["trade_id"] == 1_000 and stats["maxValues"]["trade_id"] == 1_599
    assert stats["minValues"]["time"] == "2024-05-01T00:00:00.123Z"
    assert stats["maxValues"]["time"] == "2024-05-01T00:00:11.123Z"
    assert stats["minValues"]["product_id"] == "BTC-USD"
    assert stats["nullCount"]["trade_id"] == 0
    # decimals as JSON numbers, the old files' lowest (delta-rs writes its bounds from 64-bit
    # floats, so they are as exact as those)
    assert '"price":60000.01,' in add["stats"]
    [new] = live_files(table_of(lake), [])
    for kind, pick in (("minValues", min), ("maxValues", max)):
        for column, value in new.stats[kind].items():
            assert value == pick(f.stats[kind][column] for f in old), (kind, column)

    # filtered reads, which skip files by these bounds, still find every row they ask for
    later = MIDNIGHT + timedelta(minutes=5)
    assert table_of(lake).to_pyarrow_table(filters=[("time", ">", later)]).num_rows == 0
    inside = MIDNIGHT + timedelta(seconds=5)
    rows = table_of(lake).to_pyarrow_table(filters=[("time", ">", inside)])
    assert rows.num_rows == 7 * 50  # the batches of seconds 5 to 11


def test_a_bound_missing_from_one_file_is_left_out() -> None:
    def file(stats: dict[str, dict[str, object]]) -> LiveFile:
        return LiveFile("p.parquet", 10, 2, {"date": "2024-05-01"}, stats)

    both = {"minValues": {"a": 1, "b": Decimal("0.50")}, "maxValues": {"a": 3}, "nullCount": {}}
    only_a = {"minValues": {"a": 0}, "maxValues": {"a": 9}, "nullCount": {"a": 1}}
    merged = json.loads(merged_stats([file(both), file(only_a)]))
    assert merged == {
        "numRecords": 4,
        "minValues": {"a": 0},
        "maxValues": {"a": 9},
        "nullCount": {},
    }


def test_bins_hold_one_partition_and_at_most_the_target() -> None:
    def file(name: str, day: str, size: int) -> LiveFile:
        return LiveFile(name, size, 1, {"date": day}, {})

    files = [
        file("a", "2024-05-01", 40), file("b", "2024-05-02", 40), file("c", "2024-05-01", 40),
        file("d", "2024-05-01", 40), file("big", "2024-05-01", 100), file("e", "2024-05-02", 40),
        file("f", "2024-05-01", 10),
    ]  # fmt: skip
    bins = [[f.path for f in group] for group in plan_bins(files, 100)]
    assert bins == [["a", "c"], ["d", "f"], ["b", "e"]]


def test_nothing_is_committed_when_a_file_left_the_table_meanwhile(lake: Path) -> None:
    """The commit's removes are not checked by deltalake against another removal of the same
    files, so the files are checked live just before it: a stale plan stops, and its new file
    is deleted."""
    write_batches(lake, 10, 20)
    stale = table_of(lake)  # the snapshot a slower compaction planned on
    Maintainer(lake, Policy(max_files_per_partition=4)).compact(T.TRADES)
    folder = T.TRADES.path(lake)
    files_before = sorted(folder.rglob("*.parquet"))

    with pytest.raises(FilesChanged):
        compact_partition(stale, str(folder), [], 1 << 30, ROW_GROUP_ROWS, WRITERS_CHECKPOINT)

    assert sorted(folder.rglob("*.parquet")) == files_before
    ids = read_table(lake, T.TRADES).column("trade_id").to_pylist()
    assert sorted(ids) == [1_000 + i for i in range(200)]


def test_files_with_other_columns_stop_the_copy(lake: Path) -> None:
    """After a schema change old and new files differ: the copy refuses (ValueError, which
    the maintainer answers by compacting through delta-rs) and leaves nothing behind."""
    path = lake / "t"
    write_deltalake(str(path), pa.table({"a": [1], "d": ["x"]}), partition_by=["d"])
    write_deltalake(str(path), pa.table({"a": [2], "d": ["x"]}), mode="append")
    write_deltalake(
        str(path), pa.table({"a": [3], "b": [4], "d": ["x"]}), mode="append", schema_mode="merge"
    )
    dt = DeltaTable(str(path))
    with pytest.raises(ValueError, match="other columns"):
        compact_partition(dt, str(path), [], 1 << 30, ROW_GROUP_ROWS, WRITERS_CHECKPOINT)
    assert len(list(path.rglob("*.parquet"))) == 3
    assert sorted(DeltaTable(str(path)).to_pyarrow_table().column("a").to_pylist()) == [1, 2, 3]


def test_another_engines_types_are_cast_to_the_tables_own(lake: Path) -> None:
    """A file another engine wrote (Spark's default: INT96 timestamps, read as nanoseconds)
    is copied into the types delta-rs writes, so every reader reads the new file."""
    from deltalake.transaction import AddAction

    write_batches(lake, 3, 10)
    dt = table_of(lake)
    rows = read_table(lake, T.TRADES).slice(0, 5)
    foreign = rows.drop_columns(["date", "exchange"])
    foreign = foreign.cast(
        pa.schema(
            pa.field(f.name, pa.timestamp("ns", tz="UTC")) if f.type == T.UTC_TS else f
            for f in foreign.schema
        )
    )
    folder = next(T.TRADES.path(lake).glob("date=*/exchange=*"))
    name = "part-00000-spark-c000.snappy.parquet"
    pq.write_table(foreign, folder / name, use_deprecated_int96_timestamps=True)
    assert pq.ParquetFile(folder / name).schema_arrow.field("time").type.unit == "ns"
    relative = f"{folder.parent.name}/{folder.name}/{name}"
    partition = {"date": folder.parent.name.split("=")[1], "exchange": "coinbase"}
    add = AddAction(
        relative, (folder / name).stat().st_size, partition, 0, True, '{"numRecords":5}'
    )
    dt.create_write_transaction(
        [add], mode="append", schema=dt.schema(), partition_by=["date", "exchange"]
    )

    # Called directly, not through the maintainer: a failed cast would fall back to delta-rs.
    metrics = compact_partition(
        table_of(lake), str(T.TRADES.path(lake)), [], 1 << 30, ROW_GROUP_ROWS,
        WRITERS_CHECKPOINT, T.TRADES.file_schema,
    )  # fmt: skip
    assert metrics["numFilesRemoved"] == 4 and metrics["numFilesAdded"] == 1
    [path] = table_of(lake).file_uris()
    assert pq.ParquetFile(path).schema_arrow == T.TRADES.file_schema
    ids = sorted(read_table(lake, T.TRADES).column("trade_id").to_pylist())
    assert ids == sorted([*range(1_000, 1_030), *rows.column("trade_id").to_pylist()])


def test_rebuild_waits_for_a_maintenance_pass_then_names_it(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction must not put back files a rebuild replaced: rebuild replaces tables
    only holding the maintenance lock."""
    from crypto_sentinel.lake import rebuild as module
    from crypto_sentinel.lake.lock import maintenance_lock
    from crypto_sentinel.model import RawFrame

    frame = RawFrame("coinbase", "c1", 1, int(MIDNIGHT.timestamp() * 1e9), '{"type":"x"}')
    LakeWriter(lake, "stream").commit(Batch(version=1, frames=[frame]))
    monkeypatch.setattr(module, "CLI_LOCK_WAIT_S", 0.6)
    with maintenance_lock(lake), pytest.raises(module.RebuildError) as failed:
        module.rebuild(lake)
    assert str(failed.value).startswith(f"another process maintains the lake {lake} (pid ")
    assert str(failed.value).endswith("nothing was replaced, run rebuild again later")
    assert module.rebuild(lake)["rebuilt"] is True
