"""What the writer knows of a table's app transactions without reading them (`lake/txns.py`),
and how it leaves out a replayed log range (frames bronze holds already), on real Delta tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import parse_lake
from crypto_sentinel.lake.rows import bronze_table
from crypto_sentinel.lake.txns import TxnVersions
from crypto_sentinel.lake.writer import Batch, LakeWriter, Positions
from crypto_sentinel.model import RawFrame, Rejected

ROWS = pa.table({"n": [1]})


class CountingReads:
    """A table whose `transaction_version` calls are counted."""

    def __init__(self, dt: DeltaTable) -> None:
        self.dt, self.reads = dt, 0

    def version(self) -> int:
        return self.dt.version()

    def transaction_version(self, app: str) -> int | None:
        self.reads += 1
        return self.dt.transaction_version(app)


def append(dt: DeltaTable, **txns: int) -> None:
    properties = CommitProperties(app_transactions=[Transaction(a, v) for a, v in txns.items()])
    write_deltalake(dt, ROWS, mode="append", commit_properties=properties)


def truth(path: Path, version: int, apps: list[str]) -> dict[str, int]:
    """The versions a freshly opened snapshot of the same version records."""
    dt = DeltaTable(str(path), version=version)
    return {app: -1 if (v := dt.transaction_version(app)) is None else v for app in apps}


def test_own_commits_need_no_read_and_other_writers_commits_are_read(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_deltalake(str(path), ROWS)
    dt, apps = DeltaTable(str(path)), ["a", "b"]
    counted, known = CountingReads(dt), TxnVersions()

    def recorded() -> dict[str, int]:
        found = known.recorded("t", counted, apps)  # type: ignore[arg-type]
        assert found == truth(path, dt.version(), apps)
        return found

    def own_commit(**txns: int) -> None:
        before = dt.version()
        append(dt, **txns)
        known.committed("t", dt, before, txns)

    assert recorded() == {"a": -1, "b": -1} and counted.reads == 2
    own_commit(a=1)
    own_commit(a=2, b=7)
    assert recorded() == {"a": 2, "b": 7}
    assert counted.reads == 2  # both followed from the commits themselves

    append(DeltaTable(str(path)), b=9)  # another writer, unseen by `dt` until it commits
    own_commit(a=3)  # lands on top of the other's commit: dt jumps two versions
    assert recorded() == {"a": 3, "b": 9}
    assert counted.reads == 4

    append(DeltaTable(str(path)), b=11)
    dt.update_incremental()  # a refreshed snapshot is read afresh too
    assert recorded() == {"a": 3, "b": 11}
    assert counted.reads == 6


def kafka_frame(partition: int, offset: int) -> RawFrame:
    return RawFrame(
        "coinbase", f"kafka-{partition}", offset, 1_764_800_000_000_000_000 + offset,
        '{"type":"heartbeat"}', partition, offset,
    )  # fmt: skip


def kafka_batch(ranges: dict[int, range], known_firsts: bool) -> Batch:
    """A batch of frames from partitions' offset ranges, with one of them quarantined; its
    first positions known (as the engine's batches are) or not."""
    frames = [kafka_frame(p, o) for p, offsets in ranges.items() for o in offsets]
    firsts: Positions = {("coinbase", p): offsets[0] for p, offsets in ranges.items()}
    return Batch(
        version=0,
        frames=frames,
        rejected=[Rejected(f, "not json") for f in frames if f.offset % 5 == 0],
        positions={("coinbase", p): offsets[-1] for p, offsets in ranges.items()},
        first_positions=firsts if known_firsts else None,
    )


def stored(path: Path) -> list[tuple[str, int]]:
    table = DeltaTable(str(path)).to_pyarrow_table(columns=["conn_id", "recv_seq"])
    return sorted(zip(table["conn_id"].to_pylist(), table["recv_seq"].to_pylist(), strict=True))


@pytest.mark.parametrize("known_firsts", [True, False], ids=["firsts-known", "firsts-unknown"])
def test_a_replayed_log_range_is_stored_once(tmp_path: Path, known_firsts: bool) -> None:
    lake = parse_lake(str(tmp_path / "lake"))
    writer = LakeWriter(lake, "group")
    writer.commit(kafka_batch({0: range(0, 10)}, known_firsts))
    # a restarted consumer reads partition 0 again from the last offset bronze holds
    writer.commit(kafka_batch({0: range(9, 15), 1: range(0, 5)}, known_firsts))
    writer.commit(kafka_batch({0: range(3, 15)}, known_firsts))  # ... or from further back
    # and a batch that starts right after what bronze holds is stored whole
    writer.commit(kafka_batch({0: range(15, 20), 1: range(5, 8)}, known_firsts))
    frames = [("kafka-0", o) for o in range(20)] + [("kafka-1", o) for o in range(8)]
    assert stored(T.BRONZE.path(tmp_path / "lake")) == sorted(frames)
    assert stored(T.QUARANTINE.path(tmp_path / "lake")) == sorted(
        (conn, o) for conn, o in frames if o % 5 == 0
    )


def test_a_batch_past_what_bronze_holds_is_not_checked_row_by_row(tmp_path: Path) -> None:
    lake = parse_lake(str(tmp_path / "lake"))
    writer = LakeWriter(lake, "group")
    writer.commit(kafka_batch({0: range(0, 10)}, True))
    checked: list[RawFrame | Rejected] = []
    holds = writer._holds
    writer._holds = lambda row, recorded: checked.append(row) or holds(row, recorded)  # type: ignore[method-assign]
    writer.commit(kafka_batch({0: range(10, 20)}, True))
    assert checked == []
    writer.commit(kafka_batch({0: range(15, 25)}, True))  # a replayed range is
    assert len(checked) == 10 + 2  # its frames, and its quarantined ones


def test_rows_built_per_chunk_are_stored_beside_a_replayed_range(tmp_path: Path) -> None:
    """The engine's bronze tables (frames without log positions) are never left out by the
    replayed-range check, which applies to the batch's frames alone."""
    lake = parse_lake(str(tmp_path / "lake"))
    writer = LakeWriter(lake, "group")
    writer.commit(kafka_batch({0: range(0, 10)}, True))
    local = [RawFrame("coinbase", "local", n, 1_764_800_000_000_000_000, "{}") for n in (1, 2)]
    partly = kafka_batch({0: range(8, 12)}, True)  # bronze holds offsets 8 and 9
    partly.bronze_tables = [bronze_table(local)]
    writer.commit(partly)
    kafka = [("kafka-0", o) for o in range(12)]
    assert stored(T.BRONZE.path(tmp_path / "lake")) == sorted([*kafka, ("local", 1), ("local", 2)])
