"""The lake maintains itself on real Delta tables: compaction beside a committing stream and a
reader, retention of exactly the expired partitions, vacuum's safety window, checkpoints and
log cleanup, the in-process scheduler, and the `sentinel maintain` verbs."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from crypto_sentinel.cli import main as cli_main
from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import (
    Maintainer,
    Policy,
    last_checkpoint_version,
    log_file_count,
    partitions,
    run_maintenance_forever,
)
from crypto_sentinel.lake.maintenance.policy import RAW_GROUP_ROWS, ROW_GROUP_ROWS
from crypto_sentinel.lake.maintenance.stream_compaction import is_compaction
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.rows import trades_table
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import RawFrame, Trade
from tests.conftest import read_table

MIDNIGHT = datetime(2024, 5, 1, tzinfo=UTC)
EXCHANGES = ("coinbase", "kraken")


def trade(i: int, exchange: str, when: datetime) -> Trade:
    return Trade(
        exchange=exchange,
        product_id=("BTC-USD", "ETH-USD")[i % 2],
        trade_id=1_000 + i,
        price=Decimal("60000.01") + i,
        size=Decimal("0.001"),
        side=("buy", "sell")[i % 3 == 0],
        time=when,
        recv_ns=int((when + timedelta(milliseconds=3)).timestamp() * 1e9),
        sequence=10 * i,
        maker_order_id=f"m{i}",
        taker_order_id=f"t{i}",
        conn_id="c1",
    )


def sorted_rows(table: pa.Table) -> list[dict[str, object]]:
    return sorted(table.to_pylist(), key=lambda r: (r["exchange"], r["trade_id"]))


def files_per_partition(lake: Path, spec: T.TableSpec) -> dict[str, int]:
    dt = DeltaTable(str(spec.path(lake)))
    return {p.label(): len(p.sizes) for p in partitions(dt, spec)}


def test_2000_commits_then_compaction_keeps_every_row_and_readers_never_fail(lake: Path) -> None:
    """A stream of 2,000 two-trade commits across 4 partitions (two days x two exchanges)
    while maintenance compacts every 0.5 s and a reader queries throughout; then a final
    compaction. Files per partition end within the bound, the table is unchanged row for row,
    compaction commits are data-unchanged, and the reader never errors or goes backwards."""
    bound = 8
    policy = Policy(max_files_per_partition=bound, vacuum_safety_hours=1, log_retention_seconds=10)
    writer = LakeWriter(lake, "stream")
    expected: list[Trade] = []
    stop = threading.Event()
    errors: list[str] = []
    counts: list[int] = []

    def read_forever() -> None:
        reader = LakeReader(lake)
        while not stop.is_set():
            try:
                rows = reader.query(T.TRADES, "SELECT count(*) AS n FROM t")
                n = rows[0]["n"] if rows else 0  # no data file before the first commit
                newest = [r for ex in EXCHANGES for r in reader.newest_trades(ex, None, 5)]
                if counts and n < counts[-1]:
                    errors.append(f"row count went back from {counts[-1]} to {n}")
                if len(newest) < min(5, n):  # read a moment later: never fewer rows
                    errors.append(f"newest_trades gave {len(newest)} rows of {n}")
                counts.append(n)
            except Exception as exc:  # the point of the test: report, never raise in a thread
                errors.append(repr(exc))
            stop.wait(0.05)

    def maintain_forever() -> None:
        maintainer = Maintainer(lake, policy, should_stop=stop.is_set)
        while not stop.wait(0.5):
            try:  # the scheduled pass: policy, compaction, checkpoint + log trim, vacuum
                for step in (maintainer.configure, maintainer.compact, maintainer.checkpoint):
                    step(T.TRADES)
                maintainer.vacuum(T.TRADES)  # safety window: removes nothing a reader holds
            except Exception as exc:
                errors.append(f"maintenance: {exc!r}")

    threads = [threading.Thread(target=read_forever), threading.Thread(target=maintain_forever)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    try:
        for i in range(2000):
            when = MIDNIGHT + timedelta(seconds=30 * (i - 1000))  # the first half is yesterday
            batch = [trade(2 * i, EXCHANGES[i % 2], when), trade(2 * i + 1, EXCHANGES[i % 2], when)]
            writer.commit(Batch(version=i + 1, trades=batch))
            expected.extend(batch)
    finally:
        stop.set()
        for t in threads:
            t.join()
    commit_seconds = time.perf_counter() - started

    before = files_per_partition(lake, T.TRADES)
    Maintainer(lake, policy).compact(T.TRADES)
    after = files_per_partition(lake, T.TRADES)
    assert len(after) == 4
    assert all(n <= bound for n in after.values()), after
    assert sum(before.values()) >= sum(after.values())

    assert sorted_rows(read_table(lake, T.TRADES)) == sorted_rows(trades_table(expected))
    assert errors == []
    assert len(counts) > 20 and counts[-1] <= len(expected)
    assert DeltaTable(str(T.TRADES.path(lake))).transaction_version("stream") == 2000

    optimize_commits = 0
    for entry in (T.TRADES.path(lake) / "_delta_log").glob("*.json"):
        actions = [json.loads(line) for line in entry.read_text().splitlines()]
        info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
        if is_compaction(info):
            optimize_commits += 1
            changes = [a.get("add") or a.get("remove") for a in actions]
            assert all(c["dataChange"] is False for c in changes if c)
    assert optimize_commits >= 2  # during the stream and at the end
    print(f"2000 commits with maintenance and a reader: {commit_seconds:.1f} s")


def bronze_frames(day: date, n: int) -> list[RawFrame]:
    noon = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)
    return [
        RawFrame("coinbase", f"conn-{day}", i, int(noon.timestamp() * 1e9) + i, f'{{"i":{i}}}')
        for i in range(n)
    ]


def test_compaction_writes_raw_frames_in_smaller_row_groups(lake: Path) -> None:
    """Raw frames are wide: compaction (and rebuild) write them in groups of RAW_GROUP_ROWS
    rows, a compaction holding less of them at once; derived rows keep ROW_GROUP_ROWS."""
    writer = LakeWriter(lake, "stream")
    day = MIDNIGHT.date()
    frames = bronze_frames(day, 3 * RAW_GROUP_ROWS)
    for v, start in enumerate(range(0, len(frames), RAW_GROUP_ROWS // 2), start=1):
        part = frames[start : start + RAW_GROUP_ROWS // 2]
        when = MIDNIGHT + timedelta(seconds=v)
        trades = [trade(i, "coinbase", when) for i in range(start, start + len(part))]
        writer.commit(Batch(version=v, frames=part, trades=trades))
    m = Maintainer(lake, Policy())
    groups = {}
    for spec in (T.BRONZE, T.TRADES):
        m.compact(spec, max_files=1)
        [path] = _live_files(lake, spec)
        meta = pq.ParquetFile(path).metadata
        groups[spec.name] = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups[T.BRONZE.name] == [RAW_GROUP_ROWS] * 3
    assert groups[T.TRADES.name] == [3 * RAW_GROUP_ROWS]  # under ROW_GROUP_ROWS: one group
    assert 3 * RAW_GROUP_ROWS <= ROW_GROUP_ROWS
    assert read_table(lake, T.BRONZE).num_rows == len(frames)


def test_batches_append_raw_frames_in_small_row_groups(lake: Path) -> None:
    """A batch's raw frames (bronze, and quarantine likewise) are appended in groups of
    RAW_GROUP_ROWS rows, since compaction later reads the files it merges a group at a time;
    derived rows of the same batch stay in one group."""
    writer = LakeWriter(lake, "stream")
    frames = bronze_frames(MIDNIGHT.date(), 2 * RAW_GROUP_ROWS + RAW_GROUP_ROWS // 2)
    trades = [trade(i, "coinbase", MIDNIGHT + timedelta(seconds=1)) for i in range(len(frames))]
    writer.commit(Batch(version=1, frames=frames, trades=trades))
    groups = {}
    for spec in (T.BRONZE, T.TRADES):
        [path] = _live_files(lake, spec)
        meta = pq.ParquetFile(path).metadata
        groups[spec.name] = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups[T.BRONZE.name] == [RAW_GROUP_ROWS, RAW_GROUP_ROWS, RAW_GROUP_ROWS // 2]
    assert groups[T.TRADES.name] == [len(frames)]
    assert read_table(lake, T.BRONZE).num_rows == len(frames)


def test_retention_removes_exactly_the_expired_partitions(lake: Path) -> None:
    now = datetime(2024, 3, 10, 6, 0, tzinfo=UTC)
    days = [now.date() - timedelta(days=k) for k in (10, 8, 7, 6, 1, 0)]
    writer = LakeWriter(lake, "stream")
    for version, day in enumerate(days, start=1):
        trades = [
            trade(version * 10 + k, "coinbase", datetime.combine(day, datetime.min.time(), UTC))
            for k in range(3)
        ]
        writer.commit(Batch(version=version, frames=bronze_frames(day, 4 + version), trades=trades))
    policy = Policy(retention_days={T.BRONZE.name: 7}, vacuum_safety_hours=0)
    maintainer = Maintainer(lake, policy, now=lambda: now)

    gone = [days[0].isoformat(), days[1].isoformat()]  # 10 and 8 days old; 7 is not yet
    dry = maintainer.retain(T.BRONZE, dry_run=True)
    assert dry["expired"] == gone and dry["rows"] == 5 + 6
    assert read_table(lake, T.BRONZE).num_rows == sum(4 + v for v in range(1, 7))

    result = maintainer.retain(T.BRONZE)
    assert result["expired"] == gone and result["files"] == 2
    bronze = Counter(read_table(lake, T.BRONZE).column("date").to_pylist())
    assert bronze == {days[2]: 7, days[3]: 8, days[4]: 9, days[5]: 10}  # every row of the rest
    assert maintainer.retain(T.TRADES)["expired"] == []  # silver: kept by default
    assert read_table(lake, T.TRADES).num_rows == 18
    assert maintainer.retain(T.BRONZE)["expired"] == []  # idempotent

    maintainer.vacuum(T.BRONZE)
    for day in gone:
        folder = T.BRONZE.path(lake) / f"date={day}"
        assert not list(folder.rglob("*.parquet")), "expired files stay on disk after vacuum"
    for day in days[2:]:
        assert list((T.BRONZE.path(lake) / f"date={day}").rglob("*.parquet"))


def test_vacuum_keeps_replaced_files_for_the_safety_window(lake: Path) -> None:
    writer = LakeWriter(lake, "stream")
    for i in range(6):
        writer.commit(Batch(version=i + 1, trades=[trade(i, "coinbase", MIDNIGHT)]))
    path = str(T.TRADES.path(lake))
    old_snapshot = DeltaTable(path)  # a reader still holding the pre-compaction snapshot
    maintainer = Maintainer(lake, Policy(max_files_per_partition=2, vacuum_safety_hours=1))
    assert maintainer.compact(T.TRADES)["partitions"][0]["files_removed"] == 6

    assert maintainer.vacuum(T.TRADES)["files"] == 0  # replaced 0 h ago: inside the window
    assert old_snapshot.to_pyarrow_table().num_rows == 6

    assert maintainer.vacuum(T.TRADES, safety_hours=0)["files"] == 6
    with pytest.raises(OSError, match="not found"):
        old_snapshot.to_pyarrow_table()  # what the window protects readers from
    assert read_table(lake, T.TRADES).num_rows == 6
    assert len(list(T.TRADES.path(lake).rglob("*.parquet"))) == 1


def test_checkpoints_and_log_cleanup_keep_opening_fast(lake: Path) -> None:
    policy = Policy(checkpoint_interval=10, log_retention_seconds=60)
    maintainer = Maintainer(lake, policy)
    writer = LakeWriter(lake, "stream")
    writer.commit(Batch(version=1, trades=[trade(0, "coinbase", MIDNIGHT)]))
    assert maintainer.configure(T.TRADES)["changed"]  # the policy now lives in the table
    assert maintainer.configure(T.TRADES)["changed"] == {}
    writer = LakeWriter(lake, "stream")  # a writer opened after: follows the table's policy
    for i in range(2, 26):
        writer.commit(Batch(version=i, trades=[trade(i, "coinbase", MIDNIGHT)]))
    table_dir = T.TRADES.path(lake)
    assert last_checkpoint_version(table_dir) == 19  # delta-rs checkpointed every 10 commits

    hour_ago = time.time() - 3600
    for entry in (table_dir / "_delta_log").iterdir():
        os.utime(entry, (hour_ago, hour_ago))  # the log is older than its retention
    before = log_file_count(table_dir)
    result = maintainer.checkpoint(T.TRADES, force=True)
    assert result["created"] and result["checkpoint"] == result["version"]
    assert result["log_files"] < before and result["log_files"] <= 4
    reopened = DeltaTable(str(table_dir))
    assert reopened.version() == result["version"]
    assert reopened.to_pyarrow_table().num_rows == 25
    assert reopened.transaction_version("stream") == 25


async def test_scheduler_compacts_in_the_background_and_stops(lake: Path) -> None:
    writer = LakeWriter(lake, "stream")
    for i in range(12):
        writer.commit(Batch(version=i + 1, trades=[trade(i, "coinbase", MIDNIGHT)]))
    settings = load_settings(
        lake_dir=lake, maintenance_interval_s=1, maintenance_max_files_per_partition=4
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_maintenance_forever(settings, lake, stop, writer.maintenance_turn)
    )
    deadline = time.monotonic() + 20
    while files_per_partition(lake, T.TRADES) != {"date=2024-05-01/exchange=coinbase": 1}:
        assert time.monotonic() < deadline, files_per_partition(lake, T.TRADES)
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 10)
    dt = DeltaTable(str(T.TRADES.path(lake)))
    assert dt.metadata().configuration["delta.logRetentionDuration"] == "interval 30 seconds"
    assert read_table(lake, T.TRADES).num_rows == 12


def test_maintain_verbs(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = LakeWriter(lake, "stream")
    for i in range(5):
        frames = bronze_frames(MIDNIGHT.date(), 3)
        frames = [RawFrame(f.exchange, f"c{i}", f.recv_seq, f.recv_ns, f.text) for f in frames]
        writer.commit(Batch(version=i + 1, frames=frames, trades=[trade(i, "coinbase", MIDNIGHT)]))
    assert cli_main(["maintain", "compact", "--lake", str(lake), "--all", "--json"]) == 0
    compacted = json.loads(capsys.readouterr().out)
    by_table = {r["table"]: r for r in compacted}
    assert by_table["silver.trades"]["partitions"][0]["files_removed"] == 5
    assert files_per_partition(lake, T.TRADES) == {"date=2024-05-01/exchange=coinbase": 1}

    assert cli_main(["maintain", "report", "--lake", str(lake), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    tables = {t["table"]: t for t in report["tables"]}
    trades = tables["silver.trades"]
    assert trades["rows"] == 5 and trades["files"] == 1
    assert trades["bytes"] == sum(p.stat().st_size for p in _live_files(lake, T.TRADES))
    assert trades["bytes_per_trade"] == round(trades["bytes"] / 5, 2)
    assert trades["csv_bytes"] > 0 and trades["jsonl_bytes"] > trades["csv_bytes"]
    assert tables["bronze.raw_messages"]["rows"] == 15
    assert report["total"]["trades"] == 5

    assert (
        cli_main(["maintain", "checkpoint", "--lake", str(lake), "--table", "silver.trades"]) == 0
    )
    assert "checkpoint silver.trades" in capsys.readouterr().out
    assert cli_main(["maintain", "vacuum", "--lake", str(lake), "--safety-hours", "0"]) == 0
    assert len(list(T.TRADES.path(lake).glob("date=*/*/*.parquet"))) == 1
    assert cli_main(["maintain", "retain", "--lake", str(lake), "--days", "1", "--dry-run"]) == 0
    assert read_table(lake, T.TRADES).num_rows == 5  # dry run
    for verb in ("compact", "retain", "vacuum", "checkpoint", "report"):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["maintain", verb, "--help"])
        assert exit_.value.code == 0
    assert cli_main(["maintain", "report", "--lake", str(lake / "nowhere")]) == 2


def _live_files(lake: Path, spec: T.TableSpec) -> list[Path]:
    return [Path(uri) for uri in DeltaTable(str(spec.path(lake))).file_uris()]


def test_recent_reads_open_only_the_newest_files(lake: Path) -> None:
    """Ten days of micro-batch files; then the Parquet files of the six oldest days are removed
    from disk behind Delta's back, so any read that opened them would fail. The latest trades,
    a product's newest trades and the page before a cursor, and the newest trades of a product
    that only traded three days ago are still answered exactly: file statistics pruned the old
    files unopened."""
    writer = LakeWriter(lake, "stream")
    rows: list[Trade] = []
    day0 = datetime(2024, 6, 1, tzinfo=UTC)
    for day in range(10):
        for k in range(20):
            when = day0 + timedelta(days=day, minutes=30 * k)
            batch = [trade(len(rows) + j, "coinbase", when + timedelta(seconds=j)) for j in (0, 1)]
            if day == 7:
                sol = trade(len(rows) + 2, "coinbase", when + timedelta(seconds=2))
                batch.append(msgspec.structs.replace(sol, product_id="SOL-USD"))
            writer.commit(Batch(version=day * 20 + k + 1, trades=batch))
            rows.extend(batch)
    for old in T.TRADES.path(lake).glob("date=2024-06-0[1-6]/*/*.parquet"):
        old.unlink()
    reader = LakeReader(lake)
    with pytest.raises(duckdb.Error):
        reader.query(T.TRADES, "SELECT count(*) FROM t")  # a full scan fails now

    def ids(trades: list[Trade] | list[dict[str, Any]]) -> list[int]:
        return [t.trade_id if isinstance(t, Trade) else t["trade_id"] for t in trades]

    newest = sorted(rows, key=lambda t: (t.time, t.trade_id), reverse=True)
    assert ids(reader.newest_trades("coinbase", None, 50)) == ids(newest[:50])
    eth = sorted((t for t in rows if t.product_id == "ETH-USD"), key=lambda t: -t.trade_id)
    assert ids(reader.trades("coinbase", "ETH-USD", None, 10)) == ids(eth[:10])
    assert ids(reader.trades("coinbase", "ETH-USD", eth[9].trade_id, 5)) == ids(eth[10:15])
    sol = sorted((t for t in rows if t.product_id == "SOL-USD"), key=lambda t: -t.trade_id)
    assert ids(reader.trades("coinbase", "SOL-USD", None, 5)) == ids(sol[:5])


def _retries(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("sentinel_commit_retries_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("shared_lock", [True, False])
def test_in_process_maintenance_takes_turns_with_the_writer(lake: Path, shared_lock: bool) -> None:
    """Maintenance passes (table properties, retention, compaction, checkpoints, vacuum) run
    back to back beside a committing writer. Holding the writer's lock, they never fail one of
    its commits; without it (a separate `sentinel maintain`), the writer retries and counts
    the retries at /metrics. Either way every row lands once."""
    policy = Policy(max_files_per_partition=2, vacuum_safety_hours=1, log_retention_seconds=10)
    writer = LakeWriter(lake, "stream")
    maintainer = Maintainer(
        lake, policy, writer_lock=writer.maintenance_turn if shared_lock else None
    )
    before = _retries("conflict")
    stop = threading.Event()
    passes = 0

    def maintain() -> None:
        nonlocal passes
        while not stop.is_set():
            maintainer.run_once()
            passes += 1

    thread = threading.Thread(target=maintain)
    thread.start()
    try:
        for i in range(150):
            writer.commit(Batch(version=i + 1, trades=[trade(i, "coinbase", MIDNIGHT)]))
    finally:
        stop.set()
        thread.join(60)
    assert passes >= 2
    retried = _retries("conflict") - before
    if shared_lock:
        assert retried == 0
    else:
        assert retried > 0, "no conflict without the lock: the test proves nothing"
    ids = [r["trade_id"] for r in read_table(lake, T.TRADES).to_pylist()]
    assert sorted(ids) == [1_000 + i for i in range(150)]


def overlapping_compactions(lake: Any) -> tuple[list[int], list[dict[str, Any]]]:
    """Two maintaining processes (two Kafka processors, or `sentinel maintain` beside
    `sentinel up`) whose compactions of silver overlap: the second starts while the first
    holds its snapshot. Returns the trade ids silver holds after both, and the second pass.

    deltalake lets both of two such compactions commit, so without the lake's maintenance
    lock silver holds every row twice."""
    writer = LakeWriter(lake, "stream")
    for i in range(12):
        writer.commit(Batch(version=i + 1, trades=[trade(i, "coinbase", MIDNIGHT)]))
    policy = Policy(max_files_per_partition=2)
    first, second = Maintainer(lake, policy), Maintainer(lake, policy)
    first.configure(T.TRADES)  # as after a first pass: the table's properties are set
    second_pass: list[dict[str, Any]] = []
    compactor = first._compactor

    def racing(*args: Any) -> Any:
        run = compactor(*args)

        def run_after_the_other(dt: DeltaTable) -> Any:
            second_pass.extend(second.run_once())  # the other process's scheduled pass
            return run(dt)  # on the snapshot read before it

        return run_after_the_other

    first._compactor = racing  # type: ignore[method-assign]
    first.compact(T.TRADES)
    reader = DeltaTable(T.TRADES.uri(lake), storage_options=first._options)
    ids = sorted(reader.to_pyarrow_table(columns=["trade_id"]).column("trade_id").to_pylist())
    return ids, second_pass


def test_overlapping_maintenance_never_doubles_a_table(
    lake: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="crypto_sentinel.lake.maintenance.maintainer")
    ids, second_pass = overlapping_compactions(lake)
    assert ids == [1_000 + i for i in range(12)]
    assert second_pass == []  # it stood aside, and said so
    skipped = "lake maintenance pass skipped: another process maintains the lake"
    assert f"{skipped} {lake} (pid {os.getpid()}" in caplog.text
    assert len(files_per_partition(lake, T.TRADES)) == 1


def test_maintain_verb_names_the_process_that_maintains_the_lake(
    lake: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sentinel maintain compact` waits for a running pass, then refuses with one line."""
    from crypto_sentinel.lake.lock import maintenance_lock
    from crypto_sentinel.lake.maintenance import maintainer as module

    LakeWriter(lake, "stream").commit(Batch(version=1, trades=[trade(1, "coinbase", MIDNIGHT)]))
    monkeypatch.setattr(module, "CLI_LOCK_WAIT_S", 0.6)
    monkeypatch.setattr("crypto_sentinel.lake.maintenance.cli.CLI_LOCK_WAIT_S", 0.6)
    with maintenance_lock(lake):
        rc = cli_main(["maintain", "compact", "--lake", str(lake), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1, err
    holder = f"pid {os.getpid()} on host {os.uname().nodename} since 20"
    assert err[0].startswith(
        f"sentinel maintain: another process maintains the lake {lake} ({holder}"
    ), err
    assert err[0].endswith("Z); try again when its pass ends"), err
    assert cli_main(["maintain", "compact", "--lake", str(lake), "--quiet"]) == 0  # released
