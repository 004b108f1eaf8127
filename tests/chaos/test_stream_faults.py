"""Chaos on the wire: the simulator injects faults (seeded), the real pipeline runs against
it over real sockets, and the lake must end up exactly equal to what the exchange emitted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from crypto_sentinel.verify import render, verify
from tests.helpers import (
    assert_candles_match_silver,
    assert_silver_exact,
    chaos_settings,
    emitted_set,
    gap_rows,
    quarantine_reasons,
    write_report,
)

pytestmark = pytest.mark.chaos
PRODUCTS = ["BTC-USD", "ETH-USD"]


async def run_scenario(lake: Path, name: str, spec: FaultSpec, rate: float, trades: int) -> dict:
    """Stream `trades` trades through the faults, stop cleanly, compare, report."""
    plan = FaultPlan(spec)
    started = time.monotonic()
    async with SimulatorServer(
        PRODUCTS,
        rate=rate,
        seed=spec.seed,
        max_trades=trades,
        faults=plan,
        wait_for_subscriber=True,  # no trade is emitted before the pipeline listens
    ) as sim:
        settings = chaos_settings(sim.ws_url, PRODUCTS, lake)
        pipeline = Pipeline(settings)
        task = asyncio.create_task(pipeline.run(with_api=True, install_signals=False))
        try:
            await wait_until_complete(sim, pipeline, task)
            await check_counters(settings.port, pipeline)
        finally:
            pipeline.stop_event.set()
            await asyncio.wait_for(task, 60)
        # What users run: the lake against the exchange's own REST trades and candles.
        checked = await verify(lake, "simulator", sim.rest_url, None, all_minutes=True)
        assert checked and all(r.ok for r in checked), render(checked, "simulator")
    emitted = emitted_set(sim.market.emitted())
    result = assert_silver_exact(lake, emitted)
    candles = assert_candles_match_silver(lake)
    gaps = gap_rows(lake)
    assert all(g["outcome"] == "filled" for g in gaps), gaps
    source = pipeline.source.status if pipeline.source else None
    assert source is not None
    report: dict[str, Any] = {
        "scenario": name,
        "faults": spec.__dict__,
        "injected": {**plan.counts(), "disconnects": sim.disconnects},
        "trades_emitted": result["emitted"],
        "disconnects": source.reconnects,
        "gaps": source.gaps,
        "gap_records": len(gaps),
        "trades_backfilled": source.backfilled_trades,
        "frames_quarantined": len(quarantine_reasons(lake)),
        "kills_survived": 0,
        "lost": result["lost"],
        "duplicated": result["duplicated"],
        "candles_checked": candles,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_report(name, report)
    return report


async def check_counters(port: int, pipeline: Pipeline) -> None:
    """The reliability counters are visible at /health and /metrics."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        health = (await client.get("/health")).json()
        metrics = (await client.get("/metrics")).text
    shown, now = health["reliability"], pipeline.reliability()
    assert shown.keys() == now.keys()
    assert all(0 <= shown[k] <= now[k] for k in now)  # counters only grow
    assert {"reconnects", "gaps", "backfilled_trades", "quarantined_frames"} <= shown.keys()
    for name in ("sentinel_reconnects_total", "sentinel_backfilled_trades_total",
                 "sentinel_trade_id_gaps_total", "sentinel_quarantined_frames_total"):  # fmt: skip
        assert name in metrics


async def wait_until_complete(
    sim: SimulatorServer, pipeline: Pipeline, task: asyncio.Task[None], limit: float = 120
) -> None:
    """Until every emitted trade is accepted and no backfill is pending."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert not task.done(), task
        source = pipeline.source
        backfill = getattr(source, "backfill", None)
        idle = backfill is None or backfill.queue.empty()
        if sim.done and pipeline.engine.stats.trades >= sim.emitted_count and idle:
            await asyncio.sleep(0.5)  # let the last gap record reach the engine
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"incomplete: {pipeline.engine.stats} of {sim.emitted_count}")


async def test_disconnect_every_two_seconds(lake: Path) -> None:
    spec = FaultSpec(seed=11, disconnect_every=2.0)
    report = await run_scenario(lake, "disconnects", spec, rate=150, trades=1500)
    assert report["injected"]["disconnects"] >= 3
    assert report["disconnects"] >= report["injected"]["disconnects"]
    assert report["gap_records"] >= report["disconnects"]  # one record per product and drop


async def test_dropped_message_ranges_are_backfilled(lake: Path) -> None:
    spec = FaultSpec(seed=12, drop=0.02, drop_max=30)
    report = await run_scenario(lake, "dropped_ranges", spec, rate=200, trades=2000)
    assert report["injected"]["dropped"] > 0
    assert report["gaps"] > 0 and report["trades_backfilled"] > 0


async def test_duplicated_and_out_of_order_messages(lake: Path) -> None:
    spec = FaultSpec(seed=13, duplicate=0.05, reorder=0.05)
    report = await run_scenario(lake, "duplicates_reordering", spec, rate=200, trades=2000)
    assert report["injected"]["duplicated"] > 0 and report["injected"]["reordered"] > 0


async def test_one_percent_malformed_frames_are_quarantined(lake: Path) -> None:
    spec = FaultSpec(seed=14, malformed=0.01)
    report = await run_scenario(lake, "malformed_frames", spec, rate=200, trades=2000)
    assert report["injected"]["malformed"] > 0
    assert report["frames_quarantined"] == report["injected"]["malformed"]
    reasons = quarantine_reasons(lake)
    assert any("invalid JSON" in r for r in reasons) or any("must be > 0" in r for r in reasons)
