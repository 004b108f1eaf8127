"""Maintenance planning: which partitions get compacted at which size, which dates expire,
what the policy writes into the tables, and how rows are sized as text."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from crypto_sentinel.config import ConfigError, load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import (
    MiB,
    Policy,
    _text_columns,
    compaction_target,
    expired_dates,
    files_after_packing,
    text_sizes,
)


def test_packing_merges_only_files_below_the_target() -> None:
    assert files_after_packing([10] * 10, 25) == 5  # 2 per bin
    assert files_after_packing([100, 100, 5, 5, 5], 50) == 3  # big files stay, small -> 1
    assert files_after_packing([], 50) == 0


def test_partitions_within_the_bound_are_left_alone() -> None:
    assert compaction_target([1000] * 32, 128 * MiB, 32) is None


def test_a_stream_of_tiny_files_is_packed_at_the_smallest_tier() -> None:
    target = 128 * MiB
    sizes = [20_000] * 100  # 100 micro-batch files of 20 kB
    assert compaction_target(sizes, target, 32) == target // 64


def test_tiny_tier_is_skipped_when_it_cannot_reach_half_the_bound() -> None:
    target = 128 * MiB
    sizes = [target // 64 - 1] * 40  # 40 files just under 2 MB: packing at 2 MB changes nothing
    assert compaction_target(sizes, target, 32) == target // 8
    big = [target] * 40 + [1000, 1000]
    assert compaction_target(big, target, 32) == target  # best effort at the full target


def test_partition_of_only_big_files_is_not_rewritten() -> None:
    assert compaction_target([128 * MiB] * 50, 128 * MiB, 32) is None


def test_expired_dates_are_those_wholly_older_than_the_retention() -> None:
    now = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
    dates = [date(2024, 3, d) for d in (1, 2, 3, 4, 9, 10)]
    # cutoff = 2024-03-03 12:00: the 3rd is partly younger than 7 days, so it stays
    assert expired_dates(dates, 7, now) == [date(2024, 3, 1), date(2024, 3, 2)]
    assert expired_dates(dates, 0, now) == []


def test_policy_from_settings_and_table_properties() -> None:
    settings = load_settings(
        retention_silver_days=30,
        maintenance_vacuum_safety_hours=2,
        maintenance_log_retention_minutes=90,
        maintenance_target_file_mb=64,
    )
    policy = Policy.from_settings(settings)
    assert policy.retention_days[T.BRONZE.name] == 7
    assert policy.retention_days[T.TRADES.name] == 30 == policy.retention_days[T.TICKERS.name]
    assert policy.retention_days[T.CANDLES_1M.name] == 0  # gold kept by default
    assert policy.target_file_bytes == 64 * MiB
    props = policy.table_properties()
    assert props["delta.logRetentionDuration"] == "interval 5400 seconds"
    assert props["delta.deletedFileRetentionDuration"] == "interval 2 hours"
    assert props["delta.checkpointInterval"] == "25"


def test_the_log_is_kept_for_half_a_minute_by_default() -> None:
    """Every commit lists `_delta_log`, so its length is paid at every write: the default keeps
    about 30 s of commit files (docs/benchmarks.md, session 32); fractions of a minute work."""
    default = Policy.from_settings(load_settings())
    assert default.table_properties()["delta.logRetentionDuration"] == "interval 30 seconds"
    quarter = Policy.from_settings(load_settings(maintenance_log_retention_minutes=0.25))
    assert quarter.log_retention_seconds == 15
    with pytest.raises(ConfigError):
        load_settings(maintenance_log_retention_minutes=0.05)


def test_rows_are_sized_as_an_exchange_would_write_them() -> None:
    batch = pa.RecordBatch.from_pylist(
        [
            {
                "price": Decimal("100.500000000000"),
                "size": Decimal("2"),
                "time": datetime(2024, 1, 1, 0, 0, 5, 123456, tzinfo=UTC),
                "date": date(2024, 1, 1),
                "side": "buy",
            }
        ],
        schema=pa.schema(
            [
                ("price", T.PRICE),
                ("size", T.PRICE),
                ("time", T.UTC_TS),
                ("date", pa.date32()),
                ("side", pa.string()),
            ]
        ),
    )
    text = _text_columns(batch).to_pylist()[0]
    assert text == {
        "price": "100.5",
        "size": "2",
        "time": "2024-01-01T00:00:05.123456Z",
        "date": "2024-01-01",
        "side": "buy",
    }
    rows, csv_bytes, json_bytes = text_sizes(iter([batch, batch]), 10)
    header = '"price","size","time","date","side"\n'
    line = '"100.5","2","2024-01-01T00:00:05.123456Z","2024-01-01","buy"\n'
    json_line = (
        '{"price":"100.5","size":"2","time":"2024-01-01T00:00:05.123456Z",'
        '"date":"2024-01-01","side":"buy"}\n'
    )
    assert rows == 2
    assert csv_bytes == len(header) + 2 * len(line)
    assert json_bytes == 2 * len(json_line)
