"""Lake maintenance on S3-compatible object storage (moto's S3 server, a real HTTP endpoint):
compaction keeps every row and exact decimal, retention drops expired date partitions, vacuum
honours its safety window, checkpoints land in `_delta_log` on S3, the `sentinel maintain`
verbs work against an s3:// lake, and a running pipeline maintains an S3 lake by itself."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import storage_options
from crypto_sentinel.lake.maintenance import Maintainer, Policy, partitions
from crypto_sentinel.lake.maintenance.stream_compaction import is_compaction
from crypto_sentinel.lake.rows import trades_table
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import Trade
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimulatorServer
from tests.integration.test_maintenance import (
    MIDNIGHT,
    bronze_frames,
    overlapping_compactions,
    sorted_rows,
    trade,
)
from tests.s3server import BUCKET, S3, moto_s3

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def lake(s3: S3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh lake prefix in the bucket; delta-rs and Arrow in this process reach moto."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/lake"


def open_table(lake: str, spec: T.TableSpec) -> DeltaTable:
    return DeltaTable(spec.uri(lake), storage_options=storage_options(lake))


def objects(s3: S3, uri: str) -> dict[str, int]:
    """Every object below `uri` on the S3 server, with its size (boto3: independent of delta-rs
    and Arrow)."""
    client = s3.client()
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"].removeprefix(prefix).lstrip("/")] = item["Size"]
    return found


def parquet_objects(s3: S3, uri: str) -> dict[str, int]:
    return {k: v for k, v in objects(s3, uri).items() if k.endswith(".parquet")}


def files_per_partition(lake: str, spec: T.TableSpec) -> dict[str, int]:
    return {p.label(): len(p.sizes) for p in partitions(open_table(lake, spec), spec)}


def exact_trade(i: int, exchange: str, when: datetime) -> Trade:
    """A trade whose price and size use every one of the 12 decimal places the lake keeps."""
    base = trade(i, exchange, when)
    return msgspec.structs.replace(
        base,
        price=Decimal("60123.456789012345") + i,
        size=Decimal("0.000000000001") * (7 * i + 1),
    )


def test_compaction_on_s3_keeps_every_row_and_exact_decimal(lake: str, s3: S3) -> None:
    """24 commits into four partitions (two days x two exchanges) leave six small files per
    partition on S3; compaction packs each into one, the rows and their exact decimals stay."""
    writer = LakeWriter(lake, "stream")
    expected: list[Trade] = []
    for i in range(24):
        when = MIDNIGHT + timedelta(hours=12 * (i % 2) - 6)  # yesterday and today
        batch = [exact_trade(2 * i + k, ("coinbase", "kraken")[(i // 2) % 2], when) for k in (0, 1)]
        writer.commit(Batch(version=i + 1, trades=batch))
        expected.extend(batch)

    before = files_per_partition(lake, T.TRADES)
    assert sorted(before.values()) == [6, 6, 6, 6]
    result = Maintainer(lake, Policy(max_files_per_partition=4)).compact(T.TRADES)
    assert sum(p["files_removed"] for p in result["partitions"]) == 24
    after = files_per_partition(lake, T.TRADES)
    assert after == dict.fromkeys(before, 1)

    dt = open_table(lake, T.TRADES)
    assert is_compaction(dt.history(1)[0])
    table = dt.to_pyarrow_table()
    assert sorted_rows(table) == sorted_rows(trades_table(expected))
    keys = [(r["product_id"], r["trade_id"]) for r in table.to_pylist()]
    assert len(keys) == len(set(keys)) == 48
    assert set(keys) == {(t.product_id, t.trade_id) for t in expected}
    prices = {r["trade_id"]: (r["price"], r["size"]) for r in table.to_pylist()}
    for t in expected:
        assert prices[t.trade_id] == (t.price, t.size)
    assert dt.transaction_version("stream") == 24


def test_overlapping_maintenance_of_an_s3_lake_never_doubles_a_table(lake: str, s3: S3) -> None:
    """One maintaining process at a time on S3 too (a lease object, as the writer's)."""
    ids, second_pass = overlapping_compactions(lake)
    assert ids == [1_000 + i for i in range(12)]
    assert second_pass == []
    assert not any("_maintenance" in key for key in objects(s3, lake))  # released


def test_retention_on_s3_drops_exactly_the_expired_date_partitions(lake: str, s3: S3) -> None:
    now = datetime(2024, 3, 10, 6, 0, tzinfo=UTC)
    days = [now.date() - timedelta(days=k) for k in (10, 8, 7, 1, 0)]
    writer = LakeWriter(lake, "stream")
    for version, day in enumerate(days, start=1):
        writer.commit(Batch(version=version, frames=bronze_frames(day, 3 + version)))
    maintainer = Maintainer(
        lake, Policy(retention_days={T.BRONZE.name: 7}, vacuum_safety_hours=0), now=lambda: now
    )
    gone = [days[0].isoformat(), days[1].isoformat()]  # 10 and 8 days old; 7 is not yet

    assert maintainer.retain(T.BRONZE, dry_run=True)["expired"] == gone
    assert open_table(lake, T.BRONZE).to_pyarrow_table().num_rows == sum(range(4, 9))
    result = maintainer.retain(T.BRONZE)
    assert result["expired"] == gone and result["rows"] == 4 + 5 and result["files"] == 2
    remaining = Counter(open_table(lake, T.BRONZE).to_pyarrow_table().column("date").to_pylist())
    assert remaining == {days[2]: 6, days[3]: 7, days[4]: 8}
    assert maintainer.retain(T.BRONZE)["expired"] == []  # idempotent

    assert maintainer.vacuum(T.BRONZE)["files"] == 2
    stored = parquet_objects(s3, T.BRONZE.uri(lake))
    assert {key.split("/")[0] for key in stored} == {f"date={d}" for d in days[2:]}


def test_vacuum_on_s3_waits_for_the_safety_window(lake: str, s3: S3) -> None:
    writer = LakeWriter(lake, "stream")
    for i in range(6):
        writer.commit(Batch(version=i + 1, trades=[exact_trade(i, "coinbase", MIDNIGHT)]))
    old_snapshot = open_table(lake, T.TRADES)  # a reader still holding the old snapshot
    maintainer = Maintainer(lake, Policy(max_files_per_partition=2, vacuum_safety_hours=1))
    assert maintainer.compact(T.TRADES)["partitions"][0]["files_removed"] == 6
    stored = parquet_objects(s3, T.TRADES.uri(lake))
    assert len(stored) == 7

    assert maintainer.vacuum(T.TRADES)["files"] == 0  # replaced 0 h ago: inside the window
    assert parquet_objects(s3, T.TRADES.uri(lake)) == stored
    assert old_snapshot.to_pyarrow_table().num_rows == 6

    table_prefix = T.TRADES.uri(lake) + "/"
    live = {uri.removeprefix(table_prefix) for uri in open_table(lake, T.TRADES).file_uris()}
    replaced_bytes = sum(size for key, size in stored.items() if key not in live)
    dry = maintainer.vacuum(T.TRADES, safety_hours=0, dry_run=True)
    assert dry["files"] == 6 and dry["bytes"] == replaced_bytes
    assert len(parquet_objects(s3, T.TRADES.uri(lake))) == 7  # a dry run deletes nothing

    assert maintainer.vacuum(T.TRADES, safety_hours=0)["files"] == 6
    assert set(parquet_objects(s3, T.TRADES.uri(lake))) == live
    with pytest.raises(OSError):
        old_snapshot.to_pyarrow_table()  # what the window protects readers from
    assert open_table(lake, T.TRADES).to_pyarrow_table().num_rows == 6


def test_checkpoint_on_s3_lands_in_the_delta_log_and_trims_it(lake: str, s3: S3) -> None:
    policy = Policy(checkpoint_interval=10, log_retention_seconds=1)
    maintainer = Maintainer(lake, policy)
    writer = LakeWriter(lake, "stream")
    writer.commit(Batch(version=1, trades=[exact_trade(0, "coinbase", MIDNIGHT)]))
    assert maintainer.configure(T.TRADES)["changed"]
    writer = LakeWriter(lake, "stream")  # opened after: follows the table's policy
    for i in range(2, 16):
        writer.commit(Batch(version=i, trades=[exact_trade(i, "coinbase", MIDNIGHT)]))
    log_uri = f"{T.TRADES.uri(lake)}/_delta_log"
    assert maintainer.checkpoint(T.TRADES)["created"] is False  # not due: the writer does it

    time.sleep(1.5)  # every log entry is now older than the 1 s log retention
    result = maintainer.checkpoint(T.TRADES, force=True)
    version = result["version"]
    assert result["created"] and result["checkpoint"] == version
    assert result["log_files"] < result["log_files_before"]
    log_objects = objects(s3, log_uri)
    assert f"{version:020d}.checkpoint.parquet" in log_objects
    assert len(log_objects) == result["log_files"]
    client_view = json.loads(_read_object(s3, f"{log_uri}/_last_checkpoint"))
    assert client_view["version"] == version

    reopened = open_table(lake, T.TRADES)
    assert reopened.version() == version
    assert reopened.to_pyarrow_table().num_rows == 15
    assert reopened.transaction_version("stream") == 15


def _read_object(s3: S3, uri: str) -> bytes:
    client = s3.client()
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _sentinel(s3: S3, lake: str | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, configured only by the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "AWS_"))}
    env |= s3.env | ({"SENTINEL_LAKE_URI": lake} if lake else {})
    return subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_maintain_verbs_against_an_s3_lake(lake: str, s3: S3, tmp_path: Path) -> None:
    writer = LakeWriter(lake, "stream")
    for i in range(5):
        writer.commit(
            Batch(
                version=i + 1,
                frames=bronze_frames(date(2024, 5, 1), 3),
                trades=[exact_trade(i, "coinbase", MIDNIGHT)],
            )
        )

    report = _sentinel(s3, lake, "maintain", "report", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    tables = {t["table"]: t for t in json.loads(report.stdout)["tables"]}
    assert set(tables) == {spec.name for spec in T.ALL_TABLES}
    trades = tables["silver.trades"]
    assert trades["rows"] == 5 and trades["files"] == 5
    assert trades["bytes"] == sum(parquet_objects(s3, T.TRADES.uri(lake)).values())
    assert trades["csv_bytes"] > 0 and trades["jsonl_bytes"] > trades["csv_bytes"]
    assert trades["log_files"] == len(objects(s3, f"{T.TRADES.uri(lake)}/_delta_log"))
    assert tables["bronze.raw_messages"]["rows"] == 15
    assert not (tmp_path / ".sentinel").exists(), "nothing may be written locally"

    text = _sentinel(s3, lake, "maintain", "report", cwd=tmp_path)
    assert text.returncode == 0 and f"lake {lake}" in text.stdout
    assert "silver.trades" in text.stdout

    # --lake takes an s3:// URI as given, without SENTINEL_LAKE_URI
    args = ("maintain", "compact", "--lake", lake, "--all", "--json", "--table", "silver.trades")
    compact = _sentinel(s3, None, *args, cwd=tmp_path)
    assert compact.returncode == 0, compact.stderr
    assert json.loads(compact.stdout)[0]["partitions"][0]["files_removed"] == 5
    assert files_per_partition(lake, T.TRADES) == {"date=2024-05-01/exchange=coinbase": 1}
    assert sorted_rows(open_table(lake, T.TRADES).to_pyarrow_table()) == sorted_rows(
        trades_table([exact_trade(i, "coinbase", MIDNIGHT) for i in range(5)])
    )

    missing = _sentinel(s3, f"s3://{BUCKET}/nowhere/lake", "maintain", "report", cwd=tmp_path)
    assert missing.returncode == 2 and "no lake at s3://" in missing.stderr

    rebuild = _sentinel(s3, lake, "rebuild", cwd=tmp_path)
    assert rebuild.returncode == 2
    assert "object storage" in rebuild.stderr and "Traceback" not in rebuild.stderr


async def test_running_pipeline_maintains_an_s3_lake(lake: str, s3: S3) -> None:
    """The pipeline's own scheduler compacts the S3 lake while the stream writes to it; every
    simulated trade arrives exactly once."""
    sim = SimulatorServer(["BTC-USD"], rate=200, max_trades=1_500, wait_for_subscriber=True)
    async with sim:
        settings = load_settings(
            source="simulator",
            simulator_url=sim.ws_url,
            products=["BTC-USD"],
            lake_uri=lake,
            batch_interval_ms=50,
            maintenance_interval_s=1,
            maintenance_max_files_per_partition=4,
        )
        pipeline = Pipeline(settings)
        task = asyncio.create_task(pipeline.run(with_api=False, install_signals=False))
        deadline = time.monotonic() + 40
        optimized: list[dict[str, Any]] = []
        while not optimized or pipeline.engine.stats.trades < sim.emitted_count or not sim.done:
            assert time.monotonic() < deadline, (len(optimized), pipeline.engine.stats.trades)
            assert not task.done(), task
            await asyncio.sleep(0.5)
            history = await asyncio.to_thread(lambda: open_table(lake, T.TRADES).history())
            optimized = [c for c in history if is_compaction(c)]
        pipeline.stop_event.set()
        await asyncio.wait_for(task, 60)
        emitted = {t.trade_id for t in sim.market.emitted()}

    dt = open_table(lake, T.TRADES)
    assert dt.metadata().configuration["delta.logRetentionDuration"] == "interval 30 seconds"
    rows: pa.Table = dt.to_pyarrow_table()
    ids = rows.column("trade_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(emitted) == 1_500
    assert set(ids) == emitted
