"""Memory benchmark (`sentinel bench memory`): does `sentinel up` stay small and flat?

`sentinel up` (API on, in its own child) takes a live simulator feed (its own child) at a
steady trade rate for some minutes while API clients poll a mix of routes, a few requests per
second each (keep-alive HTTP/1.1, one request in flight per client: bounded). The pipeline's
RSS is sampled every second from /proc; the report gives min / median / max, the steady-state
slope (least squares over the last 80 % of the run: growth shows as MB per minute) and the
curve (CSV next to the JSON result, and a sparkline in the markdown). Baseline, same
invocation: the import floor, a process that imports what `sentinel up` runs on and does
nothing else.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ingest_live
from bench.api import Connection
from bench.common import (
    delta_rows,
    discard,
    finish,
    health,
    kill_all,
    machine,
    percentiles,
    rss_mb,
    rss_parts_mb,
    sentinel_env,
    spawn,
    wait_ready,
    watch,
)
from crypto_sentinel.lake import tables as T

ROUTES = (
    "/latest",
    "/v1/products/BTC-USD/trades",
    "/v1/products/BTC-USD/candles",
    "/v1/products/BTC-USD/ticker",
)
CLIENT_RATE = 2.0  # requests/s per client
STEADY_FROM = 0.2  # the steady state is the last 80 % of the run
TARGET_MB = 250

#: The baseline child: import what `sentinel up` loads at start, as it does (pandas and NumPy
#: kept out), run nothing. (DuckDB is not in it: `sentinel up` loads it only when a query needs
#: it, so a floor with it, as before 2026-12-04, could sit above a running `sentinel up`.)
FLOOR = (
    "from crypto_sentinel.eventloop import keep_analysis_libraries_out\n"
    "keep_analysis_libraries_out()\n"
    "import crypto_sentinel.cli, crypto_sentinel.runtime"
)


def main(
    trades: int, workdir: Path, port: int, minutes: float = 10.0, rate: float = 2000.0,
    clients: int = 50,
) -> dict[str, Any]:  # fmt: skip
    """The feed runs `minutes` at `rate` trades/s (the CLI's `trades` is not used)."""
    workdir = workdir.resolve()
    run_dir = workdir / f"memory-{int(time.time())}"
    logs = run_dir / "logs"
    started = datetime.now(UTC)
    print("memory: import floor ...", flush=True)
    floor = spawn(["-c", FLOOR], logs / "floor.log")
    floor_rss = finish(floor, grace=120, peak=watch(floor))
    seconds = minutes * 60
    trades = round(rate * seconds)
    silver = T.TRADES.path(run_dir / "lake")
    sim, sim_port = ingest_live.start_simulator(rate, trades, logs / "simulator.log")
    up = None
    try:
        env = sentinel_env(run_dir / "lake", run_dir / "data", port, SOURCE="simulator",
                           SIMULATOR_URL=f"ws://127.0.0.1:{sim_port}")  # fmt: skip
        up = spawn(["-m", "crypto_sentinel.cli", "up"], logs / "up.log", env)
        rss = watch(up)
        wait_ready(port, up)
        print(f"memory: {minutes:g} min at {rate:g} trades/s, {clients} API clients ...",
              flush=True)  # fmt: skip
        curve, parts, load = asyncio.run(measure(port, up.pid, seconds, clients))
        status = health(port)
        deadline = time.monotonic() + 30  # the feed started before the clients: nearly done
        while delta_rows(silver) < trades and time.monotonic() < deadline:
            time.sleep(0.5)
        peak = finish(up, peak=rss)
        sent = ingest_live.result_of_simulator(sim, logs / "simulator.log")
    finally:
        kill_all(up, sim)
    stamp = started.isoformat(timespec="seconds")
    csv = workdir / f"memory-{stamp[:19].replace(':', '')}-rss.csv"
    csv.write_text(
        "seconds,rss_mb,anon_mb,file_mb\n"
        + "".join(f"{t},{mb},{a},{f}\n" for (t, mb), (a, f) in zip(curve, parts, strict=True))
    )
    values = [mb for _, mb in curve]
    anon = [a for a, _ in parts]
    files = [f for _, f in parts]
    steady = [(t, mb) for t, mb in curve if t >= STEADY_FROM * seconds]
    result = {
        "benchmark": "memory",
        "date": stamp,
        "machine": machine(),
        "command": f"sentinel bench memory --minutes {minutes:g} --rate {rate:g} "
        f"--clients {clients}",
        "minutes": minutes,
        "rate": rate,
        "clients": clients,
        "client_rate": CLIENT_RATE,
        "baseline": {
            "name": "import floor: cli + runtime imported as `up` does, nothing run",
            "peak_rss_mb": floor_rss,
        },
        "rss_mb": {
            "min": min(values, default=0.0),
            "median": round(statistics.median(values), 1) if values else 0.0,
            "max": max(values, default=0.0),
            "steady_min": min((mb for _, mb in steady), default=0.0),
            "steady_max": max((mb for _, mb in steady), default=0.0),
        },
        "steady_slope_mb_per_min": slope_per_minute(steady),
        "anon_mb": _spread(anon),
        "file_mb": _spread(files),
        "peak_rss_mb": max(peak, *values) if values else peak,
        "trades_sent": sent["emitted"],
        "trades_stored": delta_rows(silver),
        "reliability": status.get("reliability", {}),
        **load,
        "curve_file": str(csv),
        "curve": curve,
    }
    discard(run_dir / "lake", run_dir / "data")
    return result


async def measure(
    port: int, pid: int, seconds: float, clients: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], dict[str, Any]]:
    """RSS every second while `clients` clients poll; returns (curve, its (anonymous,
    file-backed) parts, request summary)."""
    curve: list[tuple[float, float]] = []
    parts: list[tuple[float, float]] = []
    latencies: dict[str, list[int]] = {route: [] for route in ROUTES}
    statuses: Counter[int] = Counter()
    errors = 0
    t0 = time.monotonic()
    end = t0 + seconds

    async def sample() -> None:
        tick = 0
        while (now := time.monotonic()) < end:
            curve.append((round(now - t0, 2), rss_mb(pid)))
            parts.append(rss_parts_mb(pid))
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick - time.monotonic()))

    async def client(i: int) -> None:
        nonlocal errors
        conn = Connection("127.0.0.1", port)
        due = t0 + i / clients / CLIENT_RATE  # clients spread over one period
        k = i
        while due < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            route = ROUTES[k % len(ROUTES)]
            k += 1
            started = time.perf_counter_ns()
            try:
                statuses[await asyncio.wait_for(conn.get(route), 10)] += 1
                latencies[route].append(time.perf_counter_ns() - started)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
                errors += 1
                conn.close()
                conn.writer = None
            due += 1 / CLIENT_RATE
        conn.close()

    await asyncio.gather(sample(), *(client(i) for i in range(clients)))
    load = {
        "requests": {route: percentiles(ns) for route, ns in latencies.items()},
        "statuses": {str(k): v for k, v in sorted(statuses.items())},  # status: count
        "request_errors": errors,
    }
    return curve, parts, load


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": 0.0, "median": 0.0, "max": 0.0}
    return {"min": min(values), "median": round(statistics.median(values), 1), "max": max(values)}


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return float("nan")
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return float("nan")
    return round(sum((t - mt) * (v - mv) for t, v in points) / var * 60, 3)


def sparkline(values: list[float], width: int = 60) -> str:
    """The curve in `width` characters (each the highest sample of its stretch)."""
    if not values:
        return ""
    blocks = "▁▂▃▄▅▆▇█"
    n = min(width, len(values))
    peaks = [max(values[i * len(values) // n : (i + 1) * len(values) // n]) for i in range(n)]
    lo, span = min(peaks), (max(peaks) - min(peaks)) or 1.0
    return "".join(blocks[min(7, int((v - lo) / span * 8))] for v in peaks)


def markdown(result: dict[str, Any]) -> str:
    rss, base = result["rss_mb"], result["baseline"]
    curve = result["curve"]
    values = [mb for _, mb in curve]
    tenths = _tenths(values)
    req = result["requests"]
    codes = ", ".join(f"{k}: {v:,}" for k, v in result["statuses"].items())
    total = sum(r["n"] for r in req.values())
    rows = [
        f"### Memory of `sentinel up`, {result['minutes']:g} min at {result['rate']:,.0f} "
        f"trades/s with {result['clients']} API clients — {result['date']}",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| {base['name']} (baseline), peak RSS | {base['peak_rss_mb']} MB | |",
        f"| RSS min / median / max (1 sample a second, {len(values)} samples) | {rss['min']} / "
        f"{rss['median']} / {rss['max']} MB | <= {TARGET_MB} MB |",
        f"| steady state (last 80 %): min / max, slope | {rss['steady_min']} / "
        f"{rss['steady_max']} MB, {result['steady_slope_mb_per_min']} MB/min | no growth |",
        f"| peak RSS (every 0.1 s, and the kernel's mark at exit) | {result['peak_rss_mb']} MB | |",
        f"| of it anonymous (own memory) min / median / max | {_mmm(result.get('anon_mb'))} | |",
        f"| of it file-backed (library pages) min / median / max | {_mmm(result.get('file_mb'))} "
        "| |",
        f"| trades sent / stored in silver | {result['trades_sent']:,} / "
        f"{result['trades_stored']:,} | equal |",
        f"| API requests answered ({result['clients']} clients x {result['client_rate']:g}/s) "
        f"| {total:,} (HTTP {codes}), {result['request_errors']} errors | |",
    ]
    for route, r in req.items():
        rows.append(f"| `{route}` p50 / p99 | {r['p50_ms']} / {r['p99_ms']} ms | |")
    rows += [
        "",
        f"RSS over the run ({min(values, default=0)} to {max(values, default=0)} MB; curve in "
        f"`{Path(result['curve_file']).name}`):",
        "",
        "```",
        sparkline(values),
        "```",
        "",
        "| % of run | "
        + " | ".join(f"{100 * (i + 1) // len(tenths)}" for i in range(len(tenths)))
        + " |",
        "|---" * (len(tenths) + 1) + "|",
        "| RSS MB (median) | " + " | ".join(str(v) for v in tenths) + " |",
        "",
    ]
    return "\n".join(rows)


def _mmm(spread: dict[str, float] | None) -> str:
    if not spread:
        return "—"
    return f"{spread['min']} / {spread['median']} / {spread['max']} MB"


def _tenths(values: list[float]) -> list[float]:
    """The median RSS of each tenth of the run (fewer parts for fewer samples)."""
    n = min(10, len(values))
    return [round(statistics.median(values[i * len(values) // n : (i + 1) * len(values) // n]), 1)
            for i in range(n)]  # fmt: skip
