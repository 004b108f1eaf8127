"""`rebuild` recomputes silver, gold and quarantine from bronze: equal to what the stream wrote,
idempotent, one atomic overwrite per table, respectful of bronze retention, and it leaves the
lake alone when someone writes meanwhile. What it writes is also checked against an independent
reading of the frames (plain json and Decimal, candles summed in plain Python), so a bug shared
by the stream and the rebuild (both run the same engine) cannot pass."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from crypto_sentinel.cli import main as cli_main
from crypto_sentinel.config import load_settings
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import Maintainer, Policy
from crypto_sentinel.lake.rebuild import DERIVED, RebuildError, rebuild
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import RawFrame
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import SimTrade, write_recording
from crypto_sentinel.simulator.market import Market
from tests.conftest import COINBASE_DATA, free_port, read_table
from tests.helpers import assert_candles_match_emitted

SESSION = COINBASE_DATA / "session.recv_ts.ndjson"
BAD_FRAMES = ["{not json", '{"type":"match","trade_id":"oops"}', "[]"]


def snapshot(lake: Path) -> dict[str, list[dict[str, Any]]]:
    """Every derived table as sorted rows (order within a table carries no meaning)."""
    out = {}
    for spec in DERIVED:
        rows = read_table(lake, spec).to_pylist()
        out[spec.name] = sorted(rows, key=lambda r: tuple(str(r[k]) for k in (*spec.key, "date")))
    return out


def trades_in(texts: Iterable[str]) -> list[SimTrade]:
    """The Coinbase trades (`match`, `last_match`) among raw frame texts, each id once,
    decoded with plain json: the reference the engine's output is held against."""
    seen: dict[tuple[str, int], SimTrade] = {}
    for text in texts:
        try:
            f = json.loads(text)
        except ValueError:
            continue
        if not isinstance(f, dict) or f.get("type") not in ("match", "last_match"):
            continue
        if not isinstance(f.get("trade_id"), int):
            continue
        when = datetime.fromisoformat(f["time"])
        orders = (f["maker_order_id"], f["taker_order_id"])
        trade = SimTrade(f["product_id"], f["trade_id"], f["price"], f["size"], f["side"],
                         when, f["sequence"], *orders)  # fmt: skip
        seen.setdefault((trade.product_id, trade.trade_id), trade)
    return list(seen.values())


def bronze_texts(lake: Path) -> list[str]:
    return read_table(lake, T.BRONZE).column("frame").to_pylist()


def assert_equals_reference(lake: Path, trades: list[SimTrade]) -> None:
    """Silver trades and gold 1-minute candles are what the frames say, exactly: every
    trade once with its decimal price and size and the taker's side, every minute's OHLCV."""
    assert trades, "no reference trades: the check would be empty"
    taker = {"buy": "sell", "sell": "buy"}  # Coinbase's side is the maker's
    want = {
        ("coinbase", t.product_id, t.trade_id): (
            Decimal(t.price),
            Decimal(t.size),
            taker[t.maker_side],
            t.time,
        )
        for t in trades
    }
    rows = read_table(lake, T.TRADES).to_pylist()
    got = {}
    for r in rows:
        got[(r["exchange"], r["product_id"], r["trade_id"])] = (
            r["price"], r["size"], r["side"], r["time"]
        )  # fmt: skip
    assert len(got) == len(rows), "a trade stored twice"
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())[:5]
    wrong = [k for k in want if got[k] != want[k]]
    assert not wrong, [(k, got[k], want[k]) for k in wrong[:3]]
    assert assert_candles_match_emitted(lake, trades, exchange="coinbase") > 0


def overwrite_commits(lake: Path, spec: T.TableSpec) -> int:
    """Commits that replaced the whole table (a candle upsert replaces the rows a predicate
    matches)."""
    history = DeltaTable(str(spec.path(lake))).history()
    return sum(
        1
        for h in history
        if h["operation"] == "WRITE"
        and h["operationParameters"]["mode"] == "Overwrite"
        and "predicate" not in h["operationParameters"]
    )


async def replay(lake: Path, path: Path) -> None:
    settings = load_settings(
        source=f"replay:{path}",
        lake_dir=lake,
        port=free_port(),
        batch_interval_ms=20,
        batch_max_frames=300,  # many small batches: candles merged across commits
        log_level="WARNING",
    )
    await Pipeline(settings).run(with_api=False, install_signals=False)


async def test_rebuild_gives_silver_and_gold_equal_to_the_stream(
    lake: Path, tmp_path: Path
) -> None:
    mixed = tmp_path / "mixed.ndjson"
    lines = SESSION.read_text().splitlines()
    mixed.write_text("\n".join(lines[:40] + BAD_FRAMES + lines[40:]) + "\n")
    simulated = tmp_path / "sim.ndjson"
    write_recording(simulated, ["BTC-USD", "ETH-USD"], 3_000, seed=5, rate=20.0)
    await replay(lake, mixed)
    await replay(lake, simulated)
    await replay(lake, mixed)  # a second run: bronze holds every frame twice, silver once
    original = snapshot(lake)
    assert len(original[T.TRADES.name]) == 27 + 3_000 + 2  # + the recording's last_match
    assert len(original[T.QUARANTINE.name]) == 2 * len(BAD_FRAMES)
    assert original[T.CANDLES_1M.name]

    result = rebuild(lake, batch_frames=5_000)

    assert result["rebuilt"] and result["replaced_from"] is None
    assert result["bronze_frames"] == read_table(lake, T.BRONZE).num_rows
    assert_equals_reference(lake, trades_in(bronze_texts(lake)))
    assert snapshot(lake) == original
    for spec in DERIVED:
        assert overwrite_commits(lake, spec) == 1  # one atomic replacement per table
    assert not (lake / "_rebuild").exists()


def market_frames(days: list[date], per_day: int) -> list[RawFrame]:
    """Coinbase match + ticker frames spread over whole days, received 1 ms after each trade."""
    market = Market(["BTC-USD", "ETH-USD"], seed=9, start_trade_id=1_000, history_limit=0)
    frames: list[RawFrame] = []
    for day in days:
        start = datetime.combine(day, datetime.min.time(), UTC)
        for k in range(per_day):
            when = start + timedelta(seconds=k * 86_400 // per_day + 7)
            trade = market.next_trade(when)
            recv = int((when + timedelta(milliseconds=1)).timestamp() * 1e9)
            for text in (market.match_frame(trade), market.ticker_frame(trade)):
                frames.append(RawFrame("coinbase", f"conn-{day}", len(frames), recv, text))
    return frames


def stream(lake: Path, frames: list[RawFrame], batch_frames: int = 40) -> None:
    """What the live engine does: decode per frame, commit small micro-batches."""
    writer = LakeWriter(lake, "sentinel-embedded")
    engine = Engine(writer, batch_interval=0.25, batch_max_frames=batch_frames)
    for i, frame in enumerate(frames, start=1):
        engine.process(frame)
        if i % batch_frames == 0 or i == len(frames):
            batch = engine.cut()
            assert batch is not None
            engine.committed(batch, writer.commit(batch))
    engine.close()


def test_rebuild_is_idempotent_and_recomputes_lost_rows(lake: Path) -> None:
    days = [date(2024, 2, 1), date(2024, 2, 2)]
    stream(lake, market_frames(days, 120))
    original = snapshot(lake)
    trades = DeltaTable(str(T.TRADES.path(lake)))
    trades.delete("product_id = 'ETH-USD' AND date = '2024-02-02'")  # a bug lost these rows
    assert len(snapshot(lake)[T.TRADES.name]) < len(original[T.TRADES.name])

    first = rebuild(lake)
    assert snapshot(lake) == original
    assert_equals_reference(lake, trades_in(bronze_texts(lake)))
    second = rebuild(lake)
    assert snapshot(lake) == original
    assert first["rows"] == second["rows"]
    for spec in DERIVED:
        assert overwrite_commits(lake, spec) == 2
    assert DeltaTable(str(T.TRADES.path(lake))).transaction_version("sentinel-embedded")


def test_rebuild_after_bronze_retention_keeps_what_bronze_no_longer_covers(lake: Path) -> None:
    days = [date(2024, 2, 1), date(2024, 2, 2), date(2024, 2, 3)]
    frames = market_frames(days, 96)
    stream(lake, frames)
    original = snapshot(lake)
    now = datetime(2024, 2, 3, 12, tzinfo=UTC)
    policy = Policy(retention_days={T.BRONZE.name: 1})
    assert Maintainer(lake, policy, now=lambda: now).retain(T.BRONZE)["expired"] == ["2024-02-01"]
    trades = DeltaTable(str(T.TRADES.path(lake)))
    trades.delete("date = '2024-02-03' AND product_id = 'BTC-USD'")  # lost after a bad deploy

    result = rebuild(lake)

    assert result["replaced_from"] == "2024-02-02"
    assert snapshot(lake) == original  # 1 Feb kept as it was, 2-3 Feb recomputed
    assert_equals_reference(lake, trades_in(f.text for f in frames))
    history = DeltaTable(str(T.TRADES.path(lake))).history(1)[0]
    assert "2024-02-02" in history["operationParameters"]["predicate"]


def test_rebuild_leaves_the_lake_alone_when_the_stream_writes_meanwhile(lake: Path) -> None:
    stream(lake, market_frames([date(2024, 2, 1)], 50))
    original = snapshot(lake)
    intruder = LakeWriter(lake, "another-writer")

    def write_meanwhile(_message: str) -> None:
        if intruder.last_version == 0:
            frame = market_frames([date(2024, 2, 5)], 1)[0]
            intruder.commit(Batch(version=1, frames=[frame]))

    with pytest.raises(RebuildError, match="changed while rebuilding"):
        rebuild(lake, progress=write_meanwhile)
    assert snapshot(lake) == original
    for spec in DERIVED:
        assert overwrite_commits(lake, spec) == 0
    assert not (lake / "_rebuild").exists()


def test_rebuild_verb(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream(lake, market_frames([date(2024, 2, 1)], 30))
    original = snapshot(lake)
    assert cli_main(["rebuild", "--lake", str(lake)]) == 0
    assert '"rebuilt": true' in capsys.readouterr().out
    assert snapshot(lake) == original
    assert_equals_reference(lake, trades_in(bronze_texts(lake)))
    empty = lake.parent / "empty"
    T.ensure_tables(empty)
    assert cli_main(["rebuild", "--lake", str(empty)]) == 0
    assert '"rebuilt": false' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli_main(["rebuild", "--help"])
    assert exit_.value.code == 0
