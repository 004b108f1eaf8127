"""Commit benchmark: what one Delta append costs against the length of the table's log.

delta-rs lists `_delta_log` several times per append (the write, its commit, the snapshot's
update), and every entry listed is a file status read and parsed: so the log's length is paid
at every commit of every table. The log is as long as maintenance's log retention lets it grow
(`SENTINEL_MAINTENANCE_LOG_RETENTION_MINUTES`): at the live bench's four commits a second per
table, 30 s of commits is about 120-145 entries, 2 minutes about 480-505.

One silver.trades table per log length is built with that many small commits, compacted to one
file and checkpointed, as a long-running writer's table is after maintenance (the state is the
same for every length: only the log differs). Then every table gets the same batch appended in
turns, `ROUNDS` times `WRITES` appends each, so the host's load falls on all lengths alike. The
shortest log is the baseline of the same invocation. CPU is the process's (the appends run on
deltalake's threads), taken while nothing else runs in it.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deltalake import DeltaTable, write_deltalake

from bench.common import machine
from bench.lake import synth_trades
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.writer import WRITER_PROPERTIES

#: Log entries to compare: a fresh table, about 30 s and about 2 minutes of commits at four a
#: second, and a long retention's worth.
LOG_LENGTHS = (10, 130, 500, 1000)
ROUNDS = 8
WRITES = 5  # appends per table per round
#: The table's properties while measuring: checkpoints as the pipeline's policy makes them,
#: and no log cleanup (the log keeps the length being measured).
PROPERTIES = {
    "delta.checkpointInterval": "25",
    "delta.logRetentionDuration": "interval 30 days",
    "delta.enableExpiredLogCleanup": "false",
}


def log_entries(table: Path) -> int:
    return sum(1 for _ in (table / "_delta_log").iterdir())


def build(table: Path, entries: int, say: Any) -> DeltaTable:
    """A silver.trades table whose log has about `entries` entries, compacted to one file."""
    shutil.rmtree(table, ignore_errors=True)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    tiny = synth_trades(1, 3, start, timedelta(seconds=1))
    write_deltalake(
        str(table), tiny, mode="append", partition_by=list(T.TRADES.partition_by),
        configuration=PROPERTIES,
    )  # fmt: skip
    dt = DeltaTable(str(table))
    while log_entries(table) < entries - 3:  # compaction, vacuum and checkpoint add three
        write_deltalake(dt, tiny, mode="append")
    dt.optimize.compact()
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    dt.create_checkpoint()
    say(f"commits: {table.name}: {log_entries(table)} log entries, {len(dt.file_uris())} file")
    return DeltaTable(str(table))


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p90_ms": round(values[int(0.9 * (len(values) - 1))] * 1000, 2),
    }


def main(trades: int, workdir: Path, port: int, phases: str | None = None) -> dict[str, Any]:
    """`trades`: rows per append (at most 5,000; the live bench's batches hold ~625 trades).
    `phases`: the log lengths to compare, comma-separated (default `LOG_LENGTHS`)."""

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    lengths = tuple(int(n) for n in phases.split(",")) if phases else LOG_LENGTHS
    rows = max(1, min(trades, 5000))
    root = workdir / "commits"
    tables = {n: build(root / f"log-{n}", n, say) for n in lengths}
    at_start = {n: log_entries(root / f"log-{n}") for n in lengths}
    batch = synth_trades(10_000, rows, datetime(2024, 5, 1, tzinfo=UTC), timedelta(seconds=1))
    wall: dict[int, list[float]] = {n: [] for n in lengths}
    cpu: dict[int, list[float]] = {n: [] for n in lengths}
    for _ in range(ROUNDS):
        for n, dt in tables.items():
            for _ in range(WRITES):
                t0, c0 = time.perf_counter(), time.process_time()
                write_deltalake(dt, batch, mode="append", writer_properties=WRITER_PROPERTIES)
                wall[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
    result: dict[str, Any] = {
        "benchmark": "commits",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": f"sentinel bench commits --trades {trades}"
        + (f" --phases {phases}" if phases else ""),
        "rows_per_append": rows,
        "appends_per_length": ROUNDS * WRITES,
        "lengths": [
            {
                "log_entries_start": at_start[n],
                "log_entries_end": log_entries(root / f"log-{n}"),
                "wall": summary(wall[n]),
                "cpu": summary(cpu[n]),
            }
            for n in lengths
        ],
    }
    shutil.rmtree(root, ignore_errors=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = result["lengths"]
    base = rows[0]
    lines = [
        f"### Commits: one append of {result['rows_per_append']:,} trades against the length of"
        f" `_delta_log` — {result['date']}",
        f"Machine: {result['machine']}. Command: `{result['command']}`. "
        f"{result['appends_per_length']} appends per table, the tables taking turns.",
        "",
        "| log entries (start → end) | append median / p90 | process CPU median / p90 "
        "| median against the shortest log |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = (
            r["wall"]["median_ms"] / base["wall"]["median_ms"] if base["wall"]["median_ms"] else 0
        )
        label = "baseline: " if r is base else ""
        lines.append(
            f"| {label}{r['log_entries_start']:,} → {r['log_entries_end']:,} "
            f"| {r['wall']['median_ms']} / {r['wall']['p90_ms']} ms "
            f"| {r['cpu']['median_ms']} / {r['cpu']['p90_ms']} ms | {ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"
