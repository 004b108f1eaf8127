"""What maintenance keeps true of every table (built from the settings), and the pure
planning of compaction and retention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from deltalake import ColumnProperties, WriterProperties

from crypto_sentinel.lake import tables as T

if TYPE_CHECKING:
    from crypto_sentinel.config import Settings

MiB = 1 << 20

#: Compaction targets as divisors of the configured target size, smallest first. A partition
#: is compacted at the smallest tier that brings it under the bound, so today's growing file
#: is not rewritten in full on every pass (size-tiered: each byte is rewritten ~once a tier).
TIER_DIVISORS = (64, 8, 1)

#: Rows per Parquet row group in compacted files: large files stay skippable by time, and a
#: read of one old page decodes one small group. Measured on a compacted day of trades
#: (400,698 rows, zstd): 16,384-row groups make the file 1.8 % larger than 131,072-row ones
#: and decode a group in the API's columns in 5 ms instead of 40 (docs/benchmarks.md).
ROW_GROUP_ROWS = 16_384
COMPACT_PROPERTIES = WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS)
#: Rows per row group of gold.book_snapshots (appended and compacted): a row holds up to
#: 2 x `book_depth` levels, so at ROW_GROUP_ROWS one `at=` read of a checkpoint would decode
#: the levels of thousands of snapshots around it.
SNAPSHOT_GROUP_ROWS = 256
SNAPSHOT_PROPERTIES = WriterProperties(compression="ZSTD", max_row_group_size=SNAPSHOT_GROUP_ROWS)
#: Rows per row group of the raw frames (bronze, quarantine), appended and compacted: a frame
#: is wide (a Coinbase match about 400 bytes). delta-rs's compaction decodes a whole row group
#: of the files it reads at a time, so its memory follows the groups it reads, not the file
#: sizes: compacting 16 bronze files of 18,000 frames into one took +34.0 MB with a group per
#: file, +21.5 MB with 4,096-row groups and +12.2 MB with 1,024-row groups (medians of three,
#: `python -m bench.compaction`, docs/benchmarks.md). Appends cost the same (17-21 ms per
#: 6,000 frames) and the files are 2.4 % larger.
RAW_GROUP_ROWS = 1_024
#: The frame text is unique per row: a dictionary of it is never smaller, and its min/max
#: statistics (truncated JSON text) serve no reader. Without both, bronze appends of 12,000
#: frames took 2-5 % less CPU and the files were 4 % smaller (`python -m bench.bronze_write`).
RAW_TEXT = {"frame": ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE")}
RAW_PROPERTIES = WriterProperties(
    compression="ZSTD", max_row_group_size=RAW_GROUP_ROWS, column_properties=RAW_TEXT
)


def compact_group_rows(spec: T.TableSpec) -> int:
    """Rows per row group of the files compaction and rebuild write for a table."""
    if spec == T.BOOK_SNAPSHOTS:
        return SNAPSHOT_GROUP_ROWS
    if spec in (T.BRONZE, T.QUARANTINE):
        return RAW_GROUP_ROWS
    return ROW_GROUP_ROWS


_PROPERTIES = {
    ROW_GROUP_ROWS: COMPACT_PROPERTIES,
    SNAPSHOT_GROUP_ROWS: SNAPSHOT_PROPERTIES,
    RAW_GROUP_ROWS: RAW_PROPERTIES,
}


def compact_properties(spec: T.TableSpec) -> WriterProperties:
    """How compaction and rebuild write a table's files through delta-rs."""
    return _PROPERTIES[compact_group_rows(spec)]


#: Z-order columns per table (tables without an entry are only bin-packed).
ZORDER_COLUMNS: dict[str, tuple[str, ...]] = {
    T.TRADES.name: ("product_id", "time"),
    T.TICKERS.name: ("product_id", "time"),
    T.CANDLES_1M.name: ("product_id", "start"),
    T.BOOK_UPDATES.name: ("product_id", "book_time"),
    T.BOOK_SNAPSHOTS.name: ("product_id", "time"),
}


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Policy:
    """What maintenance keeps true of every table; built from the settings."""

    target_file_bytes: int = 128 * MiB
    max_files_per_partition: int = 32
    zorder: bool = False
    retention_days: Mapping[str, int] = field(default_factory=lambda: {T.BRONZE.name: 7})
    vacuum_safety_hours: int = 1
    checkpoint_interval: int = 25  # see Settings.maintenance_checkpoint_interval
    log_retention_seconds: int = 30

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        s = settings
        silver, gold = s.retention_silver_days, s.retention_gold_days
        return cls(
            target_file_bytes=s.maintenance_target_file_mb * MiB,
            max_files_per_partition=s.maintenance_max_files_per_partition,
            zorder=s.maintenance_zorder,
            retention_days={
                T.BRONZE.name: s.retention_bronze_days,
                T.QUARANTINE.name: s.retention_quarantine_days,
                T.TRADES.name: silver,
                T.TICKERS.name: silver,
                T.CANDLES_1M.name: gold,
                T.BOOK_UPDATES.name: silver,
                T.BOOK_SNAPSHOTS.name: gold,
            },
            vacuum_safety_hours=s.maintenance_vacuum_safety_hours,
            checkpoint_interval=s.maintenance_checkpoint_interval,
            log_retention_seconds=round(s.maintenance_log_retention_minutes * 60),
        )

    def table_properties(self) -> dict[str, str]:
        """The policy written into each table, so delta-rs writers (and Spark) follow it too:
        every writer checkpoints at this interval and trims the log when it does.

        The log is kept short on purpose: each commit and each table refresh lists the
        `_delta_log` folder (~20 µs per entry here), and only versions after the newest
        checkpoint are needed to read the table."""
        return {
            "delta.checkpointInterval": str(self.checkpoint_interval),
            "delta.logRetentionDuration": f"interval {self.log_retention_seconds} seconds",
            "delta.deletedFileRetentionDuration": f"interval {self.vacuum_safety_hours} hours",
            "delta.enableExpiredLogCleanup": "true",
        }


# --- planning (pure) -------------------------------------------------------------------------


def files_after_packing(sizes: Sequence[int], target: int) -> int:
    """Files a partition keeps after bin-packing its files smaller than `target` (greedy)."""
    kept = sum(1 for s in sizes if s >= target)
    bins, filled = 0, 0
    for size in sizes:
        if size >= target:
            continue
        if filled and filled + size > target:
            bins += 1
            filled = 0
        filled += size
    return kept + bins + (1 if filled else 0)


def compaction_target(sizes: Sequence[int], target_bytes: int, max_files: int) -> int | None:
    """Target size to compact a partition with, or None when it is within the bound.

    The smallest tier that leaves at most half the bound wins (headroom before the next
    pass); a partition that no tier brings that low is packed at the full target.
    """
    if len(sizes) <= max_files:
        return None
    for divisor in TIER_DIVISORS:
        tier = max(target_bytes // divisor, 1)
        if sum(1 for s in sizes if s < tier) < 2:
            continue
        if divisor == 1 or files_after_packing(sizes, tier) <= max_files // 2:
            return tier
    return None


def expired_dates(dates: Sequence[date], days: int, now: datetime) -> list[date]:
    """Date partitions whose every row is older than `days` days (0 = keep forever)."""
    if days <= 0:
        return []
    cutoff = (now - timedelta(days=days)).date()
    return sorted(d for d in set(dates) if d < cutoff)
