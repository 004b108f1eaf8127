"""`sentinel record --exchange VENUE` speaks each venue's protocol (here against the
simulator of that venue), and the file it writes replays to exactly the trades it holds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crypto_sentinel.config import LIVE_VENUES
from crypto_sentinel.lake import tables as T
from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.sources.venues import VENUES
from tests.conftest import read_table
from tests.integration.test_replay import expected_venue_trades

pytestmark = pytest.mark.e2e
SENTINEL = [sys.executable, "-m", "crypto_sentinel.cli"]
PRODUCTS = {"binance": "BTC-USDT,ETH-USDT", "kraken": "BTC-USD", "coinbase-advanced": "BTC-USD"}


def test_settings_and_cli_offer_every_venue_the_registry_knows() -> None:
    assert LIVE_VENUES == VENUES


@pytest.mark.parametrize("venue", sorted(PRODUCTS))
async def test_record_a_venue_and_replay_it(venue: str, tmp_path: Path) -> None:
    products = PRODUCTS[venue].split(",")
    out, lake = tmp_path / "rec.ndjson", tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env[f"SENTINEL_{venue.upper().replace('-', '_')}_PRODUCTS"] = PRODUCTS[venue]
    async with SimulatorServer(products, rate=200, seed=3, venue=venue) as sim:
        args = ["record", "--exchange", venue, "--url", sim.ws_url, "--out", str(out),
                "--max-frames", "150", "--duration", "60"]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *SENTINEL, *args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "recorded 150 frames" in stdout.decode()
    want = expected_venue_trades(venue, out)
    assert want, "the recording holds no trade"
    replay = subprocess.run(
        [*SENTINEL, "replay", str(out), "--exchange", venue, "--lake", str(lake)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-2000:]
    rows = read_table(lake, T.TRADES).to_pylist()
    got = {
        (r["product_id"], r["trade_id"]): (r["price"], r["size"], r["side"], r["venue_symbol"])
        for r in rows
    }
    assert len(got) == len(rows) and got == want
    assert {r["exchange"] for r in rows} == {venue}
    for line in out.read_text().splitlines():  # the replay format: receive time + raw frame
        assert set(json.loads(line)) == {"recv_ts", "raw"}
