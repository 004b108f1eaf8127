"""The load generator of `sentinel bench api` against a real pipeline: bounded, every
request answered, and the measurements it reports are well formed (no timing asserted)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from bench.api import closed_loop, day_of_candles, markdown, open_loop, percentiles

from crypto_sentinel.config import load_settings
from crypto_sentinel.runtime import Pipeline
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


async def test_load_generator_against_a_live_pipeline(lake: Path) -> None:
    port = free_port()
    settings = load_settings(source="simulator", lake_dir=lake, port=port, simulator_rate=100)
    pipeline = Pipeline(settings)
    task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                await asyncio.sleep(0.05)
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    continue
        fixed = await open_loop(port, ["/latest", "/v1/products"], rate=200, seconds=1,
                                connections=4)  # fmt: skip
        assert fixed["requests"] == 200 and fixed["n"] == 200
        assert fixed["statuses"] == {"200": 200} and fixed["timeouts"] == fixed["errors"] == 0
        assert 0 < fixed["p50_ms"] <= fixed["p99_ms"] <= fixed["max_ms"]
        closed = await closed_loop(port, "/latest", connections=2, seconds=0.5)
        assert closed["n"] > 0 and closed["requests_per_s"] > 0
        day = await day_of_candles(port, "BTC-USD", repeats=2, exchange="simulator")
        assert day["pages"] == 5 and day["day"]["n"] == 2 and day["page"]["n"] == 10
        assert day["candles"] >= 1  # the live minute at least
    finally:
        pipeline.stop_event.set()
        await asyncio.wait_for(task, 20)


def test_percentiles_and_markdown_rows() -> None:
    p = percentiles([i * 1_000_000 for i in range(1, 101)])
    assert (p["p50_ms"], p["p99_ms"], p["max_ms"], p["n"]) == (51.0, 100.0, 100.0, 100)
    lat = {**p, "offered_per_s": 1000, "achieved_per_s": 999.0, "requests": 100,
           "timeouts": 0, "errors": 0, "statuses": {"200": 100}}  # fmt: skip
    day = {"day": p, "page": p, "pages": 5, "candles": 1440}
    result = {
        "trades": 1000, "date": "2026-01-01T00:00:00+00:00", "machine": "m", "command": "c",
        "live_rate": 200, "seed_files": 10, "latest_1000": lat, "seed_1000": lat,
        "latest_one_client": p, "seed_one_client": {**p, "requests_per_s": 10},
        "latest_max": {**p, "requests_per_s": 2000}, "frame_to_ws_client": p,
        "frame_to_ws_client_idle": p, "day_hot": day, "day_lake": day,
        "lake_latest_one_client": p, "routes": {"ticker": lat},
        "pipeline_rss": {"rss_mb": 1.0, "peak_rss_mb": 2.0},
        "rss_after_warmup": {"rss_mb": 1.0, "peak_rss_mb": 1.0}, "warmup_seconds": 0.1,
        "build": {"replay_trades_per_s": 5000, "replay_seconds": 1.0},
    }  # fmt: skip
    text = markdown(result)
    assert text.count("\n| ") == 13 and "51.0 / 100.0 ms" in text and "p99 <= 5 ms" in text
