"""Replaying the real recorded Coinbase frames yields exactly their trades; bad frames go to
quarantine with a reason while good data in the same batch is kept."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from crypto_sentinel.config import load_settings
from crypto_sentinel.engine.processor import BRONZE_BUILD_FRAMES
from crypto_sentinel.lake import tables as T
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import write_recording
from tests.conftest import COINBASE_DATA, SHARED, free_port, read_table

SESSION = COINBASE_DATA / "session.recv_ts.ndjson"


def expected_trades(path: Path) -> dict[tuple[str, int], tuple[Decimal, Decimal, str]]:
    """Independent reading of the recording: plain json with Decimal, taker = not maker."""
    out = {}
    for line in path.read_text().splitlines():
        msg = json.loads(json.loads(line)["raw"], parse_float=Decimal)
        if msg["type"] in ("match", "last_match"):
            taker = "buy" if msg["side"] == "sell" else "sell"
            out[(msg["product_id"], msg["trade_id"])] = (
                Decimal(msg["price"]),
                Decimal(msg["size"]),
                taker,
            )
    return out


async def replay(lake: Path, path: Path) -> Pipeline:
    settings = load_settings(
        source=f"replay:{path}", lake_dir=lake, port=free_port(), batch_interval_ms=50
    )
    pipeline = Pipeline(settings)
    await pipeline.run(with_api=False, install_signals=False)
    return pipeline


def silver_trades(lake: Path) -> dict[tuple[str, int], tuple[Decimal, Decimal, str]]:
    rows = read_table(lake, T.TRADES).to_pylist()
    keys = [(r["product_id"], r["trade_id"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate trades in silver"
    return {(r["product_id"], r["trade_id"]): (r["price"], r["size"], r["side"]) for r in rows}


async def test_recording_replays_to_exactly_its_trades(lake: Path) -> None:
    await replay(lake, SESSION)
    want = expected_trades(SESSION)
    assert len(want) == 27
    assert silver_trades(lake) == want
    bronze = read_table(lake, T.BRONZE)
    assert bronze.num_rows == len(SESSION.read_text().splitlines())
    raw = [json.loads(line)["raw"] for line in SESSION.read_text().splitlines()]
    assert sorted(bronze.column("frame").to_pylist()) == sorted(raw)  # kept exactly
    assert read_table(lake, T.QUARANTINE).num_rows == 0
    candles = read_table(lake, T.CANDLES_1M)
    assert pc.sum(candles.column("trade_count")).as_py() == 27


async def test_bare_frame_recording_replays_too(lake: Path) -> None:
    await replay(lake, COINBASE_DATA / "session.ndjson")
    assert silver_trades(lake) == expected_trades(SESSION)


async def test_replaying_twice_adds_no_duplicates(lake: Path) -> None:
    await replay(lake, SESSION)
    first = read_table(lake, T.CANDLES_1M).sort_by(
        [("product_id", "ascending"), ("start", "ascending")]
    )
    await replay(lake, SESSION)
    assert silver_trades(lake) == expected_trades(SESSION)
    assert read_table(lake, T.TICKERS).num_rows == 27
    again = read_table(lake, T.CANDLES_1M).sort_by(
        [("product_id", "ascending"), ("start", "ascending")]
    )
    assert again.equals(first)


async def test_malformed_frames_are_quarantined_and_good_data_kept(
    lake: Path, tmp_path: Path
) -> None:
    bad = [
        "{not json",
        '{"type":"match","trade_id":"oops"}',
        '{"type":"mystery","product_id":"BTC-USD"}',
        '{"type":"match","trade_id":5,"side":"buy","size":"-1","price":"10",'
        '"product_id":"BTC-USD","time":"2021-04-17T16:43:37.089723Z"}',
        "[]",
    ]
    lines = SESSION.read_text().splitlines()
    mixed = []
    for i, line in enumerate(lines):
        mixed.append(line)
        if i % 10 == 5 and bad:
            mixed.append(bad.pop(0))
    mixed.extend(bad)
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(mixed) + "\n")
    pipeline = await replay(lake, path)
    assert silver_trades(lake) == expected_trades(SESSION)
    quarantine = read_table(lake, T.QUARANTINE).to_pylist()
    assert len(quarantine) == 5 == pipeline.engine.stats.quarantined
    reasons = " | ".join(sorted(q["reason"] for q in quarantine))
    for part in ("invalid JSON", "Expected `int`", "unknown message type", "size must be > 0"):
        assert part in reasons
    assert {q["frame"] for q in quarantine} >= {"{not json", "[]"}


def expected_venue_trades(exchange: str, path: Path) -> dict[tuple[str, int], tuple]:
    """Independent reading of another venue's recording with plain json and Decimal: price,
    size, taker side and the venue's own symbol per trade."""
    out: dict[tuple[str, int], tuple] = {}
    for line in path.read_text().splitlines():
        msg = json.loads(line)
        if "raw" in msg:  # a recording with receive times: the frame is in `raw`
            line = msg["raw"]
            msg = json.loads(line)
        if exchange == "binance":
            d = msg["data"]
            if d.get("e") == "aggTrade":
                base, quote = d["s"][:-4], d["s"][-4:]
                if quote not in ("USDT", "BUSD"):
                    base, quote = d["s"][:-3], d["s"][-3:]
                side = "sell" if d["m"] else "buy"
                out[(f"{base}-{quote}", d["a"])] = (Decimal(d["p"]), Decimal(d["q"]), side, d["s"])
        elif msg.get("channel") == "trade":  # Kraken v2: numbers are exact decimals
            for t in json.loads(line, parse_float=Decimal, parse_int=Decimal)["data"]:
                key = (t["symbol"].replace("/", "-"), int(t["trade_id"]))
                out[key] = (t["price"], t["qty"], t["side"], t["symbol"])
        elif msg.get("channel") == "market_trades":
            for event in msg["events"]:
                for t in event["trades"]:
                    side = "sell" if t["side"] == "BUY" else "buy"
                    key = (t["product_id"], int(t["trade_id"]))
                    out[key] = (Decimal(t["price"]), Decimal(t["size"]), side, t["product_id"])
    return out


@pytest.mark.parametrize(
    ("exchange", "recording", "count"),
    [
        ("binance", "binance/aggTrade_combined_stream.ndjson", 54),
        ("coinbase-advanced", "coinbase_advanced/session.recv_ts.ndjson", 147),
        # Kraken v2, written from the documented message shapes (the shared recording is v1).
        ("kraken", Path(__file__).parent.parent / "fixtures" / "kraken_v2_session.ndjson", 6),
    ],
)
async def test_other_venue_recordings_replay_to_exactly_their_trades(
    lake: Path, exchange: str, recording: str | Path, count: int
) -> None:
    path = SHARED / "data" / recording
    settings = load_settings(
        source=f"replay:{path}", replay_exchange=exchange, lake_dir=lake, port=free_port(),
        batch_interval_ms=50,
    )  # fmt: skip
    await Pipeline(settings).run(with_api=False, install_signals=False)
    want = expected_venue_trades(exchange, path)
    assert len(want) == count
    rows = read_table(lake, T.TRADES).to_pylist()
    got = {
        (r["product_id"], r["trade_id"]): (r["price"], r["size"], r["side"], r["venue_symbol"])
        for r in rows
    }
    assert len(got) == len(rows) and got == want
    assert set(read_table(lake, T.TRADES).column("exchange").to_pylist()) == {exchange}
    assert read_table(lake, T.QUARANTINE).num_rows == 0
    candles = read_table(lake, T.CANDLES_1M)
    assert pc.sum(candles.column("trade_count")).as_py() == count


async def test_a_lake_from_before_the_venue_symbol_column_gets_it(lake: Path) -> None:
    """A lake written by an earlier release (silver.trades without `venue_symbol`) keeps
    its rows (null symbol) and stores new trades with their symbol."""
    old_schema = pa.schema([f for f in T.TRADES.schema if f.name != "venue_symbol"])
    uri = T.TRADES.uri(lake)
    Path(uri).mkdir(parents=True)
    old_row = {name: [value] for name, value in OLD_ROW.items()}
    write_deltalake(
        uri, pa.table(old_row, schema=old_schema), partition_by=list(T.TRADES.partition_by)
    )
    path = SHARED / "data" / "binance" / "aggTrade_combined_stream.ndjson"
    settings = load_settings(
        source=f"replay:{path}", replay_exchange="binance", lake_dir=lake, port=free_port(),
        batch_interval_ms=50,
    )  # fmt: skip
    await Pipeline(settings).run(with_api=False, install_signals=False)
    rows = read_table(lake, T.TRADES).to_pylist()
    symbols = {(r["exchange"], r["venue_symbol"]) for r in rows}
    assert ("coinbase", None) in symbols  # the old row, kept
    want = {t[3] for t in expected_venue_trades("binance", path).values()}
    assert {s for ex, s in symbols if ex == "binance"} == want
    assert len(rows) == 1 + 54


OLD_ROW = {
    "exchange": "coinbase", "product_id": "BTC-USD", "trade_id": 1, "price": Decimal("1.5"),
    "size": Decimal("2"), "side": "buy", "time": datetime(2024, 1, 2, tzinfo=UTC),
    "recv_time": datetime(2024, 1, 2, tzinfo=UTC), "sequence": None, "maker_order_id": None,
    "taker_order_id": None, "conn_id": "c", "date": date(2024, 1, 2),
}  # fmt: skip


async def test_no_batch_holds_more_frames_than_the_limit(lake: Path, tmp_path: Path) -> None:
    """A backlog is taken in chunks no larger than the room left in the batch, so
    `batch_max_frames` bounds every commit (crash tests rely on many small batches)."""
    recording = tmp_path / "sim.ndjson"
    write_recording(recording, ["BTC-USD", "ETH-USD"], 1_500, seed=3, rate=50.0)
    settings = load_settings(
        source=f"replay:{recording}",
        lake_dir=lake,
        port=free_port(),
        batch_interval_ms=10_000,  # only the limit cuts batches
        batch_max_frames=400,
    )
    await Pipeline(settings).run(with_api=False, install_signals=False)
    history = DeltaTable(str(T.BRONZE.path(lake))).history()
    rows = [
        int(h["operationMetrics"]["num_added_rows"]) for h in history if h["operation"] == "WRITE"
    ]
    frames = len(recording.read_text().splitlines())
    assert sum(rows) == frames == read_table(lake, T.BRONZE).num_rows
    assert max(rows) <= 400 and len(rows) >= frames // 400, rows


async def test_a_batch_keeps_bronze_rows_not_frames(lake: Path, tmp_path: Path) -> None:
    """Frames leave the batch as bronze rows once a thousand wait (the frame objects cost
    ~600 bytes each on top of the row); bronze still gets every one."""
    recording = tmp_path / "sim.ndjson"
    write_recording(recording, ["BTC-USD"], 4_000, seed=5, rate=50.0)
    settings = load_settings(source=f"replay:{recording}", lake_dir=lake, port=free_port())
    pipeline = Pipeline(settings)
    batches: list[tuple[int, int, int]] = []  # frames kept, rows built, frames taken
    pipeline.engine.on_commit.append(
        lambda b: batches.append(
            (len(b.frames), sum(t.num_rows for t in b.bronze_tables), b.frame_count)
        )
    )
    await pipeline.run(with_api=False, install_signals=False)
    frames = len(recording.read_text().splitlines())
    assert all(kept < BRONZE_BUILD_FRAMES and kept + built == n for kept, built, n in batches)
    assert sum(built for _, built, _ in batches) > frames - BRONZE_BUILD_FRAMES, batches
    assert sum(taken for *_, taken in batches) == frames == read_table(lake, T.BRONZE).num_rows
