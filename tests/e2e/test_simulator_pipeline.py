"""End to end: the simulator streams over a real WebSocket into the pipeline and the lake
holds exactly the emitted trades; candles equal an independent DuckDB recomputation."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.runtime import Pipeline
from tests.conftest import free_port, read_table
from tests.helpers import assert_candles_match_silver

RATE = 2000
SECONDS = 20

pytestmark = pytest.mark.e2e


async def test_simulator_2000_per_second_for_20_seconds_is_exact(lake: Path) -> None:
    port = free_port()
    settings = load_settings(
        source="simulator",
        lake_dir=lake,
        port=port,
        simulator_rate=RATE,
        simulator_seed=42,
        simulator_max_trades=RATE * SECONDS,
    )
    pipeline = Pipeline(settings)
    task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            seen_live = False
            for _ in range(int(SECONDS * 3 / 0.25)):
                await asyncio.sleep(0.25)
                assert not task.done(), task
                sim = pipeline.simulator
                if sim is None:
                    continue
                if not seen_live:
                    try:
                        body = (await client.get("/latest")).json()
                    except httpx.TransportError:
                        continue
                    seen_live = bool(body["data"])
                    if seen_live:
                        assert body["data"][0]["exchange"] == "simulator"
                if sim.done and pipeline.engine.stats.trades >= RATE * SECONDS:
                    break
            health = (await client.get("/health")).json()
    finally:
        pipeline.stop_event.set()
        await asyncio.wait_for(task, 30)
    assert seen_live
    assert health["source"]["kind"] == "simulator" and health["source"]["simulated"]

    emitted = {
        (t.product_id, t.trade_id): (Decimal(t.price), Decimal(t.size))
        for t in pipeline.simulator.market.emitted()
    }
    assert len(emitted) == RATE * SECONDS
    rows = read_table(lake, T.TRADES).to_pylist()
    stored = {(r["product_id"], r["trade_id"]): (r["price"], r["size"]) for r in rows}
    assert len(rows) == len(stored), "duplicate trades in silver"
    assert stored.keys() == emitted.keys()
    assert stored == emitted  # exact decimals
    assert {r["exchange"] for r in rows} == {"simulator"}
    assert_candles_match_silver(lake)
