"""The lake looks after itself: compaction, retention, vacuum, checkpoints and a storage report.

Why: every streaming micro-batch adds one small file per table and one JSON to its log. Left
alone, everything slows with them: a delta-rs commit gets slower with every live file and
every log entry (each commit lists `_delta_log`, ~20 µs per entry here), readers open more
files, and a table that is opened replays more log. So, beside the running stream and
without blocking it:

- compaction bin-packs the small files of a partition once it holds more than the configured
  number; its commits are data-unchanged (`dataChange=false`), so stream readers skip them,
  and they never conflict with appends (conflicts with candle MERGEs are retried); silver
  trades and tickers are compacted by copying row groups (`stream_compaction`), in memory
  that does not grow with the files made;
- retention drops whole expired date partitions with a Delta delete (never `rm`, which
  corrupts a table);
- vacuum deletes unreferenced files only after a safety window, so a reader that still holds
  an older snapshot never meets a missing file;
- the checkpoint interval and a short log retention are written into each table, so every
  delta-rs writer checkpoints and trims the log as it commits; maintenance checkpoints only
  tables nobody else does;
- one process maintains a lake at a time (a lake-wide lock held for the pass): two
  compactions of one table at the same moment would both commit and leave its rows twice.

A lake on S3-compatible storage is maintained the same way: tables open with the lake's
delta-rs storage options, and the few looks at files (log entries, sizes of files about to be
vacuumed) go through the Arrow filesystem, which serves a local folder just as well.

The package: `policy` (what is kept true, planning), `files` (the Delta log's file index and
files below a table), `maintainer` (the operations), `stream_compaction` (compaction by row
groups), `scheduler` (the in-process loop),
`report` (the storage report) and `cli` (`sentinel maintain` and `sentinel rebuild`).
"""

from crypto_sentinel.lake.maintenance.files import (
    Partition,
    add_actions,
    file_sizes,
    lake_exists,
    last_checkpoint_version,
    log_file_count,
    partitions,
)
from crypto_sentinel.lake.maintenance.maintainer import Maintainer
from crypto_sentinel.lake.maintenance.policy import (
    COMPACT_PROPERTIES,
    MiB,
    Policy,
    compaction_target,
    expired_dates,
    files_after_packing,
    utc_now,
)
from crypto_sentinel.lake.maintenance.report import (
    _text_columns,
    format_report,
    storage_report,
    text_sizes,
)
from crypto_sentinel.lake.maintenance.scheduler import run_maintenance_forever

__all__ = [
    "COMPACT_PROPERTIES", "Maintainer", "MiB", "Partition", "Policy", "_text_columns",
    "add_actions", "compaction_target", "expired_dates", "file_sizes", "files_after_packing",
    "format_report", "lake_exists", "last_checkpoint_version", "log_file_count", "partitions",
    "run_maintenance_forever", "storage_report", "text_sizes", "utc_now",
]  # fmt: skip
