"""`sentinel verify` against a real simulator over REST: a complete lake passes, a lake with
a deleted trade fails with the missing id named and its candle differing from the exchange's."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from crypto_sentinel.cli import main
from crypto_sentinel.config import load_settings
from crypto_sentinel.gapflags import GapFlags, overlaps
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import GapRecord
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimulatorServer

pytestmark = pytest.mark.integration


async def fill_lake(lake: Path, sim: SimulatorServer) -> None:
    settings = load_settings(
        source="simulator",
        simulator_url=sim.ws_url,
        products=["BTC-USD"],
        lake_dir=lake,
        batch_interval_ms=100,
    )
    pipeline = Pipeline(settings)
    task = asyncio.create_task(pipeline.run(with_api=False, install_signals=False))
    await asyncio.wait_for(sim.wait_done(), 60)
    for _ in range(600):  # bounded: 60 s
        if pipeline.engine.stats.trades >= sim.emitted_count:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"{pipeline.engine.stats} of {sim.emitted_count} trades")
    pipeline.stop_event.set()
    await asyncio.wait_for(task, 60)


async def test_verify_passes_on_a_complete_lake_and_fails_on_a_missing_trade(
    lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = SimulatorServer(["BTC-USD"], rate=100, max_trades=300, wait_for_subscriber=True)
    async with sim:
        await fill_lake(lake, sim)
        args = ["verify", "--lake", str(lake), "--exchange", "simulator"]
        args += ["--rest-url", sim.rest_url, "--all-minutes"]
        assert await asyncio.to_thread(main, args) == 0
        clean = capsys.readouterr().out
        assert "COMPLETE" in clean and "incomplete minutes 0" in clean
        hours = re.findall(r"  complete minutes (\d+)/(\d+)", clean)
        assert hours and "<-- incomplete" not in clean
        for done, total in hours:  # every stored minute of every hour is complete
            assert done == total and int(total) > 0

        victim = sim.market.emitted()[150].trade_id
        DeltaTable(str(T.TRADES.path(lake))).delete(f"trade_id = {victim}")
        assert await asyncio.to_thread(main, args) == 1
    out = capsys.readouterr().out
    assert f"missing trade ids {victim}..{victim}" in out
    assert "INCOMPLETE" in out and "MISMATCH" in out


async def test_unfilled_gap_flags_its_candle_and_fails_verify(
    lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = SimulatorServer(["BTC-USD"], rate=100, max_trades=200, wait_for_subscriber=True)
    async with sim:
        await fill_lake(lake, sim)
        trades = sim.market.emitted()
        victim = trades[100]
        DeltaTable(str(T.TRADES.path(lake))).delete(f"trade_id = {victim.trade_id}")
        record = GapRecord(
            "simulator", "BTC-USD", "trade_id", victim.time, victim.trade_id, victim.trade_id,
            1, 0, "unfilled", time.time_ns(), "rest-test",
        )  # fmt: skip
        writer = LakeWriter(lake, "gap-test")
        writer.commit(Batch(version=1, gaps=[record]))
        args = ["verify", "--lake", str(lake), "--exchange", "simulator"]
        args += ["--rest-url", sim.rest_url, "--all-minutes"]
        assert await asyncio.to_thread(main, args) == 1
    assert "unfilled gaps 1" in capsys.readouterr().out
    flags = GapFlags(LakeReader(lake))
    flags.load()
    spans = flags.spans("simulator", "BTC-USD")
    minute = victim.time.replace(second=0, microsecond=0)
    assert overlaps(spans, minute, 60)
    assert not overlaps(spans, minute + timedelta(minutes=5), 60)
    assert not flags.spans("simulator", "ETH-USD")
