"""Books benchmark: level changes/s through the engine into the lake, bytes per stored level
change, and `at=` latency from the lake, beside the seed-style baseline in the same run.

Input: generated Binance frames (`btcusdt@depth@100ms` updates of ~LEVELS_PER_UPDATE levels,
our `depthSnapshot` frame first), about `changes` level changes in all.

1. Ours. The frames through the real engine (`Engine` with a `BookProcessor`, default book
   settings: top 50 every second, full book every 60 s) in chunks of CHUNK_FRAMES, committed
   every BATCH_FRAMES frames into a fresh Delta lake. Reported: level changes/s (stored
   silver.book_updates rows over the wall time, bronze and every derived table included),
   bytes of silver.book_updates and gold.book_snapshots per level change, and `book_at`
   p50/p99 at AT_SAMPLES random moments (full depth).
2. The book route from memory under load (`bench/book_route.py`): `GET
   /v1/products/{id}/book?depth=50` at 500 requests/s, open loop, against a running pipeline
   with books (phase "route"; `--live-seconds` sets its length).
3. Baseline: what the seed would do - each update as one row per level change (decoded,
   appended, no snapshots), and a book at a moment rebuilt by replaying every row from the
   start. Same frames, same machine, same run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from bench import book_route
from bench.common import machine, percentiles
from crypto_sentinel.books.history import BookHistory
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.books.processor import BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.engine.processor import CHUNK_FRAMES, Engine
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.writer import WRITER_PROPERTIES, LakeWriter
from crypto_sentinel.model import RawFrame

EXCHANGE, PRODUCT = "binance", "BTC-USDT"
LEVELS_PER_UPDATE = 20
BATCH_FRAMES = 10_000
AT_SAMPLES = 200
E0 = 1_764_000_000_000  # ms

BASELINE_SCHEMA = pa.schema(
    [("exchange", pa.string()), ("product_id", pa.string()), ("side", pa.string()),
     ("price", T.PRICE), ("size", T.PRICE), ("time", T.UTC_TS), ("date", pa.date32())]
)  # fmt: skip


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def frames(changes: int, seed: int = 3) -> list[RawFrame]:
    """A snapshot of 1,000 levels a side, then contiguous 100 ms updates."""
    rng = random.Random(seed)
    out = []
    bids = [[f"{(90000 - i) / 100:.2f}", f"{rng.randint(1, 9000) / 1000:.3f}"] for i in range(1000)]
    asks = [[f"{(90010 + i) / 100:.2f}", f"{rng.randint(1, 9000) / 1000:.3f}"] for i in range(1000)]
    snap = {"e": "depthSnapshot", "s": "BTCUSDT", "lastUpdateId": 999, "bids": bids, "asks": asks}
    out.append(_frame(1, E0, {"stream": "btcusdt@depthSnapshot", "data": snap}))
    uid = 1000
    for n in range(max(changes // LEVELS_PER_UPDATE, 1)):
        side_b: list[list[str]] = []
        side_a: list[list[str]] = []
        for _ in range(LEVELS_PER_UPDATE):
            bid = rng.random() < 0.5
            cents = 90000 - rng.randint(0, 1100) if bid else 90010 + rng.randint(0, 1100)
            size = "0" if rng.random() < 0.25 else f"{rng.randint(1, 9000) / 1000:.3f}"
            (side_b if bid else side_a).append([f"{cents / 100:.2f}", size])
        ms = E0 + 100 * (n + 1)
        data = {"e": "depthUpdate", "E": ms, "s": "BTCUSDT", "U": uid, "u": uid + 1,
                "b": side_b, "a": side_a}  # fmt: skip
        uid += 2
        out.append(_frame(n + 2, ms + 5, {"stream": "btcusdt@depth@100ms", "data": data}))
    return out


def _frame(seq: int, ms: int, body: dict[str, Any]) -> RawFrame:
    return RawFrame(EXCHANGE, "bench", seq, ms * 1_000_000, json.dumps(body, separators=(",", ":")))


def _bytes(table: Path) -> int:
    dt = DeltaTable(str(table))
    return int(pc.sum(pa.table(dt.get_add_actions(flatten=True))["size_bytes"]).as_py() or 0)


def ours(lake: Path, stream: list[RawFrame]) -> dict[str, Any]:
    writer = LakeWriter(lake, "bench-books")
    engine = Engine(writer, 1.0, 1_000_000, books=BookProcessor(BookRegistry(), BookSettings()))
    started = time.perf_counter()
    try:
        for start in range(0, len(stream), BATCH_FRAMES):
            part = stream[start : start + BATCH_FRAMES]
            for at in range(0, len(part), CHUNK_FRAMES):
                engine.process_frames(part[at : at + CHUNK_FRAMES])
            batch = engine.cut()
            if batch is not None:
                engine.committed(batch, writer.commit(batch))
    finally:
        engine.close()
    seconds = time.perf_counter() - started
    changes = engine.stats.book_changes
    updates, snaps = _bytes(T.BOOK_UPDATES.path(lake)), _bytes(T.BOOK_SNAPSHOTS.path(lake))
    return {
        "frames": len(stream),
        "level_changes": changes,
        "snapshots": engine.stats.book_snapshots,
        "seconds": round(seconds, 3),
        "level_changes_per_s": round(changes / seconds),
        "bytes_per_change": round(updates / max(changes, 1), 2),
        "bytes_per_change_with_snapshots": round((updates + snaps) / max(changes, 1), 2),
    }


def moments(stream: list[RawFrame], count: int) -> list[datetime]:
    rng = random.Random(9)
    last_ms = E0 + 100 * (len(stream) - 1)
    return [datetime.fromtimestamp(rng.randint(E0 + 100, last_ms) / 1000, UTC)
            for _ in range(count)]  # fmt: skip


def ours_at(lake: Path, at: list[datetime]) -> dict[str, Any]:
    history = BookHistory(lake)
    history.book_at(EXCHANGE, PRODUCT, at[0])  # the file list, as a running API has it
    took = []
    for when in at:
        t0 = time.perf_counter_ns()
        view = history.book_at(EXCHANGE, PRODUCT, when)
        took.append(time.perf_counter_ns() - t0)
        assert view is not None
    return percentiles(took)


def baseline(lake: Path, stream: list[RawFrame]) -> dict[str, Any]:
    """One row per level change, decoded with json and appended per batch; no snapshots."""
    path = lake / "baseline_book_updates"
    started = time.perf_counter()
    rows = 0
    for start in range(0, len(stream), BATCH_FRAMES):
        cols: dict[str, list[Any]] = {name: [] for name in BASELINE_SCHEMA.names}
        for frame in stream[start : start + BATCH_FRAMES]:
            data = json.loads(frame.text)["data"]
            when = data.get("E", E0)
            for side, key in (("bid", "b"), ("ask", "a"), ("bid", "bids"), ("ask", "asks")):
                for price, size in data.get(key, ()):
                    cols["side"].append(side)
                    cols["price"].append(Decimal(price))
                    cols["size"].append(Decimal(size))
                    cols["time"].append(when * 1000)
        n = len(cols["side"])
        rows += n
        times = pa.array(cols["time"], pa.int64()).cast(T.UTC_TS)
        table = pa.table(
            {"exchange": pa.array([EXCHANGE] * n), "product_id": pa.array([PRODUCT] * n),
             "side": cols["side"], "price": pa.array(cols["price"], T.PRICE),
             "size": pa.array(cols["size"], T.PRICE), "time": times,
             "date": times.cast(pa.date32())},
            schema=BASELINE_SCHEMA,
        )  # fmt: skip
        write_deltalake(str(path), table, mode="append", partition_by=["date"],
                        writer_properties=WRITER_PROPERTIES)  # fmt: skip
    seconds = time.perf_counter() - started
    return {
        "level_changes": rows,
        "seconds": round(seconds, 3),
        "level_changes_per_s": round(rows / seconds),
        "bytes_per_change": round(_bytes(path) / max(rows, 1), 2),
    }


def baseline_at(lake: Path, at: list[datetime]) -> dict[str, Any]:
    """A book at a moment: every stored row up to it, replayed from the start."""
    dt = DeltaTable(str(lake / "baseline_book_updates"))
    took = []
    for when in at:
        t0 = time.perf_counter_ns()
        table = dt.to_pyarrow_table(filters=[("time", "<=", when)])
        book = OrderBook(EXCHANGE, PRODUCT)
        for side, price, size in zip(table["side"].to_pylist(), table["price"].to_pylist(),
                                     table["size"].to_pylist(), strict=True):  # fmt: skip
            book.apply(side, price, size)
        book.view()
        took.append(time.perf_counter_ns() - t0)
    return percentiles(took)


PHASES = ("lake", "route")


def main(
    trades: int, workdir: Path, port: int, phases: str | None = None,
    live_seconds: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`trades`: level changes to generate (the CLI's --trades); `phases`: "lake" (level
    changes and `at=`, beside the baseline), "route" (the live route under load), or both."""
    chosen = [p.strip() for p in (phases or ",".join(PHASES)).split(",") if p.strip()]
    unknown = set(chosen) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "command": f"sentinel bench books --trades {trades}"
        + (f" --phases {phases}" if phases else ""),
        "load_average_start": round(os.getloadavg()[0], 1),
    }
    if "lake" in chosen:
        result.update(lake_phase(trades, workdir))
    if "route" in chosen:
        _say("books: the book route at 500 requests/s ...")
        result["route"] = book_route.main(workdir, port, live_seconds or book_route.SECONDS)
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    return result


def lake_phase(trades: int, workdir: Path) -> dict[str, Any]:
    lake = workdir / "books-lake"
    shutil.rmtree(lake, ignore_errors=True)
    stream = frames(trades)
    _say(f"books: {len(stream):,} frames")
    result: dict[str, Any] = {"ours": ours(lake, stream)}
    _say(f"books: ours {result['ours']['level_changes_per_s']:,} changes/s")
    result["baseline"] = baseline(lake, stream)
    at = moments(stream, min(AT_SAMPLES, max(len(stream) // 2, 1)))
    result["ours"]["at"] = ours_at(lake, at)
    result["baseline"]["at"] = baseline_at(lake, at[: max(len(at) // 10, 1)])
    shutil.rmtree(lake, ignore_errors=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### Books: level changes into the lake, and books at any moment — {result['date']}",
        f"Machine: {result['machine']}; load average {result['load_average_end']} at the end."
        f" Command: `{result['command']}`.",
    ]
    if "ours" in result:
        lines += ["", _lake_table(result)]
    if "route" in result:
        r = result["route"]
        lines += [
            "",
            f"Book route from memory: `GET {r['path']}` at {r['rate']} requests/s for"
            f" {r['seconds']} s (open loop, {r['connections']} connections, a live Binance"
            f" book from the simulator): p50 {r['p50_ms']} / p99 {r['p99_ms']} ms, achieved"
            f" {r['achieved_per_s']}/s, statuses {r['statuses']}, timeouts {r['timeouts']},"
            f" errors {r['errors']}.",
        ]
    return "\n".join(lines)


def _lake_table(result: dict[str, Any]) -> str:
    o, b = result["ours"], result["baseline"]
    return "\n".join([
        "| measure | ours (engine, snapshots) | baseline (row per change, replay from start) |",
        "|---|---|---|",
        f"| level changes/s into the lake | {o['level_changes_per_s']:,}"
        f" ({o['level_changes']:,} in {o['seconds']} s, bronze included) |"
        f" {b['level_changes_per_s']:,} ({b['level_changes']:,} in {b['seconds']} s) |",
        f"| bytes per stored level change | {o['bytes_per_change']}"
        f" ({o['bytes_per_change_with_snapshots']} with snapshots) | {b['bytes_per_change']} |",
        f"| `at=` p50 / p99 | {o['at']['p50_ms']} / {o['at']['p99_ms']} ms (n={o['at']['n']})"
        f" | {b['at']['p50_ms']} / {b['at']['p99_ms']} ms (n={b['at']['n']}) |",
    ])  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(main(int(sys.argv[1]), Path(sys.argv[2]), 0), indent=2))
