"""Bronze append benchmark: what does appending raw frames to `bronze.raw_messages` cost?

Every micro-batch appends its frames to bronze first; at max-speed replay that is the largest
write of a batch. Each run appends `--batches` batches of `--rows` frames (a simulated
recording's, a match and a ticker per trade) to a fresh table with one set of writer
properties, the variants taking turns batch by batch so that load on the shared machine falls
on both alike. Measured per append: wall time and the process's CPU time (the Rust writer's
threads included), and the table's bytes at the end. The baseline is the writer's properties
before 2026-12-05; `lake.maintenance.policy.RAW_PROPERTIES` is the writer's now.

    python -m bench.bronze_write [--rows 12000] [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crypto_sentinel import native

native.configure()  # as `sentinel up`: deltalake's jemalloc and Arrow's pool set before loading

from deltalake import ColumnProperties, WriterProperties, write_deltalake  # noqa: E402

from bench.common import machine, recording  # noqa: E402
from crypto_sentinel.lake import tables as T  # noqa: E402
from crypto_sentinel.lake.maintenance.policy import RAW_GROUP_ROWS, RAW_PROPERTIES  # noqa: E402
from crypto_sentinel.lake.rows import bronze_table  # noqa: E402
from crypto_sentinel.model import RawFrame  # noqa: E402
from crypto_sentinel.sources.replay import _frame_texts  # noqa: E402

#: What the writer used before 2026-12-05: dictionary and statistics on every column.
BEFORE = WriterProperties(compression="ZSTD", max_row_group_size=RAW_GROUP_ROWS)
NO_DICTIONARY = WriterProperties(
    compression="ZSTD",
    max_row_group_size=RAW_GROUP_ROWS,
    column_properties={"frame": ColumnProperties(dictionary_enabled=False)},
)
VARIANTS = {
    "baseline: dictionary and statistics on every column (before 2026-12-05)": BEFORE,
    "no dictionary for the frame text": NO_DICTIONARY,
    "no dictionary, no statistics for the frame text (the writer's now)": RAW_PROPERTIES,
}


def batches(path: Path, rows: int, count: int) -> list[list[RawFrame]]:
    with path.open("rb") as fh:
        lines = fh.readlines()
    texts = [text for _, text in _frame_texts(lines[: rows * count])]
    now = time.time_ns()
    frames = [RawFrame("simulator", "bench", i, now + i, t) for i, t in enumerate(texts)]
    return [frames[i : i + rows] for i in range(0, len(frames), rows)][:count]


def run(rows: int, count: int, workdir: Path) -> dict[str, Any]:
    path = recording(workdir, max(300_000, rows * count // 2 + 1))  # the replay phase's
    work = batches(path, rows, count)
    tables = {name: Path(tempfile.mkdtemp(dir=workdir)) / "bronze" for name in VARIANTS}
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpus: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for batch in work:
        for name, props in VARIANTS.items():
            data = bronze_table(batch)
            wall, cpu = time.perf_counter(), time.process_time()
            write_deltalake(
                str(tables[name]),
                data,
                mode="append",
                partition_by=list(T.BRONZE.partition_by),
                writer_properties=props,
            )
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    out: dict[str, Any] = {}
    for name, table in tables.items():
        size = sum(f.stat().st_size for f in table.rglob("*.parquet"))
        out[name] = {
            "wall_ms_median": round(statistics.median(walls[name]) * 1000, 1),
            "cpu_ms_median": round(statistics.median(cpus[name]) * 1000, 1),
            "bytes": size,
        }
        shutil.rmtree(table.parent)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = run(args.rows, args.batches, args.workdir)
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    command = f"python -m bench.bronze_write --rows {args.rows} --batches {args.batches}"
    print(f"Bronze appends, {args.batches} x {args.rows:,} frames — {when}")
    print(f"Machine: {machine()}. Command: `{command}`.")
    print()
    print("| properties | wall per append (median) | CPU per append (median) | table bytes |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['wall_ms_median']} ms | {r['cpu_ms_median']} ms | {r['bytes']:,} |")
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
