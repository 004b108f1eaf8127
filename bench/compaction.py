"""Compaction memory benchmark: how much does compacting raw frames add to a process's memory?

delta-rs's `optimize.compact` decodes a whole row group of each file it reads at a time, so its
peak follows the row groups of the files it merges. Each run builds a table of raw frames
(bronze's schema; a simulated recording's frames, a match and a ticker per trade) from
`--files` appends of `--rows` frames, written with the given rows per row group, then compacts
it into one file with 1,024-row groups, as `sentinel up` does in the background. Measured:
the rise of the process's anonymous memory (RssAnon, sampled every 5 ms) over what it held
before. The baseline is one row group per appended file (what the writer did before 2026-12-04).

    python -m bench.compaction [--files 16] [--rows 18000] [--repeat 3] [--sweep 4,16,48]

`--sweep` adds how the rise grows with the bytes one bin merges (the target size bounds a bin).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crypto_sentinel import native

native.configure()  # as `sentinel up`: deltalake's jemalloc and Arrow's pool set before loading

from deltalake import DeltaTable, WriterProperties, write_deltalake  # noqa: E402

from bench.common import machine, recording  # noqa: E402
from crypto_sentinel.lake import tables as T  # noqa: E402
from crypto_sentinel.lake.maintenance.policy import RAW_PROPERTIES  # noqa: E402
from crypto_sentinel.lake.rows import bronze_table  # noqa: E402
from crypto_sentinel.model import RawFrame  # noqa: E402
from crypto_sentinel.sources.replay import _frame_texts  # noqa: E402

GROUPS = {"one group per file (baseline)": None, "4,096-row groups": 4096, "1,024-row groups": 1024}


def anon_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakAnon(threading.Thread):
    """The highest RssAnon of this process while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = anon_mb()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, anon_mb())
            time.sleep(0.005)


def frames(path: Path, n: int) -> list[RawFrame]:
    """The first `n` frames of a simulated recording (match and ticker per trade, as
    `sentinel up` stores them)."""
    out: list[RawFrame] = []
    with path.open("rb") as fh:
        while len(out) < n and (lines := fh.readlines(1 << 18)):
            for ts, text in _frame_texts(lines):
                recv_ns = int((ts or 0) * 1e9)
                out.append(RawFrame("simulator", "bench-conn", len(out), recv_ns, text))
    return out[:n]


def run_once(
    path: Path,
    raw: list[RawFrame],
    files: int,
    rows: int,
    group_rows: int | None,
    target: int = 16 << 20,
) -> dict[str, float]:
    shutil.rmtree(path, ignore_errors=True)
    props = WriterProperties(compression="ZSTD", max_row_group_size=group_rows or 1 << 30)
    for k in range(files):
        write_deltalake(
            str(path),
            bronze_table(raw[k * rows : (k + 1) * rows]),
            mode="append",
            partition_by=list(T.BRONZE.partition_by),
            writer_properties=props,
        )
    time.sleep(0.3)  # let the allocators return what the appends freed
    table = DeltaTable(str(path))
    watch = PeakAnon()
    before = watch.peak
    watch.start()
    started = time.perf_counter()
    result = table.optimize.compact(
        target_size=target, max_concurrent_tasks=1, writer_properties=RAW_PROPERTIES
    )
    seconds = time.perf_counter() - started
    time.sleep(0.05)
    watch.running = False
    watch.join()
    if result["numFilesRemoved"] != files:
        raise RuntimeError(f"compaction merged {result['numFilesRemoved']} of {files} files")
    merged = json.loads(result["filesRemoved"])["totalSize"] / (1 << 20)  # a JSON text
    return {
        "rise_mb": round(watch.peak - before, 1),
        "seconds": round(seconds, 3),
        "merged_mb": round(merged, 1),
    }


def merge_sweep(
    tmp: Path, raw: list[RawFrame], counts: list[int], rows: int, repeat: int
) -> dict[str, Any]:
    """The rise against the bytes one bin merges: `count` files of `rows` frames (1,024-row
    groups) compacted into a single file (the target is larger than all of them)."""
    runs: dict[str, list[dict[str, float]]] = {str(n): [] for n in counts}
    for _ in range(repeat):
        for n in counts:
            runs[str(n)].append(run_once(tmp / "s", raw, n, rows, 1024, target=1 << 30))
    return {
        n: {
            "merged_mb": rs[0]["merged_mb"],
            "rise_mb": [r["rise_mb"] for r in rs],
            "median_rise_mb": statistics.median(r["rise_mb"] for r in rs),
        }
        for n, rs in runs.items()
    }


def main(files: int, rows: int, repeat: int, sweep: list[int]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in GROUPS}
    most = max([files, *sweep])
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as tmp:
        raw = frames(recording(Path(tmp), most * rows // 2 + 1), most * rows)
        run_once(Path(tmp) / "warm", raw, 2, 1000, None)  # the first compaction builds its runtime
        for _ in range(repeat):  # interleaved: the machine is shared
            for name, group_rows in GROUPS.items():
                runs[name].append(run_once(Path(tmp) / "t", raw, files, rows, group_rows))
        swept = merge_sweep(Path(tmp), raw, sweep, rows, repeat) if sweep else {}
    counts = ",".join(str(n) for n in sweep)
    return {
        "benchmark": "compaction",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": f"python -m bench.compaction --files {files} --rows {rows} --repeat {repeat}"
        + (f" --sweep {counts}" if sweep else ""),
        "sweep": swept,
        "runs": {
            name: {
                "rise_mb": [r["rise_mb"] for r in rs],
                "median_rise_mb": statistics.median(r["rise_mb"] for r in rs),
                "seconds": [r["seconds"] for r in rs],
            }
            for name, rs in runs.items()
        },
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| appended files written with | rise of anonymous memory (each run) | median | "
        "compaction seconds |",
        "|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        rises = " / ".join(str(v) for v in r["rise_mb"])
        secs = " / ".join(str(v) for v in r["seconds"])
        rows.append(f"| {name} | {rises} MB | {r['median_rise_mb']} MB | {secs} |")
    if result.get("sweep"):
        rows += ["", "| files merged into one | MB merged | rise (each run) | median |",
                 "|---|---|---|---|"]  # fmt: skip
        for n, r in result["sweep"].items():
            rises = " / ".join(str(v) for v in r["rise_mb"])
            rows.append(f"| {n} | {r['merged_mb']} | {rises} MB | {r['median_rise_mb']} MB |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rows", type=int, default=18_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--sweep", default="", help="also merge this many files into one, e.g. 4,16,48"
    )
    args = parser.parse_args()
    sweep = [int(n) for n in args.sweep.split(",") if n.strip()]
    out = main(args.files, args.rows, args.repeat, sweep)
    print(markdown(out))
    print("RESULT " + json.dumps(out))
