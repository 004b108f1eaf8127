"""Live phase of `sentinel bench ingest`: a simulator over WebSocket at a steady rate into
`sentinel up` (API on), watched from outside the way users see it.

Processes, all on 127.0.0.1: the simulator (its clock starts when the pipeline subscribes, so
every trade is sent to it), `sentinel up` (the measured side, peak RSS its own), an HTTP
client polling `/latest`, a WebSocket client subscribed to `/v1/stream` trades (both compare
their receive time with the trade's `recv_time`) and this process, which follows the Delta
logs of silver.trades and bronze.raw_messages: frame receipt -> commit visible in the lake.
Clocks are comparable: every process reads the same `time.time_ns()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    POLLERS,
    PRODUCTS,
    CommitTail,
    cpu_seconds,
    delta_rows,
    discard,
    finish,
    free_port,
    health,
    kill_all,
    loop_lag,
    percentiles,
    poll_latest,
    result_of,
    sentinel_env,
    spawn,
    thread_cpu,
    thread_cpu_since,
    wait_port,
    wait_ready,
    watch,
)
from crypto_sentinel.lake import tables as T

#: The simulator sends a match and a ticker frame per trade (and one heartbeat per product
#: per second), so its `rate` in trades/s is half the frame rate.
FRAMES_PER_TRADE = 2


def start_simulator(rate: float, trades: int, log: Path) -> tuple[Any, int]:
    """A simulator child sending `trades` trades at `rate` trades/s once subscribed to."""
    port = free_port()
    proc = spawn(["-m", "bench.ingest_live", "simulator", str(port), str(rate), str(trades)], log)
    wait_port(port, proc)
    return proc, port


def run(workdir: Path, port: int, frames_per_s: float, seconds: float) -> dict[str, Any]:
    rate = frames_per_s / FRAMES_PER_TRADE
    trades = round(rate * seconds)
    run_dir = workdir / f"live-{int(time.time())}"
    lake, logs = run_dir / "lake", run_dir / "logs"
    sim, sim_port = start_simulator(rate, trades, logs / "simulator.log")
    up = None
    clients: list[Any] = []
    silver, bronze = CommitTail(T.TRADES.path(lake)), CommitTail(T.BRONZE.path(lake))
    try:
        env = sentinel_env(lake, run_dir / "data", port, SOURCE="simulator",
                           SIMULATOR_URL=f"ws://127.0.0.1:{sim_port}")  # fmt: skip
        up = spawn(["-m", "crypto_sentinel.cli", "up"], logs / "up.log", env)
        rss = watch(up)
        wait_ready(port, up)
        cpu_start, ready_at = cpu_seconds(up.pid), time.monotonic()
        threads_start = thread_cpu(up.pid)
        stream = f"ws://127.0.0.1:{port}/v1/stream"
        clients = [
            spawn(["-m", "bench.api", "wsprobe", stream, str(seconds)], logs / "ws-client.log"),
            spawn(
                ["-m", "bench.ingest_live", "poll", str(port), str(seconds)],
                logs / "http-client.log",
            ),
        ]
        deadline = time.monotonic() + 2 * seconds + 30
        while silver.poll() < trades and time.monotonic() < deadline and up.poll() is None:
            bronze.poll()
            time.sleep(0.5)
        if up.returncode is not None:
            raise RuntimeError(f"sentinel up exited early ({up.returncode}): {logs / 'up.log'}")
        status = health(port)
        for client in clients:
            client.wait(timeout=seconds + 60)
        lag = loop_lag(port)
        cpu = cpu_seconds(up.pid) - cpu_start
        by_thread = thread_cpu_since(up.pid, threads_start)
        cores = cpu / (time.monotonic() - ready_at)
        peak = finish(up, peak=rss)
        silver.poll(), bronze.poll()
        sent = result_of_simulator(sim, logs / "simulator.log")
    finally:
        kill_all(up, sim, *clients)
    result = {
        "name": f"live: simulator over WebSocket at {frames_per_s:,.0f} frames/s -> sentinel up",
        "frames_per_s_target": frames_per_s,
        "seconds": seconds,
        "trades_sent": sent["emitted"],
        "trades_stored": delta_rows(T.TRADES.path(lake)),
        "frames_stored": bronze.rows,
        "trades_per_s_received": silver.received_per_s(),
        "frame_to_http_client": result_of(logs / "http-client.log"),
        "http_client": poller_client(),
        "frame_to_ws_client": result_of(logs / "ws-client.log"),
        "frame_to_delta_commit": silver.latencies(),
        "frame_to_bronze_commit": bronze.latencies(),
        "delta_commits": silver.commits,
        "event_loop_lag": lag,
        "up_cpu_seconds": round(cpu, 2),  # from ready to the end of the run
        "up_cores": round(cores, 2),
        "up_cpu_by_thread": by_thread,  # the same span, the threads alive at its end
        "peak_rss_mb": peak,
        "reliability": status.get("reliability", {}),
        "slow_consumer_disconnects": sent["slow_disconnects"],
    }
    discard(lake, run_dir / "data")
    return result


def _lag(lag: dict[str, Any]) -> str:
    if not lag:
        return "not read"
    probes = lag["probes"]
    return (
        f"{lag['p99_at_most_ms']:g} ms / {lag['over_5ms']:,} / {lag['over_10ms']:,} (of {probes:,})"
    )


def _by_thread(groups: dict[str, float]) -> str:
    return "".join(f"; {group} {seconds:g} s" for group, seconds in groups.items())


def result_of_simulator(sim: Any, log: Path) -> dict[str, Any]:
    finish(sim, signal.SIGTERM)
    return result_of(log)


def rows(r: dict[str, Any]) -> list[str]:
    """Markdown rows of the live phase."""

    def pct(d: dict[str, Any]) -> str:
        return f"{d['p50_ms']} / {d['p99_ms']} / {d['max_ms']} ms ({d['n']:,})"

    rel = r["reliability"]
    return [
        f"#### Live: simulator over WebSocket at {r['frames_per_s_target']:,.0f} frames/s "
        f"for {r['seconds']} s into `sentinel up` (API on)",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| trades/s received (first to last trade) | {r['trades_per_s_received']:,} "
        f"| {r['frames_per_s_target'] / FRAMES_PER_TRADE:,.0f} |",
        f"| trades sent / stored in silver | {r['trades_sent']:,} / {r['trades_stored']:,} | "
        "equal |",
        f"| frame → /latest (HTTP poller, {r.get('http_client', 'httpx')} client, every 1 ms)"
        " p50 / p99 / max (trades seen) | "
        f"{pct(r['frame_to_http_client'])} | p99 <= 10 ms |",
        f"| frame → WebSocket client p50 / p99 / max (trades) | {pct(r['frame_to_ws_client'])} | |",
        f"| frame → Delta (silver.trades commit) p50 / p99 / max (trades) | "
        f"{pct(r['frame_to_delta_commit'])} | p99 <= 500 ms |",
        f"| frame → bronze commit p50 / p99 / max (frames) | {pct(r['frame_to_bronze_commit'])} "
        "| |",
        f"| event-loop lag of `sentinel up` (a probe every 50 ms): p99 at most / probes later "
        f"than 5 ms / 10 ms | {_lag(r.get('event_loop_lag') or {})} | |",
        f"| CPU of `sentinel up` from ready to the end of the run | {r['up_cpu_seconds']} s "
        f"({r['up_cores']} cores){_by_thread(r.get('up_cpu_by_thread') or {})} | |",
        f"| peak RSS of `sentinel up` | {r['peak_rss_mb']} MB | <= 250 MB |",
        f"| reconnects / gaps / slow-consumer disconnects | {rel.get('reconnects', '?')} / "
        f"{rel.get('gaps', '?')} / {r['slow_consumer_disconnects']} | 0 |",
        "",
    ]


# --- children -------------------------------------------------------------------------------


async def simulate(port: int, rate: float, trades: int) -> dict[str, Any]:
    """Serve until SIGTERM; the clock starts with the first subscriber."""
    from crypto_sentinel.simulator import SimulatorServer

    server = SimulatorServer(PRODUCTS, rate=rate, seed=1, port=port, max_trades=trades,
                             wait_for_subscriber=True)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    return {"emitted": server.emitted_count, "slow_disconnects": server.slow_disconnects}


async def poll(
    port: int, seconds: float, stop_file: Path | None = None, interval: float = 0.001
) -> dict[str, float]:
    """Poll for `seconds`, or until `stop_file` exists (the replay phase's end)."""
    out: list[int] = []
    deadline = time.monotonic() + seconds

    def running() -> bool:
        return time.monotonic() < deadline and not (stop_file is not None and stop_file.exists())

    await poll_latest(port, running, out, interval=interval, client=poller_client())
    return percentiles(out)


def poller_client() -> str:
    """The HTTP client of the `/latest` pollers: `BENCH_POLLER`, set by `bench ingest
    --poller` for every child it starts (default: the lean one)."""
    client = os.environ.get("BENCH_POLLER", POLLERS[0])
    if client not in POLLERS:
        raise ValueError(f"BENCH_POLLER={client!r}: choose from {', '.join(POLLERS)}")
    return client


def child(kind: str, *args: str) -> None:
    if kind == "simulator":
        result = asyncio.run(simulate(int(args[0]), float(args[1]), int(args[2])))
    else:
        stop_file = Path(args[2]) if len(args) > 2 else None
        interval = float(args[3]) if len(args) > 3 else 0.001
        result = asyncio.run(poll(int(args[0]), float(args[1]), stop_file, interval))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    child(sys.argv[1], *sys.argv[2:])
