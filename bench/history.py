"""History benchmark: `sentinel history` throughput, and `Lake.trades` into pandas.

1. Fill. The simulator (in a thread of this process) is seeded with TRADES trades over one
   day across three products and serves them over its Coinbase REST API; `sentinel history`
   (a subprocess, as a user runs it) pages them all into a new lake at Coinbase's documented
   public limit (10 requests/s, 1,000 trades a page). Throughput is reported as a fraction of
   that ceiling, 10,000 trades/s; the lake is then checked to hold exactly the seeded set.
2. Read. The day's trades into pandas through `Lake.trades` (every product, sorted), beside
   the baseline: the same Parquet files (the Delta snapshot's) read with plain
   `pyarrow.dataset` and converted to pandas, in the same run, alternating, median of REPEATS.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from bench.common import machine
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.catalog import Lake
from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.simulator.history import seed_history

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
DAY = datetime(2026, 11, 1, tzinfo=UTC)
RATE = 10.0  # Coinbase public REST: requests/s
PAGE = 1000  # trades per page
REPEATS = 5


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _serve(server: SimulatorServer) -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="simulator", daemon=True).start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=60)
    return loop


def fill(workdir: Path, trades: int) -> tuple[dict[str, Any], Path]:
    lake = workdir / "history-lake"
    shutil.rmtree(lake, ignore_errors=True)
    server = SimulatorServer(PRODUCTS, rate=1, port=0, max_trades=0, start_trade_id=1)
    t0 = time.monotonic()
    seeded = seed_history(server.market, trades, DAY, DAY + timedelta(days=1))
    _say(f"fill: seeded {len(seeded):,} trades in {time.monotonic() - t0:.1f} s")
    loop = _serve(server)
    try:
        cmd = [sys.executable, "-m", "crypto_sentinel.cli", "history", "--exchange", "simulator",
               "--since", DAY.isoformat(), "--until", (DAY + timedelta(days=1)).isoformat(),
               "--rest-url", server.rest_url, "--rate", str(RATE), "--quiet",
               "--lake", str(lake)]  # fmt: skip
        for product in PRODUCTS:
            cmd += ["--product", product]
        env = {**os.environ, "SENTINEL_LOG_LEVEL": "WARNING"}
        started = time.monotonic()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
    if done.returncode != 0:
        raise RuntimeError(f"sentinel history failed: {done.stderr[-2000:]}")
    _say(done.stdout)
    found = re.search(r"(\d+) trades, (\d+) requests in ([\d.]+) s", done.stdout)
    assert found is not None, done.stdout
    stored, requests, seconds = int(found[1]), int(found[2]), float(found[3])
    rows = DeltaTable(str(T.TRADES.path(lake))).to_pyarrow_table(columns=["trade_id"]).num_rows
    rate = stored / seconds
    return {
        "trades": trades,
        "stored_rows": rows,
        "exact": rows == trades,
        "requests": requests,
        "seconds": round(seconds, 1),
        "wall_seconds": round(wall, 1),
        "trades_per_second": round(rate),
        "ceiling_trades_per_second": int(RATE * PAGE),
        "fraction_of_ceiling": round(rate / (RATE * PAGE), 3),
    }, lake


def read(lake_path: Path) -> dict[str, Any]:
    lake = Lake(lake_path)
    end = DAY + timedelta(days=1)

    def ours() -> int:
        return len(lake.trades(None, start=DAY, end=end).to_pandas())

    def baseline() -> int:
        files = DeltaTable(str(T.TRADES.path(lake_path))).file_uris()
        data = ds.dataset(files, format="parquet", partitioning=ds.partitioning(
            pa.schema([("date", pa.date32()), ("exchange", pa.string())]), flavor="hive"),
            partition_base_dir=str(T.TRADES.path(lake_path)))  # fmt: skip
        return len(data.to_table().to_pandas())

    times: dict[str, list[float]] = {"lake_trades": [], "pyarrow_dataset": []}
    rows = {}
    for _ in range(REPEATS):
        for name, fn in (("lake_trades", ours), ("pyarrow_dataset", baseline)):
            t = time.perf_counter()
            rows[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {
        name: {"rows": rows[name], "median_seconds": round(statistics.median(v), 3),
               "rows_per_second": round(rows[name] / statistics.median(v))}
        for name, v in times.items()
    }  # fmt: skip


def main(trades: int, workdir: Path, port: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "history",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": f"sentinel bench history --trades {trades} --workdir {workdir}",
    }
    result["fill"], lake = fill(workdir, trades)
    _say("read: Lake.trades vs pyarrow.dataset, into pandas")
    result["read"] = read(lake)
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    f, r = result["fill"], result["read"]
    ours, base = r["lake_trades"], r["pyarrow_dataset"]
    return "\n".join([
        f"### History: REST fill and analyst reads — {result['date']}",
        f"Machine: {result['machine']}; load average {result['load_average_end']} at the end"
        f" (shared box). Command: `{result['command']}`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `sentinel history`, {f['trades']:,} trades (3 products, one day) | {f['seconds']} s,"
        f" {f['requests']} requests, {f['trades_per_second']:,} trades/s |",
        f"| ceiling: 10 req/s x 1,000 trades | {f['ceiling_trades_per_second']:,} trades/s;"
        f" reached {f['fraction_of_ceiling']:.0%} |",
        f"| lake holds exactly the seeded set | {f['exact']} ({f['stored_rows']:,} rows) |",
        f"| `Lake.trades` -> pandas, one day | {ours['median_seconds']} s"
        f" ({ours['rows_per_second']:,} rows/s) |",
        f"| baseline: `pyarrow.dataset` -> pandas, same files | {base['median_seconds']} s"
        f" ({base['rows_per_second']:,} rows/s) |",
    ])  # fmt: skip
