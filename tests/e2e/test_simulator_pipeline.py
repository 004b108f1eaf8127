"""End to end: the simulator streams over a real WebSocket into the pipeline and the lake
holds exactly the emitted trades; candles equal an independent DuckDB recomputation."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import duckdb
import httpx
import pytest
from deltalake import DeltaTable

from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.runtime import Pipeline
from tests.conftest import free_port, read_table

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


def assert_candles_match_silver(lake: Path) -> None:
    """Recompute 1-minute candles from silver with DuckDB and compare every minute."""
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    files = DeltaTable(str(T.TRADES.path(lake))).file_uris()
    expected = db.execute(
        """
        SELECT exchange, product_id, date_trunc('minute', time) AS start,
               arg_min(price, trade_id) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, trade_id) AS close, sum(size) AS volume,
               coalesce(sum(size) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
               coalesce(sum(size) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
               sum(price * size) AS quote_volume, count(*) AS trade_count,
               min(trade_id) AS first_trade_id, max(trade_id) AS last_trade_id,
               min(time) AS first_trade_time, max(time) AS last_trade_time
        FROM read_parquet(?, hive_partitioning = true)
        GROUP BY ALL ORDER BY ALL
        """,
        [files],
    ).fetchall()
    names = [d[0] for d in db.description or []]
    want = {(r[0], r[1], r[2]): dict(zip(names, r, strict=True)) for r in expected}
    candles = read_table(lake, T.CANDLES_1M).to_pylist()
    got = {(c["exchange"], c["product_id"], c["start"]): c for c in candles}
    assert len(candles) == len(got), "duplicate candles"
    assert got.keys() == want.keys()
    for key, exp in want.items():
        row = got[key]
        for name in names:
            assert row[name] == exp[name], (key, name, row[name], exp[name])
        vwap = (Decimal(exp["quote_volume"]) / Decimal(exp["volume"])).quantize(Decimal("1e-12"))
        assert row["vwap"] == vwap
