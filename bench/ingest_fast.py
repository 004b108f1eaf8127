"""Fast phase of `sentinel bench ingest`: live ingestion over WebSocket from a local feed that
sends as fast as it is read.

The feed is a small purpose-built sender (its own child): it streams a pre-generated recording
as ready-made WebSocket frames, whole frames per write, waiting only for the socket to drain,
so the client's reading is the only limit. The simulator cannot do this: it renders every
trade in Python and tops out below what a client can take. Measured, one after the other on
the same frames: the feeds' own WebSocket client (sources/wsclient.py) only draining the
socket (the socket floor: the most any consumer built on it gets here), then `sentinel up`
(API on) from its first frame to its last trade committed in silver.trades, and that silver
then holds every trade (no loss).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PRODUCTS,
    CommitTail,
    delta_rows,
    discard,
    finish,
    frames_and_trades,
    free_port,
    kill_all,
    recording,
    result_of,
    sentinel_env,
    spawn,
    wait_port,
    watch,
)
from crypto_sentinel.lake import tables as T

CHUNK_BYTES = 64 * 1024  # whole frames per write
STALL_SECONDS = 60  # no new trade committed for this long: the run is over, count what is there


def ws_frames(path: Path) -> Path:
    """The recording as WebSocket text frames in length-prefixed chunks (written once)."""
    from crypto_sentinel.simulator.server import ws_text_frame
    from crypto_sentinel.sources.replay import parse_line

    out = path.with_suffix(".wsframes")
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out
    tmp = out.with_suffix(".tmp")
    with path.open() as src, tmp.open("wb") as dst:
        chunk: list[bytes] = []
        size = 0
        for line in src:
            frame = ws_text_frame(parse_line(line.rstrip("\n"))[1].encode())
            chunk.append(frame)
            size += len(frame)
            if size >= CHUNK_BYTES:
                dst.write(size.to_bytes(4, "big") + b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            dst.write(size.to_bytes(4, "big") + b"".join(chunk))
    tmp.replace(out)
    return out


def start_sender(frames: Path, log: Path) -> tuple[Any, int]:
    port = free_port()
    proc = spawn(["-m", "bench.ingest_fast", "send", str(port), str(frames)], log)
    wait_port(port, proc)
    return proc, port


def run(workdir: Path, port: int, trades: int) -> dict[str, Any]:
    rec = recording(workdir, trades)
    frames, expected = frames_and_trades(rec)
    wsfile = ws_frames(rec)
    run_dir = workdir / f"fast-{int(time.time())}"
    lake, logs = run_dir / "lake", run_dir / "logs"

    print("fast: socket floor (a client that only drains the socket) ...", flush=True)
    sender, sender_port = start_sender(wsfile, logs / "sender-floor.log")
    drain = None
    try:
        drain = spawn(["-m", "bench.ingest_fast", "drain", f"ws://127.0.0.1:{sender_port}",
                       str(frames)], logs / "drain.log")  # fmt: skip
        drain_rss = finish(drain, grace=max(120, frames / 5_000), peak=watch(drain))
        floor = {**result_of(logs / "drain.log"), "peak_rss_mb": drain_rss}
        floor["trades_per_s"] = round(floor["frames_per_s"] * expected / frames)
    finally:
        kill_all(drain)
        finish(sender, signal.SIGTERM)

    print("fast: sentinel up ...", flush=True)
    sender, sender_port = start_sender(wsfile, logs / "sender.log")
    up = None
    silver = CommitTail(T.TRADES.path(lake))
    try:
        env = sentinel_env(lake, run_dir / "data", port, SOURCE="simulator", BACKFILL="false",
                           SIMULATOR_URL=f"ws://127.0.0.1:{sender_port}")  # fmt: skip
        up = spawn(["-m", "crypto_sentinel.cli", "up"], logs / "up.log", env)
        rss = watch(up)
        seen, progress_at = 0, time.monotonic()
        while seen < expected and time.monotonic() - progress_at < STALL_SECONDS:
            if up.poll() is not None:
                raise RuntimeError(f"sentinel up exited early ({up.returncode}): {logs}/up.log")
            time.sleep(0.25)
            if silver.poll() > seen:
                seen, progress_at = silver.rows, time.monotonic()
        peak = finish(up, peak=rss)
        silver.poll()
    finally:
        kill_all(up)
        finish(sender, signal.SIGTERM)
    stored = delta_rows(T.TRADES.path(lake))
    first = silver.first_recv_us or 0
    seconds = (silver.last_commit_ns / 1000 - first) / 1e6
    result = {
        "name": "fast: local feed over WebSocket as fast as read -> sentinel up",
        "trades_sent": expected,
        "frames_sent": frames,
        "trades_stored": stored,
        "frames_stored": delta_rows(T.BRONZE.path(lake)),
        "no_loss": stored == expected,
        "seconds_first_frame_to_last_commit": round(seconds, 3),
        "trades_per_s": round(stored / seconds) if seconds > 0 else 0,
        "peak_rss_mb": peak,
        "socket_floor": floor,
    }
    discard(lake, run_dir / "data")
    return result


def rows(r: dict[str, Any], decode_floor: dict[str, Any]) -> list[str]:
    """Markdown rows of the fast phase, beside the decode floor of the same invocation."""
    floor = r["socket_floor"]
    loss = "no loss" if r["no_loss"] else "**LOSS**"
    return [
        f"#### Fast: {r['trades_sent']:,} trades ({r['frames_sent']:,} frames) over WebSocket "
        "as fast as read",
        "",
        "| run | trades/s | trades stored / sent | peak RSS |",
        "|---|---|---|---|",
        f"| baseline: read + decode only (decode floor) | {decode_floor['trades_per_s']:,} | — "
        f"| {decode_floor['peak_rss_mb']} MB |",
        f"| socket floor: the feeds' WebSocket client (picows) only draining the socket | "
        f"{floor['trades_per_s']:,} ({floor['frames_per_s']:,} frames/s) | — "
        f"| {floor['peak_rss_mb']} MB |",
        f"| `sentinel up`, first frame → last trade committed in silver.trades "
        f"({r['seconds_first_frame_to_last_commit']} s) | {r['trades_per_s']:,} "
        f"| {r['trades_stored']:,} / {r['trades_sent']:,} ({loss}) | {r['peak_rss_mb']} MB |",
        "",
        "Target: >= 60,000 trades/s with everything committed.",
        "",
    ]


# --- children -------------------------------------------------------------------------------


async def send(port: int, path: Path) -> dict[str, Any]:
    """Serve the chunks to the first subscriber, as fast as it reads; serve until SIGTERM.

    A client that reconnects later gets nothing again: the run counts each trade once.
    """
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    stats: dict[str, Any] = {"connections": 0, "streams": 0, "bytes": 0, "seconds": None}

    async def handler(ws: ServerConnection) -> None:
        stats["connections"] += 1
        try:
            await ws.recv()  # the subscribe message
        except ConnectionClosed:
            return
        if stats["streams"] == 0:
            stats["streams"] = 1
            started = time.perf_counter()
            with path.open("rb") as fh:
                while (head := fh.read(4)) and not ws.transport.is_closing():
                    chunk = fh.read(int.from_bytes(head, "big"))
                    ws.transport.write(chunk)
                    stats["bytes"] += len(chunk)
                    await ws.drain()  # the client's reading paces the feed
            stats["seconds"] = round(time.perf_counter() - started, 3)
        await ws.wait_closed()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**16,
                     ping_interval=None, write_limit=2**20):  # fmt: skip
        await stop.wait()
    return stats


async def drain(url: str, frames: int) -> dict[str, Any]:
    """Receive `frames` frames with the WebSocket client the pipeline uses, doing nothing else."""
    from crypto_sentinel.sources.coinbase.feed import MAX_FRAME_BYTES, subscribe_message
    from crypto_sentinel.sources.wsclient import connect

    async with connect(url, MAX_FRAME_BYTES, 10.0) as ws:
        await ws.send(subscribe_message(PRODUCTS))
        await ws.recv()
        started = time.perf_counter()
        received = 1
        while received < frames:
            async with asyncio.timeout(10):
                await ws.recv()
            received += 1
        seconds = time.perf_counter() - started
    return {"frames": received, "seconds": round(seconds, 3),
            "frames_per_s": round((received - 1) / seconds)}  # fmt: skip


def child(kind: str, *args: str) -> None:
    if kind == "send":
        result = asyncio.run(send(int(args[0]), Path(args[1])))
    else:
        result = asyncio.run(drain(args[0], int(args[1])))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    child(sys.argv[1], *sys.argv[2:])
