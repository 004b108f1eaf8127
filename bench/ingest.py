"""Ingest benchmark: replay N simulated trades as fast as possible through `sentinel up`'s
pipeline (replay source -> bus -> engine -> Delta, API running) and measure throughput,
frame -> visible-in-/latest and frame -> committed-in-Delta latency, and peak RSS.

The baseline, run in the same invocation on the same recording, is the decode floor: reading
the file and decoding every frame into typed records, with no bus, lake or API.
Each side runs in its own child process so peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from crypto_sentinel.model import RawFrame, Trade


def percentiles(values_ns: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds."""
    if not values_ns:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    ordered = sorted(values_ns)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": rank(1.0), "n": len(ordered)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_baseline(recording: Path) -> dict[str, Any]:
    """Decode floor: read + decode every frame, nothing else."""
    from crypto_sentinel.sources.coinbase_codec import FrameError, decode
    from crypto_sentinel.sources.replay import parse_line

    trades = 0
    started = time.perf_counter()
    with recording.open() as fh:
        for seq, line in enumerate(fh):
            _, text = parse_line(line.rstrip("\n"))
            try:
                record = decode(RawFrame("simulator", "bench", seq, time.time_ns(), text))
            except FrameError:
                continue
            trades += isinstance(record, Trade)
    seconds = time.perf_counter() - started
    return {
        "name": "baseline: read + decode only",
        "trades": trades,
        "seconds": round(seconds, 3),
        "trades_per_s": round(trades / seconds),
        "peak_rss_mb": peak_rss_mb(),
    }


async def _run_pipeline(recording: Path, lake: Path, port: int) -> dict[str, Any]:
    from crypto_sentinel.config import load_settings
    from crypto_sentinel.runtime import Pipeline

    settings = load_settings(
        source=f"replay:{recording}",
        replay_exchange="simulator",
        lake_dir=lake,
        port=port,
        log_level="WARNING",
    )
    pipeline = Pipeline(settings)
    visible_ns: list[int] = []

    def on_event(event: object) -> None:
        if isinstance(event, Trade):
            visible_ns.append(time.time_ns() - event.recv_ns)

    pipeline.engine.listeners.append(on_event)
    http_ns: list[int] = []
    run = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
    started = time.perf_counter()

    async def poll_latest() -> None:
        """An HTTP client polling /latest: when did each trade become visible to it?"""
        seen: set[tuple[str, int]] = set()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while not run.done():
                try:
                    body = (await client.get("/latest")).json()
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                now = time.time_ns()
                for item in body["data"]:
                    key = (item["symbol"], item["trade_id"])
                    if key not in seen:
                        seen.add(key)
                        recv = datetime.fromisoformat(item["recv_time"].replace("Z", "+00:00"))
                        http_ns.append(now - int(recv.timestamp() * 1e9))
                await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll_latest())
    while not run.done():
        await asyncio.sleep(0.05)
        src = pipeline.source
        if src is not None and src.status.finished and pipeline.bus.depth() == 0:
            pipeline.stop_event.set()
    await run
    await poller
    seconds = time.perf_counter() - started
    commit_ns = [rec.committed_ns - r for rec in pipeline.engine.commit_log for r in rec.recv_ns]
    stats = pipeline.engine.stats
    return {
        "name": "sentinel up pipeline (replay max speed, API on)",
        "trades": stats.trades,
        "frames": stats.frames,
        "batches": stats.batches,
        "seconds": round(seconds, 3),
        "trades_per_s": round(stats.trades / seconds),
        "frame_to_visible": percentiles(visible_ns),
        "frame_to_http_client": percentiles(http_ns),
        "frame_to_delta_commit": percentiles(commit_ns),
        "peak_rss_mb": peak_rss_mb(),
    }


def child(kind: str, recording: Path, lake: Path, port: int) -> None:
    if kind == "baseline":
        result = run_baseline(recording)
    else:
        result = asyncio.run(_run_pipeline(recording, lake, port))
    print("RESULT " + json.dumps(result))


def _spawn(kind: str, recording: Path, lake: Path, port: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.ingest", kind, str(recording), str(lake), str(port)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line.removeprefix("RESULT ")))
    raise RuntimeError(f"{kind} run printed no result:\n{out.stdout}\n{out.stderr}")


def main(trades: int, workdir: Path, port: int) -> dict[str, Any]:
    from crypto_sentinel.simulator import write_recording

    workdir.mkdir(parents=True, exist_ok=True)
    recording = workdir / f"sim-{trades}.ndjson"
    if not recording.exists():
        print(f"writing a recording of {trades:,} simulated trades to {recording}", flush=True)
        write_recording(recording, ["BTC-USD", "ETH-USD", "SOL-USD"], trades, seed=7)
    lake = workdir / f"lake-{int(time.time())}"
    print("baseline (decode only)...", flush=True)
    baseline = _spawn("baseline", recording, lake, port)
    print("pipeline...", flush=True)
    pipeline = _spawn("pipeline", recording, lake, port)
    return {
        "benchmark": "ingest",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {_cpus()} cores, Python "
        f"{platform.python_version()}",
        "command": f"sentinel bench ingest --trades {trades}",
        "trades": trades,
        "baseline": baseline,
        "pipeline": pipeline,
    }


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def markdown(result: dict[str, Any]) -> str:
    b, p = result["baseline"], result["pipeline"]
    vis, http, com = p["frame_to_visible"], p["frame_to_http_client"], p["frame_to_delta_commit"]
    return "\n".join(
        [
            f"### Ingest, {result['trades']:,} simulated trades — {result['date']}",
            f"Machine: {result['machine']}. Command: `{result['command']}`.",
            "",
            "| run | trades/s | frame→/latest p50 / p99 | frame→HTTP poller p50 / p99 "
            "| frame→Delta commit p50 / p99 | peak RSS |",
            "|---|---|---|---|---|---|",
            f"| {b['name']} | {b['trades_per_s']:,} | — | — | — | {b['peak_rss_mb']} MB |",
            f"| {p['name']} | {p['trades_per_s']:,} | {vis['p50_ms']} / {vis['p99_ms']} ms "
            f"| {http['p50_ms']} / {http['p99_ms']} ms | {com['p50_ms']} / {com['p99_ms']} ms "
            f"| {p['peak_rss_mb']} MB |",
            "",
        ]
    )


if __name__ == "__main__":
    child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
