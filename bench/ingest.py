"""Ingest benchmark, in phases (`sentinel bench ingest --phases replay,live,fast,kafka`).

- replay: N simulated trades replayed as fast as possible through `sentinel up`'s pipeline
  (replay source -> bus -> engine -> Delta, API running): throughput, frame -> visible in
  /latest and frame -> committed in Delta latency, peak RSS.
- live (bench/ingest_live.py): the simulator over WebSocket at a steady frame rate into
  `sentinel up`: frame -> /latest, -> WebSocket client, -> Delta.
- fast (bench/ingest_fast.py): a local feed sending over WebSocket as fast as it is read:
  trades/s with everything committed, and no trade lost.
- kafka (bench/ingest_kafka.py): `sentinel process` draining a Kafka backlog.

The baseline, run once in the same invocation on the replay recording, is the decode floor:
reading the file and decoding every frame into typed records, with no bus, lake or API.
Each side runs in its own child process so peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common, ingest_fast, ingest_kafka, ingest_live
from bench.common import peak_rss_mb, percentiles
from crypto_sentinel.engine.chunks import ChunkNews
from crypto_sentinel.model import RawFrame, Trade

__all__ = ["PHASES", "main", "markdown", "peak_rss_mb", "percentiles"]

PHASES = ("replay", "live", "fast", "kafka")


def run_baseline(recording: Path, exchange: str = "simulator") -> dict[str, Any]:
    """Decode floor: read + decode every frame with the exchange's per-frame codec, nothing
    else."""
    from crypto_sentinel.sources.codec import FrameError
    from crypto_sentinel.sources.replay import parse_line
    from crypto_sentinel.sources.venues import codec_for

    codec = codec_for(exchange)
    assert codec is not None, exchange
    decode = codec.decode
    trades = frames = 0
    started = time.perf_counter()
    with recording.open() as fh:
        for seq, line in enumerate(fh):
            frames += 1
            _, text = parse_line(line.rstrip("\n"))
            try:
                record = decode(RawFrame(exchange, "bench", seq, time.time_ns(), text))
            except FrameError:
                continue
            trades += len(record) if isinstance(record, list) else isinstance(record, Trade)
    seconds = time.perf_counter() - started
    return {
        "name": "baseline: read + decode only",
        "trades": trades,
        "seconds": round(seconds, 3),
        "trades_per_s": round(trades / seconds),
        "frames_per_s": round(frames / seconds),
        "peak_rss_mb": peak_rss_mb(),
    }


async def _run_pipeline(
    recording: Path, lake: Path, port: int, exchange: str = "simulator"
) -> dict[str, Any]:
    from crypto_sentinel.config import load_settings
    from crypto_sentinel.runtime import Pipeline

    settings = load_settings(
        source=f"replay:{recording}",
        replay_exchange=exchange,
        lake_dir=lake,
        port=port,
        log_level="WARNING",
    )
    pipeline = Pipeline(settings)
    # (when shown, receive times), compact: a list of Python ints per chunk was ~40 bytes a
    # trade of the peak RSS measured (12 MB for 300,000 trades), not the pipeline's memory.
    shown: list[tuple[int, array[int]]] = []

    def on_chunk(news: ChunkNews) -> None:  # runs after the hot state's: shown by now
        shown.append((time.time_ns(), array("q", news.trades.recv_times())))

    pipeline.engine.listeners.append(on_chunk)
    pipeline.engine.commit_log = []
    # The HTTP client is a process of its own, as users' clients are: in this one it would
    # take the interpreter from the pipeline it measures.
    stop_file = lake.parent / f"{lake.name}.poller-stop"
    poller_log = lake.parent / f"{lake.name}-poller.log"
    poller = common.spawn(
        ["-m", "bench.ingest_live", "poll", str(port), "3600", str(stop_file), "0.01"], poller_log
    )
    try:
        run = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
        started = time.perf_counter()
        started_ns = time.time_ns()
        while not run.done():
            await asyncio.sleep(0.05)
            src = pipeline.source
            if src is not None and src.status.finished and pipeline.bus_depth() == 0:
                pipeline.stop_event.set()
        await run
        seconds = time.perf_counter() - started
        peak = peak_rss_mb()  # before the lists of latencies below are made
    finally:
        stop_file.touch()
        poller.wait(timeout=60)
        stop_file.unlink(missing_ok=True)
    http = common.result_of(poller_log)
    visible_ns = [when - recv for when, recvs in shown for recv in recvs]
    commit_ns = [
        rec.committed_ns - r for rec in pipeline.engine.commit_log or [] for r in rec.recv_ns
    ]
    stats = pipeline.engine.stats
    log = pipeline.engine.commit_log or []
    first_ns = min((min(rec.recv_ns) for rec in log if rec.recv_ns), default=started_ns)
    last_ns = max((rec.committed_ns for rec in log), default=first_ns + 1)
    return {
        "name": "sentinel up pipeline (replay max speed, API on)",
        "trades": stats.trades,
        "frames": stats.frames,
        "batches": stats.batches,
        "seconds": round(seconds, 3),
        "trades_per_s": round(stats.trades / seconds),
        # Start-up (opening the lake, the API's imports and warm-up) is in `seconds`; this is
        # the rate from the first frame read to the last commit, as the fast phase measures.
        "startup_s": round((first_ns - started_ns) / 1e9, 3),
        "first_frame_to_last_commit_trades_per_s": round(stats.trades * 1e9 / (last_ns - first_ns)),
        "frame_to_visible": percentiles(visible_ns),
        "frame_to_http_client": http,
        "frame_to_delta_commit": percentiles(commit_ns),
        "peak_rss_mb": peak,
    }


def child(kind: str, recording: Path, lake: Path, port: int, exchange: str) -> None:
    if kind == "baseline":
        result = run_baseline(recording, exchange)
    else:
        from crypto_sentinel.eventloop import run_event_loop

        # as `sentinel up` runs it: uvloop when installed, the collector tuned (and pandas kept
        # out by `bench.child`)
        result = run_event_loop(_run_pipeline(recording, lake, port, exchange))
    print("RESULT " + json.dumps(result))


def _spawn(
    kind: str, recording: Path, lake: Path, port: int, exchange: str = "simulator"
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.child", "bench.ingest", kind, str(recording), str(lake),
           str(port), exchange]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line.removeprefix("RESULT ")))
    raise RuntimeError(f"{kind} run printed no result:\n{out.stdout}\n{out.stderr}")


def main(
    trades: int,
    workdir: Path,
    port: int,
    phases: str = "replay,live,fast,kafka",
    live_seconds: float = 60.0,
    live_rate: float = 5_000.0,
    fast_trades: int = 200_000,
    kafka_trades: int = 200_000,
    exchange: str = "coinbase",
    poller: str = common.POLLERS[0],
) -> dict[str, Any]:
    """Run the chosen phases, one after the other (2 cores: side by side they would measure
    their competition), after the decode-floor baseline on the `trades` recording.
    `exchange` other than coinbase: the recording speaks that venue's protocol (replay phase
    and decode floor only; the live, fast and Kafka phases are Coinbase's). `poller`: the
    HTTP client of the `/latest` pollers (`common.POLLERS`)."""
    if poller not in common.POLLERS:
        raise ValueError(f"unknown poller {poller!r}; choose from {', '.join(common.POLLERS)}")
    os.environ["BENCH_POLLER"] = poller  # the pollers are children of this process's children
    if exchange != "coinbase" and set(phases.split(",")) - {"replay"}:
        phases = "replay"
    chosen = [p.strip() for p in phases.split(",") if p.strip()]
    unknown = set(chosen) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": common.machine(),
        "command": _command(trades, chosen, live_seconds, live_rate, fast_trades, kafka_trades)
        + ("" if exchange == "coinbase" else f" --exchange {exchange}")
        + ("" if poller == common.POLLERS[0] else f" --poller {poller}"),
        "poller": poller,
        "trades": trades,
        "phases": chosen,
    }
    result["exchange"] = exchange
    recording = common.recording(workdir, trades, exchange)
    lake = workdir / f"lake-{int(time.time())}"
    stored_as = "simulator" if exchange == "coinbase" else exchange
    print("baseline (decode only)...", flush=True)
    result["baseline"] = _spawn("baseline", recording, lake, port, stored_as)
    if "replay" in chosen:
        print("replay: pipeline...", flush=True)
        result["pipeline"] = _spawn("pipeline", recording, lake, port, stored_as)
    if "live" in chosen:
        print(f"live: {live_rate:,.0f} frames/s for {live_seconds:g} s ...", flush=True)
        result["live"] = ingest_live.run(workdir, port, live_rate, live_seconds)
    if "fast" in chosen:
        result["fast"] = ingest_fast.run(workdir, port, fast_trades)
    if "kafka" in chosen:
        result["kafka"] = ingest_kafka.run(workdir, kafka_trades)
        if "skipped" in result["kafka"]:
            print(f"kafka: skipped: {result['kafka']['skipped']}", flush=True)
    common.discard(lake)
    return result


def _command(
    trades: int, phases: list[str], seconds: float, rate: float, fast: int, kafka: int
) -> str:
    words = [f"sentinel bench ingest --trades {trades} --phases {','.join(phases)}"]
    if "live" in phases:
        words.append(f"--live-seconds {seconds:g} --live-rate {rate:g}")
    if "fast" in phases:
        words.append(f"--fast-trades {fast}")
    if "kafka" in phases:
        words.append(f"--kafka-trades {kafka}")
    return " ".join(words)


def markdown(result: dict[str, Any]) -> str:
    b = result["baseline"]
    rows = [
        f"### Ingest ({result.get('exchange', 'coinbase')}), {result['trades']:,} simulated"
        f" trades — {result['date']}",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| run | trades/s | frame→/latest p50 / p99 | frame→HTTP poller p50 / p99 "
        "| frame→Delta commit p50 / p99 | peak RSS |",
        "|---|---|---|---|---|---|",
        f"| {b['name']} | {b['trades_per_s']:,} | — | — | — | {b['peak_rss_mb']} MB |",
    ]
    if "pipeline" in result:
        p = result["pipeline"]
        vis, http = p["frame_to_visible"], p["frame_to_http_client"]
        com = p["frame_to_delta_commit"]
        rows.append(
            f"| {p['name']} | {p['trades_per_s']:,} | {vis['p50_ms']} / {vis['p99_ms']} ms "
            f"| {http['p50_ms']} / {http['p99_ms']} ms | {com['p50_ms']} / {com['p99_ms']} ms "
            f"| {p['peak_rss_mb']} MB |"
        )
        if "startup_s" in p:
            rows += [
                "",
                f"Pipeline trades/s are from its start; {p['startup_s']} s of start-up came"
                " before the first frame (opening the lake, the API's start). From the first"
                " frame to the last commit:"
                f" {p['first_frame_to_last_commit_trades_per_s']:,} trades/s.",
            ]
    rows.append("")
    if "live" in result:
        rows += ingest_live.rows(result["live"])
    if "fast" in result:
        rows += ingest_fast.rows(result["fast"], b)
    if "kafka" in result:
        rows += ingest_kafka.rows(result["kafka"], b)
    return "\n".join(rows)


if __name__ == "__main__":
    child(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
