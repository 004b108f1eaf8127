"""A restarted simulator continues what the lake holds (issue 20, item 6): after a restart the
first new trade of each product follows its last stored trade id, and the price walk goes on
from its last stored price instead of starting again from the seed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from crypto_sentinel.bus.kafka import KafkaPublisher, ensure_topics
from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.model import RawFrame
from crypto_sentinel.runtime import Pipeline, simulator_resume
from crypto_sentinel.simulator import Market
from crypto_sentinel.simulator.market import ResumePoint
from crypto_sentinel.simulator.resume import merge_points
from tests.conftest import free_port, read_table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
SEEDS = (3, 9)  # the second run's own start prices are > 0.5 % from the first run's end
TRADES = 600


async def run_simulated(lake: Path, seed: int) -> None:
    """`sentinel up --source simulator` in-process until its TRADES trades are stored."""
    settings = load_settings(
        source="simulator",
        lake_dir=lake,
        data_dir=lake.parent / "data",
        products=",".join(PRODUCTS),
        simulator_rate=1000,
        simulator_seed=seed,
        simulator_max_trades=TRADES,
    )
    pipeline = Pipeline(settings)
    task = asyncio.create_task(pipeline.run(with_api=False, install_signals=False))
    try:
        for _ in range(480):  # bounded: at most two minutes
            await asyncio.sleep(0.25)
            assert not task.done(), task
            sim = pipeline.simulator
            if sim is not None and sim.done and pipeline.engine.stats.trades >= TRADES:
                break
        else:
            raise AssertionError(f"only {pipeline.engine.stats.trades} of {TRADES} trades")
    finally:
        pipeline.stop_event.set()
        await asyncio.wait_for(task, 30)


def stored(lake: Path) -> dict[str, list[tuple[int, Decimal, int]]]:
    """(trade id, price, sequence) per product, by id; every trade and ticker once."""
    rows = read_table(lake, T.TRADES).to_pylist()
    assert len({(r["product_id"], r["trade_id"]) for r in rows}) == len(rows), "duplicates"
    assert {r["exchange"] for r in rows} == {"simulator"}
    tickers = read_table(lake, T.TICKERS).select(["product_id", "sequence"]).to_pylist()
    assert len({tuple(r.values()) for r in tickers}) == len(tickers), "duplicate tickers"
    out: dict[str, list[tuple[int, Decimal, int]]] = {}
    for r in sorted(rows, key=lambda r: r["trade_id"]):
        out.setdefault(r["product_id"], []).append((r["trade_id"], r["price"], r["sequence"]))
    return out


def assert_continues(before: dict[str, list[tuple[int, Decimal, int]]], after: dict) -> None:
    for p in PRODUCTS:
        last_id, last_price, _ = before[p][-1]
        new = [row for row in after[p] if row[0] > last_id]
        assert new, f"no new {p} trades"
        ids = [row[0] for row in after[p]]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{p} ids not contiguous"
        first_id, first_price, first_sequence = new[0]
        assert first_id == last_id + 1
        assert first_sequence > max(row[2] for row in before[p]), f"{p} sequence went back"
        # One step of the walk (sigma 0.005 %) from the stored price; a walk started again
        # from the second seed would begin more than 0.5 % away (checked below).
        assert abs(first_price / last_price - 1) < Decimal("0.0005"), (p, last_price, first_price)
        fresh = Decimal(Market(PRODUCTS, seed=SEEDS[1]).price(p))
        assert abs(fresh / last_price - 1) > Decimal("0.005"), "the seeds do not test anything"


async def test_sentinel_up_restart_continues_ids_and_prices(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    await run_simulated(lake, SEEDS[0])
    before = stored(lake)
    assert set(before) == set(PRODUCTS)
    await run_simulated(lake, SEEDS[1])
    after = stored(lake)
    assert sum(map(len, after.values())) == 2 * TRADES
    assert_continues(before, after)


async def test_sentinel_simulate_resumes_from_the_lake(tmp_path: Path) -> None:
    """The standalone simulator reads the same lake (`--lake`) and serves continuing ids."""
    lake = tmp_path / "lake"
    await run_simulated(lake, SEEDS[0])
    before = stored(lake)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crypto_sentinel.cli", "simulate", "--lake", str(lake),
         "--sim-port", str(port), "--seed", str(SEEDS[1]), "--max-trades", "300",
         "--rate", "1000", "--products", ",".join(PRODUCTS)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        after: dict[str, list[tuple[int, Decimal, int]]] = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(120):  # bounded: the server starts and emits its 300 trades
                await asyncio.sleep(0.25)
                try:
                    pages = [(await client.get(f"/products/{p}/trades")).json() for p in PRODUCTS]
                except httpx.TransportError:
                    continue
                if sum(map(len, pages)) >= 300:
                    for p, page in zip(PRODUCTS, pages, strict=True):
                        new = sorted(
                            (t["trade_id"], Decimal(t["price"]), sys.maxsize) for t in page
                        )  # REST trades carry no sequence
                        after[p] = before[p] + new
                    break
        assert after, "the simulator served no trades"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert_continues(before, after)
    assert "simulator resumes BTC-USD after trade" in out, out


async def test_over_kafka_the_logs_tail_counts_too(
    broker: tuple[Path, str], tmp_path: Path
) -> None:
    """Frames in Kafka that no processor stored yet are newer than the lake: a simulator that
    resumed from the lake alone would reuse their ids (and the engine drop its new trades)."""
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        bus="kafka",
        kafka_bootstrap=broker[1],
        kafka_topic_prefix=f"resume{tag}.",
        lake_dir=tmp_path / "lake",
        products=",".join(PRODUCTS),
    )
    ensure_topics(settings, ["simulator"])
    market = Market(PRODUCTS, seed=SEEDS[0], start_trade_id=1)
    publisher = KafkaPublisher(settings)
    last = {}
    for i in range(900):
        t = market.next_trade()
        last[t.product_id] = t
        for n, text in enumerate((market.match_frame(t), market.ticker_frame(t))):
            await publisher.publish(RawFrame("simulator", "c1", 2 * i + n, time.time_ns(), text))
    assert publisher.flush(60) == 0
    reader = LakeReader(settings.lake_root)
    assert simulator_resume(reader, PRODUCTS) == {}  # the lake holds nothing yet
    points = simulator_resume(reader, PRODUCTS, settings)
    assert points == {
        p: ResumePoint(t.trade_id, Decimal(t.price), t.sequence) for p, t in last.items()
    }


def test_merge_takes_the_newest_trade_and_the_highest_sequence() -> None:
    lake = {
        "BTC-USD": ResumePoint(10, Decimal("5.1"), 90),
        "ETH-USD": ResumePoint(7, Decimal(2), 9),
    }
    log = {"BTC-USD": ResumePoint(12, Decimal("5.3"), 80), "SOL-USD": ResumePoint(3, Decimal(1), 4)}
    assert merge_points(lake, log) == {
        "BTC-USD": ResumePoint(12, Decimal("5.3"), 90),
        "ETH-USD": ResumePoint(7, Decimal(2), 9),
        "SOL-USD": ResumePoint(3, Decimal(1), 4),
    }
