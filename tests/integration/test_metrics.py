"""Every metric declared at /metrics moves when its event happens, over a real pipeline.

The simulator source injects the events (disconnects, dropped ranges that REST backfills,
duplicates, malformed frames, repeated book updates; books on, over the Exchange's signed
level2), a WebSocket client takes live push, and the lake holds a batch
whose commit was interrupted (a replay killed after its bronze commit), so start-up derives it
again. /metrics is scraped while it runs, until each family has moved or the deadline passes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.writer import CRASH_AT_ENV
from crypto_sentinel.simulator import write_recording
from tests.served import served_pipeline

PRODUCTS = ["BTC-USD", "ETH-USD"]
#: Families whose event this pipeline cannot make happen, and the test that shows them move.
ELSEWHERE = {
    "sentinel_commit_retries": "tests/integration/test_maintenance.py (a conflict)",
    "sentinel_push_dropped_clients": "tests/integration/test_stream.py (a slow reader)",
    # Kafka mode only (set from the consumer's client statistics); no broker test checks it yet.
    "sentinel_kafka_consumer_lag_messages": "Kafka mode only",
    "sentinel_kafka_offsets_skipped": "tests/unit/test_kafka_frames.py (a jump over offsets)",
    # Coinbase Exchange's level2 has no sequence: its feed never starts a resync by itself.
    "sentinel_book_resyncs": "tests/integration/test_book_feeds.py (a Binance U/u gap)",
    # A reconnect's new connection starts with a snapshot: a break needs a faulty venue.
    "sentinel_book_breaks": "tests/chaos/test_book_faults.py (dropped, corrupted updates)",
}
#: Books on the Exchange feed need a signed subscribe (the simulator checks the fields only).
CREDENTIALS = {
    "coinbase_api_key": "metrics-key",
    "coinbase_api_secret": base64.b64encode(b"metrics secret").decode(),
    "coinbase_api_passphrase": "metrics-phrase",
}


def interrupted_replay(lake: Path, tmp: Path) -> None:
    """A replay killed right after its first bronze commit: silver lacks that batch."""
    recording = tmp / "rec.ndjson"
    write_recording(recording, PRODUCTS, 300, seed=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env |= {CRASH_AT_ENV: f"{T.BRONZE.name}:1", "SENTINEL_BATCH_MAX_FRAMES": "100"}
    proc = subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "replay", str(recording), "--lake",
         str(lake)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 70, proc.stderr[-3000:]


class Moves:
    """What each sentinel_* family did across scrapes."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.first: dict[str, dict[tuple[str, tuple], float]] = {}
        self.moved: set[str] = set()
        self.freshness: dict[tuple[str, str], float] = {}

    def scrape(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("sentinel_") or family.name.endswith("_created"):
                continue
            self.kinds[family.name] = family.type
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for s in family.samples
                if not s.name.endswith("_created")
            }
            first = self.first.setdefault(family.name, samples)
            if family.type == "counter":
                moved = any(v > 0 for n, v in samples.items() if n[0].endswith("_total"))
            elif family.type == "histogram":
                moved = any(v > 0 for n, v in samples.items() if n[0].endswith("_count"))
            else:  # a gauge: set for a new label set, or its value changed
                moved = samples.keys() != first.keys() or any(
                    v != first.get(k, 0.0) or v != 0 for k, v in samples.items()
                )
            if family.name == "sentinel_source_freshness_seconds":
                self.freshness = {
                    (dict(k[1])["exchange"], dict(k[1])["product_id"]): v
                    for k, v in samples.items()
                }
            if moved:
                self.moved.add(family.name)

    def unmoved(self) -> list[str]:
        return sorted(set(self.kinds) - self.moved - set(ELSEWHERE))


async def push_reader(port: int, counts: dict[str, int]) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
        await ws.send(json.dumps({
            "type": "subscribe", "product_ids": PRODUCTS,
            "channels": ["trades", "ticker", "candles:60"],
        }))  # fmt: skip
        async for raw in ws:
            kind = json.loads(raw).get("type", "")
            counts[kind] = counts.get(kind, 0) + 1


async def test_every_declared_metric_moves(lake: Path, tmp_path: Path) -> None:
    interrupted_replay(lake, tmp_path)
    # Counters live as long as the process (other tests ran pipelines before this one).
    before = {
        name: REGISTRY.get_sample_value(name, {"exchange": "simulator"}) or 0.0
        for name in ("sentinel_frames_total", "sentinel_trades_total")
    }
    faults = (
        "disconnect_every=2,drop=0.03,drop_max=3,duplicate=0.05,malformed=0.02,"
        "book_duplicate=0.05,seed=4"
    )
    moves = Moves()
    counts: dict[str, int] = {}
    async for client, pipeline in served_pipeline(
        lake, source="simulator", products=",".join(PRODUCTS), simulator_rate=400,
        simulator_faults=faults, batch_interval_ms=50, bus_capacity=20, books=True,
        **CREDENTIALS,
    ):  # fmt: skip
        port = pipeline.settings.port
        reader = asyncio.create_task(push_reader(port, counts))
        try:
            deadline = time.monotonic() + 150  # ends as soon as all moved
            while time.monotonic() < deadline:
                await client.get("/latest")
                moves.scrape((await client.get("/metrics")).text)
                if not moves.unmoved() and counts.get("trade") and moves.freshness:
                    break
                await asyncio.sleep(0.05)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        text = (await client.get("/metrics")).text
        engine_frames, engine_trades = pipeline.engine.stats.frames, pipeline.engine.stats.trades
    assert moves.unmoved() == [], f"declared but never moved: {moves.unmoved()}"
    for name in ELSEWHERE:
        assert name in moves.kinds, f"{name} is not declared at /metrics"
    # The new ones: frames and trades count what the engine took; freshness per product.
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    frames = values[("sentinel_frames_total", (("exchange", "simulator"),))]
    trades = values[("sentinel_trades_total", (("exchange", "simulator"),))]
    frames -= before["sentinel_frames_total"]
    trades -= before["sentinel_trades_total"]
    # The rederived batch (bronze fed through again at start) is not new input: not counted.
    assert frames <= engine_frames and trades <= engine_trades
    assert frames > 0 and trades > 0 and trades < frames
    assert set(moves.freshness) == {("simulator", p) for p in PRODUCTS}
    assert all(0 <= age < 5 for age in moves.freshness.values()), moves.freshness


async def test_freshness_grows_while_a_product_is_silent(lake: Path) -> None:
    """The exchange goes away: the age of the product's last frame keeps growing (while it
    sends, heartbeats keep even a quiet product fresh)."""
    async for client, pipeline in served_pipeline(
        lake, source="simulator", products="BTC-USD", simulator_rate=50, backfill=False,
    ):  # fmt: skip
        await pipeline.simulator.stop()
        ages: list[float] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = (await client.get("/metrics")).text
            for family in text_string_to_metric_families(text):
                if family.name == "sentinel_source_freshness_seconds":
                    ages += [s.value for s in family.samples]
            if len(ages) > 2 and ages[-1] > 2.5:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"freshness did not grow: {ages[-10:]}")
        assert ages[-1] > ages[-2], ages[-10:]
        assert pipeline.source is not None


@pytest.mark.parametrize("mixed", [False, True])
def test_frames_and_trades_counted_per_chunk_and_exchange(mixed: bool) -> None:
    """The engine's per-chunk increment labels each exchange's frames and trades."""
    import pyarrow as pa
    from prometheus_client import REGISTRY

    from crypto_sentinel import metrics
    from crypto_sentinel.model import RawFrame

    def value(name: str, exchange: str) -> float:
        return REGISTRY.get_sample_value(name, {"exchange": exchange}) or 0.0

    names = ["xa", "xb"] if mixed else ["xa", "xa"]
    frames = [RawFrame(names[i % 2], "c", i, 0, "{}") for i in range(5)]
    trades = pa.table({"exchange": [names[0], names[1], names[1]]})
    before = {(n, ex): value(n, ex) for n in ("sentinel_frames_total", "sentinel_trades_total")
              for ex in ("xa", "xb")}  # fmt: skip
    metrics.count_chunk(frames, trades)
    got = {k: value(*k) - v for k, v in before.items()}
    if mixed:
        assert got == {
            ("sentinel_frames_total", "xa"): 3,
            ("sentinel_frames_total", "xb"): 2,
            ("sentinel_trades_total", "xa"): 1,
            ("sentinel_trades_total", "xb"): 2,
        }
    else:
        assert got[("sentinel_frames_total", "xa")] == 5
        assert got[("sentinel_trades_total", "xa")] == 3
