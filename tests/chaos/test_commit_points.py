"""Raw first, at every commit point: a replay is killed (`os._exit`) right after its second
commit to each table in turn, then a process starts on the lake with nothing new to read.

At start it must derive again what bronze holds and a derived table lacks. Checked against
the frames bronze holds, decoded here independently: silver = the trades and tickers in those
frames (each once), quarantine = the bad frames, gaps = the gap frames, gold = a DuckDB
recomputation from the trades, and `sentinel rebuild` gives silver back unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.writer import CRASH_AT_ENV
from crypto_sentinel.simulator import write_recording
from tests.conftest import read_table
from tests.helpers import assert_candles_match_silver

pytestmark = pytest.mark.chaos

#: The book tables' commit points are killed in tests/integration/test_books_lake.py (this
#: recording has no book frames, so nothing commits to them here).
POINTS = [spec.name for spec in T.ALL_TABLES if spec not in (T.BOOK_UPDATES, T.BOOK_SNAPSHOTS)]
TAKER = {"buy": "sell", "sell": "buy"}
BAD_FRAMES = ["{not json", '{"type":"match","trade_id":"oops"}', '{"type":"ticker"}']


def gap_frame(n: int) -> str:
    return json.dumps(
        {
            "type": "gap", "product_id": "BTC-USD", "kind": "trade_id",
            "detected_at": f"2026-11-30T10:00:{n:02d}.000000Z", "first_missing_id": n,
            "last_missing_id": n, "missing": 1, "backfilled": 1, "outcome": "filled",
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated trades with a bad frame every 250 lines and a gap record every 600."""
    folder = tmp_path_factory.mktemp("rec")
    plain = folder / "plain.ndjson"
    write_recording(plain, ["BTC-USD", "ETH-USD"], 1500, seed=5)
    lines = plain.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if i % 250 == 100:
            out.append(BAD_FRAMES[(i // 250) % len(BAD_FRAMES)])
        if i % 600 == 300:
            out.append(gap_frame(i // 600))
        out.append(line)
    path = folder / "faulty.ndjson"
    path.write_text("\n".join(out) + "\n")
    (folder / "empty.ndjson").write_text("")
    return path


def replay(lake: Path, path: Path, crash_at: str | None, log: Path) -> int:
    cmd = [sys.executable, "-m", "crypto_sentinel.cli", "replay", str(path), "--lake", str(lake)]
    env = {**os.environ, "SENTINEL_BATCH_MAX_FRAMES": "400", "SENTINEL_BATCH_INTERVAL_MS": "50"}
    env.pop(CRASH_AT_ENV, None)
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    with log.open("ab") as out:
        return subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=240
        ).returncode


def bronze_truth(lake: Path) -> dict[str, Any]:
    """What the frames in bronze say, decoded with the json module (not our codec)."""
    trades: dict[tuple[str, int], tuple[Decimal, Decimal, str]] = {}
    tickers: set[tuple[str, int]] = set()
    bad: set[tuple[str, int]] = set()
    gaps: set[tuple[str, str]] = set()
    for row in read_table(lake, T.BRONZE).to_pylist():
        text = row["frame"]
        if text in BAD_FRAMES:
            bad.add((row["conn_id"], row["recv_seq"]))
            continue
        msg = json.loads(text)
        kind = msg["type"]
        if kind in ("match", "last_match"):
            key = (msg["product_id"], msg["trade_id"])
            trades[key] = (Decimal(msg["price"]), Decimal(msg["size"]), TAKER[msg["side"]])
        elif kind == "ticker":
            tickers.add((msg["product_id"], msg["sequence"]))
        elif kind == "gap":
            gaps.add((msg["product_id"], msg["detected_at"][:19]))
    return {"trades": trades, "tickers": tickers, "bad": bad, "gaps": gaps}


def silver_trades(lake: Path) -> tuple[int, dict[tuple[str, int], tuple[Decimal, Decimal, str]]]:
    rows = read_table(lake, T.TRADES).to_pylist()
    stored = {(r["product_id"], r["trade_id"]): (r["price"], r["size"], r["side"]) for r in rows}
    return len(rows), stored


@pytest.mark.parametrize("point", POINTS)
def test_killed_after_each_commit_point_the_lake_equals_bronze(
    point: str, recording: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    log = tmp_path / "replay.log"
    rc = replay(lake, recording, f"{point}:2", log)
    assert rc == 70, f"the crash hook did not fire after {point}\n" + log.read_text()[-3000:]
    rc = replay(lake, recording.parent / "empty.ndjson", None, log)
    assert rc == 0, log.read_text()[-3000:]

    truth = bronze_truth(lake)
    assert truth["trades"] and truth["bad"] and truth["tickers"], "the crash came too early"
    count, stored = silver_trades(lake)
    assert count == len(stored), "a trade is stored twice"
    assert stored == truth["trades"], (
        f"lost {len(truth['trades'].keys() - stored.keys())},"
        f" without a frame {len(stored.keys() - truth['trades'].keys())}"
    )
    tickers = [(r["product_id"], r["sequence"]) for r in read_table(lake, T.TICKERS).to_pylist()]
    assert len(tickers) == len(set(tickers)) and set(tickers) == truth["tickers"]
    quarantined = read_table(lake, T.QUARANTINE).to_pylist()
    assert sorted((r["conn_id"], r["recv_seq"]) for r in quarantined) == sorted(truth["bad"])
    gaps = read_table(lake, T.GAPS).to_pylist()
    assert sorted((g["product_id"], g["detected_at"].isoformat()[:19]) for g in gaps) == sorted(
        truth["gaps"]
    )
    assert assert_candles_match_silver(lake) > 0

    before = stored
    out = subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "rebuild", "--lake", str(lake)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    count, rebuilt = silver_trades(lake)
    assert count == len(rebuilt) and rebuilt == before
    assert assert_candles_match_silver(lake) > 0
