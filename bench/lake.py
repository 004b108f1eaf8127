"""Lake benchmark: recent reads straight from the lake at 1 M vs N trade rows, and storage.

1. Reads. Two synthetic silver.trades + gold.candles_1m lakes are written with pyarrow (not
   through the pipeline, so 50 M rows take minutes): one day partition per 1 M trades, each
   day in ~16 MB files as compaction leaves them and checkpointed as a long-running writer
   leaves them, plus today's partition as the stream leaves it between maintenance passes
   (`TAIL_COMMITS` micro-batch commits of `TAIL_ROWS` trades). With a warm `LakeReader` per
   lake (as the API holds one), the two lakes taking turns call by call (the box is shared,
   so load falls on both sizes alike):
   - latest 50 trades (`LakeReader.newest_trades`, what `/latest` calls: file statistics);
   - one hour of 1-minute candles (`LakeReader.candle_buckets`, what the candles route
     calls: date partition + stats pruning);
   - baseline, same lake, same run: the seed's `/latest` (bench/seed.py, the same one the
     API benchmark serves);
   then the same reads after compacting today's partition, and the cold open (new reader).
2. Storage. N_STORAGE simulated trades (`write_recording`, 20 trades/s of simulated time)
   go through the real pipeline (replay at max speed); `sentinel maintain report` numbers
   before and after compaction: bytes per trade, and the same rows as CSV / JSON lines.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, WriterProperties, write_deltalake

from bench.seed import seed_latest
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import Maintainer, Policy, storage_report
from crypto_sentinel.lake.query import LakeReader

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
EXCHANGE = "coinbase"
ROWS_PER_DAY = 1_000_000
FILE_BYTES = 16 << 20  # size of the files a past day is written in (a compaction tier)
TAIL_COMMITS = 200  # micro-batches in today's partition, not yet compacted
TAIL_ROWS = 20  # trades per micro-batch (250 ms at 80 trades/s)
SMALL = 1_000_000
N_STORAGE = 1_000_000
REPEATS = 30
SEED_REPEATS = 10
PROPS = WriterProperties(compression="ZSTD", max_row_group_size=131_072)


# --- synthetic lakes -------------------------------------------------------------------------


def _mod(values: pa.Array, n: int) -> pa.Array:
    return pc.subtract(values, pc.multiply(pc.divide(values, n), n))


def _decimal(values: pa.Array, places: int) -> pa.Array:
    """Floats rounded to `places` as exact decimals (no binary noise in the last digits)."""
    rounded = pc.cast(pc.round(values, places), pa.decimal128(20, places), safe=False)
    return pc.cast(rounded, T.PRICE)


def synth_trades(first_id: int, n: int, start: datetime, span: timedelta) -> pa.Table:
    """`n` trades evenly spread over `span` from `start`, random prices/sizes/sides."""
    idx = pa.array(range(n), pa.int64())
    step_us = max(int(span / timedelta(microseconds=1)) // max(n, 1), 1)
    start_us = int(start.timestamp() * 1_000_000)
    times = pc.add(pc.multiply(idx, step_us), start_us).cast(pa.int64()).cast(T.UTC_TS)
    recv = pc.add(pc.multiply(idx, step_us), start_us + 1_000).cast(pa.int64()).cast(T.UTC_TS)
    product = pc.take(pa.array(PRODUCTS), _mod(idx, len(PRODUCTS)))
    base = pc.take(pa.array([60_000.0, 3_000.0, 150.0]), _mod(idx, len(PRODUCTS)))
    price = pc.multiply(base, pc.add(pc.multiply(pc.random(n), 0.02), 0.99))
    pool = pa.array([f"{i:08x}-1f2e-4d3c-8b9a-{(i * 7919) % 16**12:012x}" for i in range(4096)])
    pick = pc.cast(pc.floor(pc.multiply(pc.random(n), 4095)), pa.int32())
    pick2 = pc.cast(pc.floor(pc.multiply(pc.random(n), 4095)), pa.int32())
    return pa.table(
        {
            "exchange": pa.array([EXCHANGE] * n, pa.string()),
            "product_id": product,
            "trade_id": pc.add(pc.divide(idx, len(PRODUCTS)), first_id),
            "price": _decimal(price, 2),
            "size": _decimal(pc.add(pc.multiply(pc.random(n), 0.5), 1e-6), 8),
            "side": pc.if_else(pc.less(pc.random(n), 0.5), "buy", "sell"),
            "time": times,
            "recv_time": recv,
            "sequence": pc.add(idx, first_id * 3),
            "maker_order_id": pc.take(pool, pick),
            "taker_order_id": pc.take(pool, pick2),
            "conn_id": pa.array(["bench"] * n, pa.string()),
            "date": pc.cast(times, pa.date32()),
            "venue_symbol": pa.nulls(n, pa.string()),  # the venue's own name, where it differs
        },
        schema=T.TRADES.schema,
    )


def synth_candles(day: date, minutes: int) -> pa.Table:
    rows = []
    start = datetime.combine(day, datetime.min.time(), UTC)
    for product, base in zip(PRODUCTS, (60_000, 3_000, 150), strict=True):
        for m in range(minutes):
            t = start + timedelta(minutes=m)
            rows.append(
                {
                    "exchange": EXCHANGE,
                    "product_id": product,
                    "start": t,
                    "open": base,
                    "high": base + 1,
                    "low": base - 1,
                    "close": base,
                    "volume": 2,
                    "buy_volume": 1,
                    "sell_volume": 1,
                    "quote_volume": 2 * base,
                    "vwap": base,
                    "trade_count": 10,
                    "first_trade_id": m * 10,
                    "last_trade_id": m * 10 + 9,
                    "first_trade_time": t,
                    "last_trade_time": t + timedelta(seconds=59),
                    "date": day,
                }
            )
    return pa.Table.from_pylist(rows, schema=T.CANDLES_1M.schema)


def build_lake(lake: Path, rows: int, say: Any) -> dict[str, Any]:
    """Past days as compaction leaves them, today as the stream leaves it (built afresh: the
    benchmark compacts it)."""
    now = datetime.now(UTC)
    today = now.date()
    days = max(1, -(-(rows - TAIL_COMMITS * TAIL_ROWS) // ROWS_PER_DAY))
    shutil.rmtree(lake, ignore_errors=True)
    tables = T.ensure_tables(lake)
    trades, candles = tables[T.TRADES.name], tables[T.CANDLES_1M.name]
    started = time.perf_counter()
    left, first_id = rows - TAIL_COMMITS * TAIL_ROWS, 1
    for k in range(days, 0, -1):
        day = today - timedelta(days=k)
        n = min(ROWS_PER_DAY, left)
        start = datetime.combine(day, datetime.min.time(), UTC)
        data = synth_trades(first_id, n, start, timedelta(days=1))
        write_deltalake(trades, data, mode="append", partition_by=["date", "exchange"],
                        writer_properties=PROPS, target_file_size=FILE_BYTES)  # fmt: skip
        write_deltalake(candles, synth_candles(day, 1440), mode="append", partition_by=["date"],
                        writer_properties=PROPS)  # fmt: skip
        left -= n
        first_id += n
        say(f"  {lake.name}: {day} {n:,} trades ({time.perf_counter() - started:.0f} s)")
    for dt in (trades, candles):  # a long-running writer has checkpointed the history
        dt.create_checkpoint()
    # today: the stream's micro-batches, the newest TAIL_COMMITS * 250 ms before now
    tail_start = now - timedelta(seconds=TAIL_COMMITS * 0.25)
    if tail_start.date() != today:
        tail_start = datetime.combine(today, datetime.min.time(), UTC)
    for i in range(TAIL_COMMITS):
        start = tail_start + timedelta(seconds=0.25 * i)
        data = synth_trades(first_id, TAIL_ROWS, start, timedelta(seconds=0.25))
        write_deltalake(trades, data, mode="append", partition_by=["date", "exchange"],
                        writer_properties=PROPS)  # fmt: skip
        first_id += TAIL_ROWS
    minutes = now.hour * 60 + now.minute + 1
    write_deltalake(candles, synth_candles(today, minutes), mode="append", partition_by=["date"],
                    writer_properties=PROPS)  # fmt: skip
    return {"rows": rows, "days": days, "seconds": round(time.perf_counter() - started, 1)}


# --- reads -----------------------------------------------------------------------------------


def summary(times_ms: list[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "n": len(ordered),
    }


def file_counts(lake: Path) -> dict[str, int]:
    on_disk = sum(
        1
        for folder, _dirs, names in os.walk(lake)
        for n in names
        if n.endswith(".parquet") and "_delta_log" not in folder
    )
    trades = DeltaTable(str(T.TRADES.path(lake)))
    today = datetime.now(UTC).date()
    return {
        "live_files": len(trades.file_uris()),
        "parquet_files_on_disk": on_disk,
        "today_files": len(trades.file_uris(file_pruning_predicate=[("date", "=", today)])),
    }


def measure_reads(lakes: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Every read on every lake, the lakes taking turns call by call, so the load of the
    shared box falls on both sizes alike."""
    out: dict[str, dict[str, Any]] = {name: file_counts(path) for name, path in lakes.items()}
    calls: dict[str, dict[str, Any]] = {}
    for name, path in lakes.items():
        started = time.perf_counter()
        reader = LakeReader(path)
        rows = reader.newest_trades(EXCHANGE, None, 50)
        out[name]["cold_open_and_latest_ms"] = round((time.perf_counter() - started) * 1000, 1)
        end = rows[0]["time"].replace(second=0, microsecond=0) + timedelta(minutes=1)
        calls[name] = {  # what the API's `/latest` and candles routes call on the lake
            "latest50": lambda r=reader: r.newest_trades(EXCHANGE, None, 50),
            "candles_1h": lambda r=reader, e=end: r.candle_buckets(
                EXCHANGE, "BTC-USD", e - timedelta(hours=1), e, 60
            ),
            "seed_latest": lambda p=path: seed_latest(p),
        }
    names = list(lakes)
    for metric in calls[names[0]]:
        repeats = SEED_REPEATS if metric == "seed_latest" else REPEATS
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(repeats):
            for name in names if i % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                got = calls[name][metric]()
                samples[name].append((time.perf_counter() - started) * 1000)
                out[name][metric] = {"rows": len(got)}
        for name in names:
            out[name][metric] = {**summary(samples[name]), "rows": out[name][metric]["rows"]}
    return out


def read_benchmark(lakes: dict[str, Path], say: Any) -> dict[str, dict[str, Any]]:
    before = measure_reads(lakes)
    seconds = {}
    for name, lake in lakes.items():
        say(f"  {lake.name}: compacting every partition to one file")
        started = time.perf_counter()
        Maintainer(lake, Policy()).compact(T.TRADES, max_files=1)
        seconds[name] = round(time.perf_counter() - started, 2)
    after = measure_reads(lakes)
    return {
        name: {
            "streaming_tail": before[name],
            "after_compaction": after[name],
            "compact_seconds": seconds[name],
        }
        for name in lakes
    }


# --- storage ---------------------------------------------------------------------------------


def storage_benchmark(workdir: Path, trades: int, port: int, say: Any) -> dict[str, Any]:
    from crypto_sentinel.config import load_settings
    from crypto_sentinel.runtime import Pipeline
    from crypto_sentinel.simulator import write_recording

    recording = workdir / f"sim-{trades}-20ps.ndjson"
    if not recording.exists():
        say(f"storage: writing a recording of {trades:,} simulated trades")
        write_recording(recording, PRODUCTS, trades, seed=11, rate=20.0)
    lake = workdir / "storage-lake"
    shutil.rmtree(lake, ignore_errors=True)
    settings = load_settings(
        source=f"replay:{recording}",
        replay_exchange="simulator",
        lake_dir=lake,
        port=port,
        log_level="WARNING",
    )
    say("storage: replaying through the pipeline")
    t = time.perf_counter()
    asyncio.run(Pipeline(settings).run(with_api=False, install_signals=False))
    pipeline_s = round(time.perf_counter() - t, 1)
    say("storage: report, compact, report")
    streamed = storage_report(lake)
    maintainer = Maintainer(lake, Policy())
    t = time.perf_counter()
    for spec in T.ALL_TABLES:
        maintainer.compact(spec, max_files=1)
        maintainer.vacuum(spec, safety_hours=0)
    compact_s = round(time.perf_counter() - t, 2)
    compacted = storage_report(lake)
    return {
        "trades_columns_bytes_per_trade": column_bytes(lake, T.TRADES, trades),
        "trades": trades,
        "pipeline_seconds": pipeline_s,
        "compact_seconds": compact_s,
        "streamed": streamed,
        "compacted": compacted,
    }


def column_bytes(lake: Path, spec: T.TableSpec, rows: int) -> dict[str, float]:
    """Compressed bytes per row of each column (from the Parquet footers of the live files)."""
    sizes: dict[str, int] = {}
    for uri in DeltaTable(str(spec.path(lake))).file_uris():
        meta = pq.ParquetFile(uri).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                col = group.column(c)
                sizes[col.path_in_schema] = (
                    sizes.get(col.path_in_schema, 0) + col.total_compressed_size
                )
    ordered = sorted(sizes.items(), key=lambda kv: -kv[1])
    return {name: round(size / rows, 2) for name, size in ordered} if rows else {}


# --- entry points ----------------------------------------------------------------------------


def main(trades: int, workdir: Path, port: int) -> dict[str, Any]:
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workdir.mkdir(parents=True, exist_ok=True)
    small_rows, large_rows = min(SMALL, trades), trades
    result: dict[str, Any] = {
        "benchmark": "lake",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start",
        "command": f"sentinel bench lake --trades {trades} --workdir {workdir}",
        "layout": {
            "rows_per_day": ROWS_PER_DAY,
            "file_bytes": FILE_BYTES,
            "tail_commits": TAIL_COMMITS,
            "tail_rows": TAIL_ROWS,
        },
    }
    sizes = {"small": small_rows, "large": large_rows}
    lakes = {name: workdir / f"synth-{rows}" for name, rows in sizes.items()}
    builds = {}
    for name, lake in lakes.items():
        say(f"reads: building {lake} ({sizes[name]:,} trades)")
        builds[name] = build_lake(lake, sizes[name], say)
    say("reads: measuring both lakes, call by call in turn")
    measured = read_benchmark(lakes, say)
    reads = {name: {"rows": sizes[name], "build": builds[name], **measured[name]} for name in lakes}
    result["reads"] = reads
    result["storage"] = storage_benchmark(workdir, min(N_STORAGE, trades), port, say)
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    return result


def _ratio(large: float, small: float) -> str:
    return f"{large / small:.2f}x" if small else "—"


def markdown(result: dict[str, Any]) -> str:
    small, large = result["reads"]["small"], result["reads"]["large"]
    lines = [
        f"### Lake: recent reads at {small['rows']:,} vs {large['rows']:,} trades, storage"
        f" — {result['date']}",
        f"Machine: {result['machine']}; load average {result['load_average_end']} at the end"
        f" (shared box). Command: `{result['command']}`.",
        "",
        f"Synthetic lakes (pyarrow, not the pipeline): one date partition per"
        f" {result['layout']['rows_per_day']:,} trades in ~16 MB files, plus today's partition"
        f" as the stream leaves it: {result['layout']['tail_commits']} micro-batch files of"
        f" {result['layout']['tail_rows']} trades. Warm `LakeReader`, the two lakes taking turns"
        " call by call; median (p95 in brackets). Seed baseline: list every Parquet file of the"
        " lake, read the newest trades file with pyarrow.parquet (the seed used pandas, which is"
        " not installed).",
        "",
        f"| read | {small['rows']:,} rows | {large['rows']:,} rows | ratio |",
        "|---|---|---|---|",
    ]
    for phase, label in (
        ("streaming_tail", "today uncompacted"),
        ("after_compaction", "compacted"),
    ):
        s, g = small[phase], large[phase]
        for key, name in (
            ("latest50", "latest 50 trades (`newest_trades`, as `/latest`; stats pruning)"),
            ("candles_1h", "1 h of 1-minute candles (`candle_buckets`, as the candles route)"),
            ("seed_latest", "seed /latest: list all files, read newest"),
        ):
            if key not in s or key not in g:
                continue
            lines.append(
                f"| {name}, {label} | {s[key]['median_ms']} ms ({s[key]['p95_ms']}),"
                f" {s[key]['rows']} rows | {g[key]['median_ms']} ms ({g[key]['p95_ms']}),"
                f" {g[key]['rows']} rows | {_ratio(g[key]['median_ms'], s[key]['median_ms'])} |"
            )
        lines.append(
            f"| cold: open reader + latest 50, {label} | {s['cold_open_and_latest_ms']} ms"
            f" | {g['cold_open_and_latest_ms']} ms"
            f" | {_ratio(g['cold_open_and_latest_ms'], s['cold_open_and_latest_ms'])} |"
        )
        lines.append(
            f"| live files / Parquet files on disk, {label} | {s['live_files']} /"
            f" {s['parquet_files_on_disk']} | {g['live_files']} / {g['parquet_files_on_disk']}"
            " | |"
        )
    st = result["storage"]
    lines += [
        "",
        f"Storage: {st['trades']:,} simulated trades through the real pipeline (replay at max"
        f" speed, {st['pipeline_seconds']} s), `sentinel maintain report` before and after"
        f" compaction ({st['compact_seconds']} s). Text sizes: same rows, decimals as exchange"
        " strings, ISO times.",
        "",
        "| lake | table | rows | files | MB | bytes/trade | CSV MB | vs CSV | JSONL MB"
        " | vs JSONL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in ("streamed", "compacted"):
        report = st[phase]
        for s in [*report["tables"], {"table": "whole lake", **report["total"]}]:
            if not s["rows"]:
                continue
            lines.append(
                f"| {phase} | {s['table']} | {s['rows']:,} | {s['files']} |"
                f" {s['bytes'] / 1e6:.1f} | {s['bytes_per_trade']} | {s['csv_bytes'] / 1e6:.1f}"
                f" | {_pct(s['vs_csv'])} | {s['jsonl_bytes'] / 1e6:.1f} | {_pct(s['vs_jsonl'])} |"
            )
    columns = st.get("trades_columns_bytes_per_trade", {})
    if columns:
        top = ", ".join(f"{name} {size}" for name, size in list(columns.items())[:8])
        lines += [
            "",
            f"silver.trades, compressed bytes per trade by column (largest first): {top}.",
        ]
    return "\n".join([*lines, ""])


def _pct(v: float | None) -> str:
    return "—" if v is None else f"-{v * 100:.0f} %" if v >= 0 else f"+{-v * 100:.0f} %"
