"""Compaction memory by engine: delta-rs's `optimize.compact` (the baseline) against the
compaction that streams row groups (`lake/maintenance/stream_compaction.py`).

For each table (bronze, silver.trades, silver.tickers) the rows of a simulated recording
(match and ticker per trade, repeated `--copies` times) are appended in files of 2,000 rows,
as `sentinel up`'s batches write them, and packed into 2 MB files (the tier below), as its
maintenance leaves them. Each compaction of that table into files of `--targets` MB then runs
in a fresh process: the rise of its anonymous memory (RssAnon, sampled every 5 ms) over what
it held before, and its seconds. Runs are interleaved and repeated (the machine is shared).

    python -m bench.compaction_memory [--trades 300000] [--copies 4] [--targets 16,64]
        [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crypto_sentinel import native

native.configure()  # as `sentinel up`: deltalake's jemalloc and Arrow's pool set before loading

import pyarrow as pa  # noqa: E402
from deltalake import DeltaTable, write_deltalake  # noqa: E402

from bench.common import machine, recording  # noqa: E402
from bench.compaction import PeakAnon, anon_mb, frames  # noqa: E402
from crypto_sentinel.lake import tables as T  # noqa: E402
from crypto_sentinel.lake.maintenance.maintainer import WRITERS_CHECKPOINT  # noqa: E402
from crypto_sentinel.lake.maintenance.policy import (  # noqa: E402
    MiB,
    compact_group_rows,
    compact_properties,
)
from crypto_sentinel.lake.maintenance.stream_compaction import compact_partition  # noqa: E402
from crypto_sentinel.lake.rows import bronze_table  # noqa: E402
from crypto_sentinel.sources.venues import decode_frames  # noqa: E402

TABLES = {spec.name: spec for spec in (T.BRONZE, T.TRADES, T.TICKERS)}
ENGINES = ("delta-rs (baseline)", "stream")
APPEND_ROWS = 2_000


def build(folder: Path, recorded: Path, trades: int, copies: int) -> None:
    """One table per spec in `folder`, written as `sentinel up` and its 2 MB tier leave it."""
    raw = frames(recorded, 2 * trades)
    parts: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    for start in range(0, len(raw), 4_000):
        chunk = raw[start : start + 4_000]
        decoded = decode_frames(chunk)
        parts[T.BRONZE.name].append(bronze_table(chunk))
        parts[T.TRADES.name].append(decoded.trades)
        parts[T.TICKERS.name].append(decoded.tickers)
    for name, spec in TABLES.items():
        rows = pa.concat_tables(parts[name] * copies)
        path = str(folder / name)
        for start in range(0, rows.num_rows, APPEND_ROWS):
            write_deltalake(
                path,
                rows.slice(start, APPEND_ROWS),
                mode="append",
                partition_by=list(spec.partition_by),
                writer_properties=compact_properties(spec),
            )
        DeltaTable(path).optimize.compact(
            target_size=2 * MiB, max_concurrent_tasks=1, writer_properties=compact_properties(spec)
        )


def child(engine: str, name: str, source: Path, work: Path, target_mb: int) -> dict[str, Any]:
    """One compaction in this (fresh) process; its memory rise and seconds."""
    spec = TABLES[name]
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    dt = DeltaTable(str(work))
    files = len(dt.file_uris())
    time.sleep(0.2)
    watch = PeakAnon()
    before = watch.peak
    watch.start()
    started = time.perf_counter()
    if engine == "stream":
        result = compact_partition(
            dt, str(work), [], target_mb * MiB, compact_group_rows(spec), WRITERS_CHECKPOINT
        )
    else:
        result = dt.optimize.compact(
            target_size=target_mb * MiB,
            max_concurrent_tasks=1,
            writer_properties=compact_properties(spec),
            post_commithook_properties=WRITERS_CHECKPOINT,
        )
    seconds = time.perf_counter() - started
    time.sleep(0.05)
    watch.running = False
    watch.join()
    return {
        "rise_mb": round(watch.peak - before, 1),
        "kept_mb": round(anon_mb() - before, 1),
        "seconds": round(seconds, 3),
        "files": f"{files} -> {files - result['numFilesRemoved'] + result['numFilesAdded']}",
        "input_mb": round(sum(p.stat().st_size for p in source.rglob("*.parquet")) / MiB, 1),
    }


def _spawn(engine: str, name: str, source: Path, work: Path, target_mb: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.compaction_memory", "--child", engine, name,
           str(source), str(work), str(target_mb)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line.removeprefix("RESULT ")))
    raise RuntimeError(f"no result from {cmd}:\n{out.stdout}\n{out.stderr}")


def main(trades: int, copies: int, targets: list[int], repeat: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compaction-memory-") as tmp:
        folder = Path(tmp)
        build(folder, recording(folder, trades), trades, copies)
        for _ in range(repeat):
            for name in TABLES:
                for target in targets:
                    for engine in ENGINES:
                        key = f"{name}|{target}|{engine}"
                        run = _spawn(engine, name, folder / name, folder / "work", target)
                        runs.setdefault(key, []).append(run)
    return {
        "benchmark": "compaction_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": f"python -m bench.compaction_memory --trades {trades} --copies {copies}"
        f" --targets {','.join(map(str, targets))} --repeat {repeat}",
        "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| table | target | engine | files | rise of anonymous memory (each run) | median |"
        " kept after | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, runs in result["runs"].items():
        name, target, engine = key.split("|")
        rises = " / ".join(str(r["rise_mb"]) for r in runs)
        median = round(statistics.median(r["rise_mb"] for r in runs), 1)
        kept = " / ".join(str(r["kept_mb"]) for r in runs)
        secs = " / ".join(str(r["seconds"]) for r in runs)
        rows.append(
            f"| {name} ({runs[0]['input_mb']} MB) | {target} MB | {engine} | {runs[0]['files']}"
            f" | {rises} MB | {median} MB | {kept} MB | {secs} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        engine, name, source, work, target = sys.argv[2:7]
        result = child(engine, name, Path(source), Path(work), int(target))
        print("RESULT " + json.dumps(result))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=300_000)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--targets", default="16,64")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    targets = [int(t) for t in args.targets.split(",") if t.strip()]
    out = main(args.trades, args.copies, targets, args.repeat)
    print(markdown(out))
    print("RESULT " + json.dumps(out))
