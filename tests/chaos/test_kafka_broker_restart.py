"""Chaos on the Kafka bus: `sentinel ingest` -> Kafka -> `sentinel process` (real processes,
a real broker) while the exchange drops messages and connections, and the broker is stopped
and started again mid-stream. Backfilled pages travel through Kafka like streamed frames."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from crypto_sentinel.ops import kafka
from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.simulator.faults import FaultPlan, FaultSpec
from tests.helpers import (
    assert_candles_match_emitted,
    assert_silver_exact,
    compare_silver,
    connections_in_bronze,
    emitted_set,
    gap_rows,
    quarantine_reasons,
    write_report,
)
from tests.integration.test_kafka_pipeline import PRODUCTS, Cluster

pytestmark = pytest.mark.chaos


async def test_broker_restart_with_faulty_feed(broker: tuple[Path, str], tmp_path: Path) -> None:
    data, bootstrap = broker
    spec = FaultSpec(seed=31, disconnect_every=4.0, drop=0.01, drop_max=20)
    plan = FaultPlan(spec)
    started = time.monotonic()
    sim = SimulatorServer(
        PRODUCTS, rate=200, seed=spec.seed, max_trades=5000, faults=plan, wait_for_subscriber=True
    )
    await sim.start()
    cluster = Cluster(tmp_path, bootstrap, sim, SENTINEL_BACKOFF_CAP="1")
    report: dict[str, Any] = {
        "scenario": "kafka_broker_restart",
        "faults": {**spec.__dict__, "broker_restarts": 1},
        "passed": False,
    }
    emitted: dict = {}
    try:
        try:
            cluster.process()
            ingest = cluster.ingest()
            await cluster.wait_rows(800, 120)
            await asyncio.to_thread(kafka.stop, data)
            await asyncio.sleep(3)  # the outage: the ingest buffers and retries meanwhile
            assert ingest.poll() is None, cluster.logs()
            await asyncio.to_thread(kafka.start, data, timeout=90)
            await asyncio.wait_for(sim.wait_done(), 90)
            emitted = emitted_set(sim.market.emitted())
            for _ in range(240):  # bounded: every trade stored
                result = await asyncio.to_thread(compare_silver, cluster.lake, emitted)
                if result["lost"] == 0:
                    break
                await asyncio.sleep(0.5)
            await settled_gap_records(cluster.lake)
        finally:
            cluster.stop_all()
            await sim.stop()
        gaps = gap_rows(cluster.lake)
        result = compare_silver(cluster.lake, emitted)
        report.update(
            injected={**plan.counts(), "disconnects": sim.disconnects},
            trades_emitted=result["emitted"],
            disconnects=connections_in_bronze(cluster.lake) - 1,
            gaps=sum(1 for g in gaps if g["missing"]),
            gap_records=len(gaps),
            trades_backfilled=sum(g["backfilled"] for g in gaps),
            frames_quarantined=len(quarantine_reasons(cluster.lake)),
            kills_survived=0,
            lost=result["lost"],
            duplicated=result["duplicated"],
        )
        assert_silver_exact(cluster.lake, emitted)
        report["candles_checked"] = assert_candles_match_emitted(cluster.lake, sim.market.emitted())
        assert gaps and all(g["outcome"] == "filled" for g in gaps), gaps
        assert plan.dropped > 0 and sim.disconnects > 0
        report["passed"] = True
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        report["seconds"] = round(time.monotonic() - started, 1)
        write_report("kafka_broker_restart", report)


async def settled_gap_records(lake: Path) -> None:
    """Until the gap records in the lake stop changing for two polls a second apart (the last
    records follow the last backfilled page through Kafka); bounded at 30 s."""
    previous = -1
    for _ in range(30):
        count = len(await asyncio.to_thread(gap_rows, lake))
        if count == previous and count > 0:
            return
        previous = count
        await asyncio.sleep(1)
