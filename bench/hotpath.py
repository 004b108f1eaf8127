"""Event-loop benchmark: what the pieces of `sentinel up`'s one busy thread cost per frame.

The end-to-end phases of `sentinel bench ingest` vary by +-20 % between runs on a shared 2-core
VM, which hides a change of a few per cent in one piece. This times the pieces in-process, on
the same frames (one simulated recording, match + ticker per trade), each `--repeat` times
interleaved, best run counted:

- baseline: the Coinbase codec's `decode()` per frame (the decode floor of `bench ingest`);
- the replay source handing its frames to the in-process bus, one by one and (where the code
  has it) `PUBLISH_FRAMES` at a time;
- `ChunkAcceptor.accept` on chunks of `CHUNK_FRAMES` (decode, drop duplicates, tickers,
  candle deltas; no listeners);
- `candles_of` on each chunk's trades;
- rendering each trade for `/latest` and for the live push (JSON included).

    python -m bench.hotpath [--trades 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.common import recording
from crypto_sentinel.api.render import latest_item, push_trade
from crypto_sentinel.bus.memory import MemoryBus
from crypto_sentinel.engine.candles import candles_of
from crypto_sentinel.engine.chunks import ChunkAcceptor
from crypto_sentinel.engine.processor import CHUNK_FRAMES
from crypto_sentinel.model import RawFrame, Trade
from crypto_sentinel.sources import replay
from crypto_sentinel.sources.coinbase.codec import FrameError, decode
from crypto_sentinel.sources.venues import decode_frames


def load(path: Path) -> list[RawFrame]:
    with path.open("rb") as fh:
        texts = replay._frame_texts(fh.readlines())
    now = time.time_ns()
    return [RawFrame("simulator", "bench", i, now, text) for i, (_, text) in enumerate(texts)]


def chunks(frames: list[RawFrame]) -> list[list[RawFrame]]:
    return [frames[i : i + CHUNK_FRAMES] for i in range(0, len(frames), CHUNK_FRAMES)]


def decode_each(frames: list[RawFrame]) -> None:
    for frame in frames:
        with contextlib.suppress(FrameError):
            decode(frame)


def source_to_bus(path: Path, many: bool) -> int:
    async def run() -> int:
        bus = MemoryBus(capacity=10**8)
        source = replay.ReplaySource(path, exchange="simulator")
        if many:
            source.publish_many = bus.publish_many
        taken = 0

        async def drain() -> None:  # a part waits until the one before it was taken
            nonlocal taken
            while not source.done.is_set() or bus.depth():
                taken += len(await bus.take(10**8, 0.01))

        draining = asyncio.create_task(drain())
        await source.run(bus.publish)
        await draining
        return taken

    return asyncio.run(run())


def accept(frames: list[RawFrame]) -> None:
    acceptor = ChunkAcceptor()
    for chunk in chunks(frames):
        acceptor.accept(chunk)


def render(trades: list[Trade]) -> None:
    now = time.time_ns()
    for trade in trades:
        orjson.dumps(latest_item(trade, now))
        orjson.dumps(push_trade(trade))


def best_rates(runs: dict[str, tuple[Callable[[], Any], int]], repeat: int) -> dict[str, float]:
    """Items per second of each run, best of `repeat` interleaved passes."""
    best = {name: 0.0 for name in runs}
    for _ in range(repeat):
        for name, (run, items) in runs.items():
            gc.collect()
            started = time.perf_counter()
            run()
            best[name] = max(best[name], items / (time.perf_counter() - started))
    return best


def main(trades: int, repeat: int) -> None:
    workdir = Path(tempfile.gettempdir()) / "sentinel-bench-hotpath"
    workdir.mkdir(exist_ok=True)
    path = recording(workdir, trades)
    frames = load(path)
    decoded = [decode_frames(chunk) for chunk in chunks(frames)]
    records = [r for f in frames[:20000] if isinstance(r := _trade(f), Trade)]
    n = len(frames)
    n_trades = sum(d.trades.num_rows for d in decoded)
    runs: dict[str, tuple[Callable[[], Any], int]] = {
        "baseline: decode() per frame": (lambda: decode_each(frames), n),
        "replay source -> bus, one by one": (lambda: source_to_bus(path, False), n),
    }
    if hasattr(MemoryBus, "publish_many"):
        runs["replay source -> bus, in parts"] = (lambda: source_to_bus(path, True), n)
    runs[f"ChunkAcceptor.accept, chunks of {CHUNK_FRAMES}"] = (lambda: accept(frames), n)
    runs["candles_of per chunk (per trade)"] = (
        lambda: [candles_of(d.trades) for d in decoded],
        n_trades,
    )
    runs["render for /latest and push (per trade)"] = (lambda: render(records), len(records))
    rates = best_rates(runs, repeat)
    floor = rates["baseline: decode() per frame"]
    print(
        f"### Event-loop pieces, {n:,} frames ({trades:,} trades) — "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}\n"
        f"Machine: {platform.machine()}, Python {platform.python_version()}. "
        f"Command: `python -m bench.hotpath --trades {trades} --repeat {repeat}` (best of "
        f"{repeat}).\n\n| run | items/s | us per item | vs baseline |\n|---|---|---|---|"
    )
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {1e6 / rate:.2f} | {rate / floor:.2f} |")


def _trade(frame: RawFrame) -> object:
    try:
        return decode(frame)
    except FrameError:
        return None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    main(args.trades, args.repeat)
