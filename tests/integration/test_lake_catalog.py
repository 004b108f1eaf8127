"""The analysts' reads: `Lake`, `sentinel sql|export` and the REST API agree, over a lake
written by the real engine; as-of reads see a backfilled minute as it was before.

The lake spans midnight (two date partitions) with two products; the API runs over it with
empty hot state, so every answer it gives comes from the lake.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from crypto_sentinel import Lake
from crypto_sentinel.api.app import create_app
from crypto_sentinel.api.state import HotState
from crypto_sentinel.cli import main
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.catalog import AsOfError, LakeError
from crypto_sentinel.lake.query import LakeReader
from tests.lakebuild import LakeBuilder, rest_page, simulated

PRODUCTS = ["BTC-USD", "ETH-USD"]
T0 = datetime(2026, 11, 30, 23, 40, tzinfo=UTC)
STEP = timedelta(milliseconds=700)
COUNT = 4000  # ~47 minutes: 23:40 .. 00:27
FIVE = timedelta(minutes=5)


@pytest.fixture
def built(lake: Path) -> Path:
    trades = simulated(PRODUCTS, COUNT, T0, STEP)
    builder = LakeBuilder(lake)
    for i in range(0, COUNT, 1000):  # four commits, as micro-batches would
        builder.matches(trades[i : i + 1000])
    gap = {"type": "gap", "product_id": "BTC-USD", "kind": "trade_id",
           "detected_at": "2026-12-01T00:10:00.000000Z", "first_missing_id": 1,
           "last_missing_id": 3, "missing": 3, "backfilled": 0, "outcome": "unfilled"}  # fmt: skip
    builder.commit([orjson.dumps(gap).decode()])
    builder.engine.close()
    return lake


def _api(lake: Path) -> httpx.AsyncClient:
    app = create_app(HotState(), LakeReader(lake), lambda: "coinbase", PRODUCTS, dict, lambda: True)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


def _sql_cli(lake: Path, query: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["sql", query, "--format", "jsonl", "--lake", str(lake)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_python_sql_and_rest_return_the_same_trades(
    built: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = Lake(built)
    lo, hi = datetime(2026, 11, 30, 23, 58, tzinfo=UTC), datetime(2026, 12, 1, 0, 2, tzinfo=UTC)
    py = lake.trades("BTC-USD", start=lo, end=hi, exchange="coinbase").to_pylist()
    assert 100 < len(py) < 1000
    assert lake.trades("BTC-USD", start=lo, end=hi).schema.field("price").type.scale == 12
    want = [(r["trade_id"], r["price"], r["size"], r["side"], _iso(r["time"])) for r in py]
    assert want == sorted(want) and all(lo <= r["time"] < hi for r in py)

    rows = _sql_cli(built, "SELECT trade_id, price, size, side, time FROM trades WHERE"
                    " product_id = 'BTC-USD' AND time >= TIMESTAMPTZ '2026-11-30 23:58:00+00'"
                    " AND time < TIMESTAMPTZ '2026-12-01 00:02:00+00' ORDER BY trade_id",
                    capsys)  # fmt: skip
    assert [(r["trade_id"], Decimal(r["price"]), Decimal(r["size"]), r["side"], r["time"])
            for r in rows] == want  # fmt: skip

    # REST: newest first from the trade after the window, one page of the window's size
    after = lake.sql("SELECT min(trade_id) FROM trades WHERE product_id = 'BTC-USD' AND time >= ?",
                     [hi]).column(0)[0].as_py()  # fmt: skip
    async with _api(built) as client:
        r = await client.get("/v1/products/BTC-USD/trades",
                             params={"before": after, "limit": len(py)})  # fmt: skip
    assert r.status_code == 200, r.text
    rest = [(d["trade_id"], Decimal(d["price"]), Decimal(d["size"]), d["side"], d["time"])
            for d in reversed(r.json()["data"])]  # fmt: skip
    assert rest == want


@pytest.mark.parametrize("granularity", [60, 300, 3600])
async def test_python_sql_and_rest_return_the_same_candles(
    built: Path, granularity: int, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = Lake(built)
    lo, hi = datetime(2026, 11, 30, 23, 0, tzinfo=UTC), datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    py = lake.candles("ETH-USD", granularity, start=lo, end=hi).to_pylist()
    names = ("open", "high", "low", "close", "volume", "trade_count", "first_trade_id",
             "last_trade_id")  # fmt: skip
    want = [(_iso(r["start"]), *(r[n] for n in names)) for r in py]
    stored = lake.sql("SELECT count(*) FROM trades WHERE product_id = 'ETH-USD'")
    assert want and sum(r["trade_count"] for r in py) == stored.column(0)[0].as_py()

    # independent recomputation from the trades, in SQL
    rows = _sql_cli(built, f"""
        SELECT to_timestamp((floor(epoch(time))::BIGINT // {granularity}) * {granularity}) AS start,
               arg_min(price, trade_id) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, trade_id) AS close, sum(size) AS volume,
               count(*) AS trade_count, min(trade_id) AS first_trade_id,
               max(trade_id) AS last_trade_id
        FROM trades WHERE product_id = 'ETH-USD' GROUP BY 1 ORDER BY 1""", capsys)  # fmt: skip
    assert [(r["start"], *(Decimal(r[n]) if n in names[:5] else r[n] for n in names))
            for r in rows] == want  # fmt: skip

    async with _api(built) as client:
        params = {"granularity": granularity, "start": lo.isoformat(), "end": hi.isoformat()}
        r = await client.get("/v1/products/ETH-USD/candles", params=params)
    assert r.status_code == 200, r.text
    rest = [(d["start"], *(Decimal(d[n]) if n in names[:5] else d[n] for n in names))
            for d in reversed(r.json()["data"])]  # fmt: skip
    assert rest == want


def test_gaps_export_and_errors(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = Lake(built)
    gaps = lake.gaps("BTC-USD").to_pylist()
    assert [(g["kind"], g["first_missing_id"], g["outcome"]) for g in gaps] == [
        ("trade_id", 1, "unfilled")]  # fmt: skip
    assert lake.gaps("ETH-USD").num_rows == 0

    since, until = "2026-11-30T23:50:00Z", "2026-12-01T00:10:00Z"
    want = lake.sql("SELECT * FROM trades WHERE time >= ? AND time < ? ORDER BY exchange,"
                    " product_id, trade_id", [since, until])  # fmt: skip
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"x.{fmt}"
        assert main(["export", "--table", "trades", "--since", since, "--until", until,
                     "--format", fmt, "--out", str(out), "--lake", str(built)]) == 0  # fmt: skip
        got = pq.read_table(out) if fmt == "parquet" else pacsv.read_csv(
            out, convert_options=pacsv.ConvertOptions(column_types=want.schema))  # fmt: skip
        got = got.sort_by([("exchange", "ascending"), ("product_id", "ascending"),
                           ("trade_id", "ascending")])  # fmt: skip
        assert got.select(want.column_names).equals(want.cast(got.select(want.column_names).schema))
        assert got.num_rows == want.num_rows > 1000

    with pytest.raises(LakeError, match="unknown table"):
        lake.dataset("orders")
    with pytest.raises(LakeError, match="granularity"):
        lake.candles("BTC-USD", 7)
    with pytest.raises(LakeError, match="only one SELECT"):
        lake.sql("DELETE FROM trades")
    with pytest.raises(LakeError, match="ISO 8601"):
        lake.trades("BTC-USD", start="yesterday")
    capsys.readouterr()
    for argv in (["sql", "SELEC 1"], ["sql", "SELECT * FROM orders"],
                 ["export", "--table", "trades", "--since", "noon", "--out", "x.csv"]):  # fmt: skip
        assert main([*argv, "--lake", str(built)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sentinel ") and err.count("\n") == 1 and "Traceback" not in err
    buf = io.StringIO()
    from crypto_sentinel.lake.export import render_table

    render_table(lake.sql("SELECT 'BTC-USD' AS p, 1.50::DECIMAL(28,12) AS x"), buf)
    assert buf.getvalue().splitlines()[2].split() == ["BTC-USD", "1.5"]


async def test_as_of_sees_a_backfilled_minute_as_it_was(lake: Path) -> None:
    """Candles committed, then a late REST page fills a closed minute through the engine:
    as_of before the backfill answers the old candle, after it the new one."""
    trades = simulated(["BTC-USD"], 600, T0, timedelta(seconds=1))  # 10 minutes
    missing = [t for t in trades if T0 + timedelta(minutes=3) <= t.time < T0 + timedelta(minutes=4)]
    builder = LakeBuilder(lake)
    builder.matches([t for t in trades if t not in missing])
    minute = T0 + timedelta(minutes=3)
    window = {"start": minute, "end": minute + timedelta(minutes=1)}
    before = Lake(lake).candles("BTC-USD", 60, **window).to_pylist()
    assert before == []  # the minute is missing: no candle yet
    five = Lake(lake).candles("BTC-USD", 300, start=T0, end=T0 + timedelta(minutes=5))
    assert five["trade_count"].to_pylist() == [240]
    between = datetime.now(UTC)

    builder.commit([rest_page("BTC-USD", missing)])  # the backfill, the normal path
    builder.engine.close()
    after = datetime.now(UTC)
    lake_api = Lake(lake)
    now5 = lake_api.candles("BTC-USD", 300, start=T0, end=T0 + timedelta(minutes=5))
    assert now5["trade_count"].to_pylist() == [300]
    old5 = lake_api.candles("BTC-USD", 300, start=T0, end=T0 + timedelta(minutes=5), as_of=between)
    assert old5.equals(five)
    new1 = lake_api.candles("BTC-USD", 60, **window, as_of=after).to_pylist()
    assert [(r["trade_count"], r["first_trade_id"], r["open"]) for r in new1] == [
        (60, missing[0].trade_id, Decimal(missing[0].price))]  # fmt: skip
    with pytest.raises(AsOfError, match="before the oldest version"):
        lake_api.candles("BTC-USD", 60, as_of=between - timedelta(days=1))

    async with _api(lake) as client:
        url = "/v1/products/BTC-USD/candles"
        g = {"granularity": 300, "start": T0.isoformat(), "end": (T0 + FIVE).isoformat()}
        r_old = await client.get(url, params={**g, "as_of": between.isoformat()})
        r_new = await client.get(url, params={**g, "as_of": after.isoformat()})
        r_now = await client.get(url, params=g)
        r_bad = await client.get(
            url, params={**g, "as_of": (between - timedelta(days=1)).isoformat()}
        )
    assert r_old.status_code == r_new.status_code == r_now.status_code == 200, r_old.text
    assert [d["trade_count"] for d in r_old.json()["data"]] == [240]
    assert [d["trade_count"] for d in r_new.json()["data"]] == [300]
    assert [(d["trade_count"], d["close"]) for d in r_now.json()["data"]] == [
        (d["trade_count"], d["close"]) for d in r_new.json()["data"]]  # fmt: skip
    assert r_bad.status_code == 422
    assert "before the oldest version" in r_bad.text


def test_as_of_past_a_trimmed_log_is_refused_not_answered_from_a_later_version(
    lake: Path,
) -> None:
    """Once maintenance trims the Delta log, delta-rs answers an older time with the oldest
    version it still has: the lake refuses instead of returning later data as earlier."""
    builder = LakeBuilder(lake)
    trades = simulated(["BTC-USD"], 300, T0, timedelta(seconds=1))
    builder.matches(trades[:60])
    mid = datetime.now(UTC)  # between the first commit and the later ones
    for i in range(60, 300, 60):
        builder.matches(trades[i : i + 60])
    builder.engine.close()
    early = Lake(lake).candles("BTC-USD", 300, as_of=datetime.now(UTC))
    assert sum(early["trade_count"].to_pylist()) == 300
    dt = DeltaTable(str(T.CANDLES_1M.path(lake)))
    dt.alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    assert sum(Lake(lake).candles("BTC-USD", 300, as_of=mid)["trade_count"].to_pylist()) == 60
    dt.create_checkpoint()
    dt.cleanup_metadata()
    with pytest.raises(AsOfError, match="before the oldest version"):
        Lake(lake).candles("BTC-USD", 300, as_of=mid)  # its versions are gone now
    assert Lake(lake).candles("BTC-USD", 300, as_of=datetime.now(UTC)).equals(early)
