"""/v1 over a real pipeline: two simulated days replayed into a real Delta lake, served by a real
uvicorn server. Every answer is checked against an independent DuckDB recomputation from
silver.trades, whether it comes from memory, from the lake, or from both; and again after a
restart that rebuilds memory from the lake.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import pytest_asyncio

from crypto_sentinel.config import load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.simulator import write_recording
from tests.conftest import free_port, read_table

pytestmark = pytest.mark.asyncio(loop_scope="module")

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
TRADES = 12_000
START = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=2)  # more than the 25 h memory keeps: pages straddle memory and lake
GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
MINUTE = timedelta(minutes=1)


@dataclass
class Served:
    client: httpx.AsyncClient
    pipeline: Pipeline
    lake: Path
    recording: Path
    missing: Missing


#: Trades the feed lost, as places among SOL-USD's matches (first, count): ids never seen
#: in the lake's older day and in the 25 h memory holds, and a run that gets an unfilled gap
#: record (its REST backfill failed). ETH-USD ends with an unfilled gap past its last trade
#: (ids a heartbeat revealed whose trades never came). BTC-USD loses nothing.
LOST = {"SOL-USD": [(900, 1, False), (1500, 5, True), (3600, 2, False)]}
TAIL_GAP = ("ETH-USD", 3, timedelta(seconds=90))  # product, ids missing, detected after


@dataclass
class Missing:
    """Ids lost, per product: (first, last, detected_at if the run has a gap record)."""

    runs: dict[str, list[tuple[int, int, datetime | None]]]


def _frame(line: str) -> dict[str, Any]:
    return dict(json.loads(json.loads(line)["raw"]))


def _line(recv_ts: float, frame: dict[str, Any]) -> str:
    return json.dumps({"recv_ts": recv_ts, "raw": json.dumps(frame, separators=(",", ":"))})


def _gap(product: str, first: int, last: int, detected: datetime) -> dict[str, Any]:
    return {
        "type": "gap", "product_id": product, "kind": "trade_id",
        "detected_at": detected.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "first_missing_id": first,
        "last_missing_id": last, "missing": last - first + 1, "backfilled": 0,
        "outcome": "unfilled",
    }  # fmt: skip


def record(path: Path) -> tuple[int, Missing]:
    """Two simulated days of trades and tickers (heartbeats left out: 1 per second is noise),
    less the `LOST` matches, plus the gap records a backfill would have written."""
    raw = path.with_suffix(".full")
    write_recording(raw, PRODUCTS, TRADES, seed=11, rate=TRADES / SPAN.total_seconds())
    lines = [line for line in raw.read_text().splitlines() if '\\"heartbeat\\"' not in line]
    matches: dict[str, list[int]] = {}  # product -> line numbers of its match frames
    for n, line in enumerate(lines):
        if '\\"match\\"' in line:
            matches.setdefault(_frame(line)["product_id"], []).append(n)
    drop: set[int] = set()
    after: dict[int, list[str]] = {}  # extra lines after a line number
    runs: dict[str, list[tuple[int, int, datetime | None]]] = {}
    for product, lost in LOST.items():
        for place, count, recorded in lost:
            gone = matches[product][place : place + count]
            drop.update(gone)
            first, last = _frame(lines[gone[0]])["trade_id"], _frame(lines[gone[-1]])["trade_id"]
            next_line = matches[product][place + count]
            nxt = _frame(lines[next_line])
            detected = datetime.fromisoformat(nxt["time"].replace("Z", "+00:00"))
            if recorded:
                recv = json.loads(lines[next_line])["recv_ts"]
                after.setdefault(next_line, []).append(
                    _line(recv, _gap(product, first, last, detected))
                )
            runs.setdefault(product, []).append((first, last, detected if recorded else None))
    product, count, delay = TAIL_GAP
    last_line = matches[product][-1]
    tail = _frame(lines[last_line])
    detected = datetime.fromisoformat(tail["time"].replace("Z", "+00:00")) + delay
    first = tail["trade_id"] + 1
    recv = json.loads(lines[-1])["recv_ts"]
    tail_record = _line(recv, _gap(product, first, first + count - 1, detected))
    runs.setdefault(product, []).append((first, first + count - 1, detected))
    kept = []
    for n, line in enumerate(lines):
        if n not in drop:
            kept.append(line)
        kept += after.get(n, [])
    kept.append(tail_record)
    path.write_text("\n".join(kept) + "\n")
    stored = sum('\\"match\\"' in line or '\\"last_match\\"' in line for line in kept)
    return stored, Missing(runs)


async def start(lake: Path, recording: Path, **overrides: Any) -> tuple[Pipeline, asyncio.Task]:
    settings = load_settings(
        source=f"replay:{recording}", replay_exchange="simulator", lake_dir=lake,
        port=free_port(), products=",".join(PRODUCTS), batch_interval_ms=50, **overrides,
    )  # fmt: skip
    pipeline = Pipeline(settings)
    return pipeline, asyncio.create_task(pipeline.run(with_api=True, install_signals=False))


async def wait_ready(client: httpx.AsyncClient, task: asyncio.Task) -> None:
    for _ in range(600):
        if task.done():
            task.result()
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("API did not become ready")


async def stop(pipeline: Pipeline, task: asyncio.Task) -> None:
    pipeline.stop_event.set()
    await asyncio.wait_for(task, 30)


def committed(lake: Path) -> int:
    """Trades the candle table accounts for (committed with the last batch)."""
    counts = read_table(lake, T.CANDLES_1M).column("trade_count").to_pylist()
    return sum(counts)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    root = tmp_path_factory.mktemp("v1")
    recording, lake = root / "two-days.ndjson", root / "lake"
    expected, missing = record(recording)
    pipeline, task = await start(lake, recording, hot_trades_per_product=50)
    base = f"http://127.0.0.1:{pipeline.settings.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await wait_ready(client, task)
        for _ in range(600):
            if pipeline.engine.stats.trades == expected and committed(lake) == expected:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("replay was not committed")
        yield Served(client, pipeline, lake, recording, missing)
    await stop(pipeline, task)


# --- independent answers, straight from silver.trades -----------------------------------


@functools.cache
def trades_db(lake: Path) -> duckdb.DuckDBPyConnection:
    """The lake's trades, read once (the lake does not change after the replay)."""
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.register("trades", read_table(lake, T.TRADES))
    return db


def expected_candles(lake: Path, product: str, granularity: int) -> dict[datetime, dict]:
    rows = (
        trades_db(lake)
        .execute(
            """
        SELECT to_timestamp((floor(epoch(time))::BIGINT // $g) * $g) AS start,
               arg_min(price, (time, trade_id)) AS open, max(price) AS high,
               min(price) AS low, arg_max(price, (time, trade_id)) AS close,
               sum(size) AS volume, count(*) AS trade_count,
               arg_min(trade_id, (time, trade_id)) AS first_trade_id,
               arg_max(trade_id, (time, trade_id)) AS last_trade_id
        FROM trades WHERE product_id = $p GROUP BY ALL
        """,
            {"g": granularity, "p": product},
        )
        .fetchall()
    )
    names = ["start", "open", "high", "low", "close", "volume", "trade_count",
             "first_trade_id", "last_trade_id"]  # fmt: skip
    return {r[0]: dict(zip(names, r, strict=True)) for r in rows}


def expected_day(lake: Path, product: str) -> dict:
    """24 h up to and including the minute of the product's last trade."""
    db = trades_db(lake)
    (last,) = db.execute(
        "SELECT max(time) FROM trades WHERE product_id = ?", [product]
    ).fetchone()  # fmt: skip
    hi = last.replace(second=0, microsecond=0) + timedelta(minutes=1)
    row = db.execute(
        """
        SELECT arg_min(price, (time, trade_id)), max(price), min(price), sum(size), count(*),
               arg_max(price, (time, trade_id))
        FROM trades WHERE product_id = ? AND time >= ? AND time < ?
        """,
        [product, hi - timedelta(days=1), hi],
    ).fetchone()
    keys = ("open", "high", "low", "volume", "count", "last")
    return {**dict(zip(keys, row, strict=True)), "start": hi - timedelta(days=1), "end": hi}


def stored_trade_ids(lake: Path, product: str) -> list[int]:
    rows = (
        trades_db(lake)
        .execute(
            "SELECT trade_id FROM trades WHERE product_id = ? ORDER BY trade_id DESC", [product]
        )
        .fetchall()
    )
    return [r[0] for r in rows]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- walking the API ---------------------------------------------------------------------


async def all_candles(client: httpx.AsyncClient, product: str, granularity: int) -> list[dict]:
    """Page backwards over the whole recording, 300 buckets at a time."""
    step = timedelta(seconds=granularity * 300)
    end = START + SPAN + timedelta(days=1)
    out: list[dict] = []
    while end > START - timedelta(days=1):
        params = {"granularity": granularity, "start": (end - step).isoformat(),
                  "end": end.isoformat()}  # fmt: skip
        r = await client.get(f"/v1/products/{product}/candles", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["granularity"] == granularity and body["product_id"] == product
        assert len(body["data"]) <= 300
        out += body["data"]
        end -= step
    return out


async def all_trades(client: httpx.AsyncClient, product: str, limit: int) -> list[dict]:
    got: list[dict] = []
    params: dict[str, int] = {"limit": limit}
    while True:
        r = await client.get(f"/v1/products/{product}/trades", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["data"]) <= limit
        got += body["data"]
        if body["next_before"] is None:
            return got
        params = {"limit": limit, "before": body["next_before"]}


def assert_candles_equal(got: list[dict], want: dict[datetime, dict], granularity: int) -> None:
    starts = [parse_time(c["start"]) for c in got]
    assert starts == sorted(starts, reverse=True), "newest first, no repeats"
    assert set(starts) == set(want), "every bucket with trades, no other"
    for candle in got:
        w = want[parse_time(candle["start"])]
        for name in ("open", "high", "low", "close", "volume"):
            assert Decimal(candle[name]) == w[name], (granularity, candle["start"], name)
            assert isinstance(candle[name], str)
        for name in ("trade_count", "first_trade_id", "last_trade_id"):
            assert candle[name] == w[name], (granularity, candle["start"], name)
        assert candle["granularity"] == granularity and candle["forming"] is False
        v = Decimal(candle["vwap"])
        assert Decimal(candle["low"]) <= v <= Decimal(candle["high"])
        assert Decimal(candle["buy_volume"]) + Decimal(candle["sell_volume"]) == w["volume"]


def touched(lake: Path, missing: Missing, product: str) -> list[tuple[datetime, datetime]]:
    """What each run of lost ids touches: from the stored trade before it to the stored trade
    after it (to its detection when none came after)."""
    db = trades_db(lake)
    spans = []
    for first, last, detected in missing.runs.get(product, []):
        before, after = db.execute(
            "SELECT max(time) FILTER (WHERE trade_id < $lo), min(time) FILTER (WHERE trade_id >"
            " $hi) FROM trades WHERE product_id = $p",
            {"lo": first, "hi": last, "p": product},
        ).fetchone()  # fmt: skip
        assert before is not None and (after is not None or detected is not None)
        spans.append((before, after if after is not None else detected))
    return spans


def assert_complete_exactly(
    got: list[dict], spans: list[tuple[datetime, datetime]], granularity: int
) -> None:
    """`complete` is false exactly for the buckets a run of lost ids touches."""
    step = timedelta(seconds=granularity)
    wrong = []
    for candle in got:
        start = parse_time(candle["start"])
        hit = any(lo < start + step and hi >= start for lo, hi in spans)
        if candle["complete"] is hit:
            wrong.append((candle["start"], candle["complete"]))
    assert not wrong, (granularity, wrong)
    assert sum(not c["complete"] for c in got) >= (1 if spans else 0)


async def check_everything(client: httpx.AsyncClient, lake: Path, missing: Missing) -> None:
    for product in PRODUCTS:
        spans = touched(lake, missing, product)
        for g in GRANULARITIES:
            got = await all_candles(client, product, g)
            assert_candles_equal(got, expected_candles(lake, product, g), g)
            assert_complete_exactly(got, spans, g)
        got = await all_trades(client, product, 333)
        assert [t["trade_id"] for t in got] == stored_trade_ids(lake, product)
        await check_stats(client, lake, product)


async def check_stats(client: httpx.AsyncClient, lake: Path, product: str) -> None:
    want = expected_day(lake, product)
    r = await client.get(f"/v1/products/{product}/stats")
    assert r.status_code == 200, r.text
    got = r.json()
    assert Decimal(got["open_24h"]) == want["open"]
    assert Decimal(got["high_24h"]) == want["high"]
    assert Decimal(got["low_24h"]) == want["low"]
    assert Decimal(got["volume_24h"]) == want["volume"]
    assert got["trade_count_24h"] == want["count"]
    assert Decimal(got["last"]) == want["last"]
    assert Decimal(got["change_24h"]) == want["last"] - want["open"]
    assert parse_time(got["window_start"]) == want["start"]
    assert parse_time(got["window_end"]) == want["end"]


# --- tests ---------------------------------------------------------------------------------


async def test_memory_and_lake_give_the_same_exact_answers(served: Served) -> None:
    """Pages straddle memory (the newest 25 h) and the lake; both agree with the trades."""
    book = served.pipeline.state.candles[("simulator", "BTC-USD")]
    assert book.since is not None and START < book.since < START + SPAN  # really straddling
    await check_everything(served.client, served.lake, served.missing)


async def test_lake_alone_gives_the_same_answers(served: Served) -> None:
    state = served.pipeline.state
    saved = dict(state.candles), dict(state.trades)
    state.candles.clear()
    state.trades.clear()
    try:
        await check_everything(served.client, served.lake, served.missing)
    finally:
        state.candles.update(saved[0])
        state.trades.update(saved[1])


async def test_complete_at_the_edges_of_a_page(served: Served) -> None:
    """A page that ends with the minute just before lost ids, or begins with the minute just
    after them, still marks its edge candle: the stored trades outside the page come from
    memory or the lake."""
    state = served.pipeline.state
    half_hour = timedelta(minutes=30)
    for alone in (False, True):  # memory and lake, then the lake alone
        saved = dict(state.candles)
        if alone:
            state.candles.clear()
        try:
            for product in LOST:
                for lo, hi in touched(served.lake, served.missing, product):
                    before = lo.replace(second=0, microsecond=0)  # holds the trade before
                    after = hi.replace(second=0, microsecond=0)  # holds the trade after
                    pages = ((before - half_hour, before + MINUTE, 0),  # the newest candle
                             (after, after + half_hour, -1))  # the oldest  # fmt: skip
                    for start, end, at in pages:
                        params = {"granularity": 60, "start": start.isoformat(),
                                  "end": end.isoformat()}  # fmt: skip
                        r = await served.client.get(f"/v1/products/{product}/candles",
                                                    params=params)  # fmt: skip
                        edge = r.json()["data"][at]
                        assert parse_time(edge["start"]) in (before, after)
                        assert edge["complete"] is False, (alone, product, params, edge)
        finally:
            state.candles.update(saved)


async def test_trade_pages_cross_from_memory_into_the_lake(served: Served) -> None:
    ring = served.pipeline.state.trades[("simulator", "ETH-USD")]
    assert len(ring) == 50  # hot_trades_per_product: the rest must come from the lake
    want = {r["trade_id"]: r for r in read_table(served.lake, T.TRADES).to_pylist()
            if r["product_id"] == "ETH-USD"}  # fmt: skip
    got = await all_trades(served.client, "ETH-USD", 1000)
    assert [t["trade_id"] for t in got] == sorted(want, reverse=True)
    for item in got:
        row = want[item["trade_id"]]
        assert Decimal(item["price"]) == row["price"] and Decimal(item["size"]) == row["size"]
        assert item["side"] == row["side"] and parse_time(item["time"]) == row["time"]
    # a page that starts inside memory and ends in the lake
    cursor = ring[10].trade.trade_id
    r = await served.client.get("/v1/products/ETH-USD/trades", params={"before": cursor,
                                                                        "limit": 100})  # fmt: skip
    ids = [t["trade_id"] for t in r.json()["data"]]
    assert ids == [i for i in sorted(want, reverse=True) if i < cursor][:100]
    assert r.headers["CB-BEFORE"] == str(ids[0]) and r.headers["CB-AFTER"] == str(ids[-1])


async def test_products_list_last_price_and_24h_stats(served: Served) -> None:
    r = await served.client.get("/v1/products")
    assert r.status_code == 200
    body = r.json()
    assert body["exchange"] is None  # not asked: every exchange with data
    assert [p["product_id"] for p in body["data"]] == PRODUCTS
    assert {p["exchange"] for p in body["data"]} == {"simulator"}
    for item in body["data"]:
        want = expected_day(served.lake, item["product_id"])
        assert Decimal(item["last"]) == want["last"]
        assert Decimal(item["open_24h"]) == want["open"]
        assert Decimal(item["high_24h"]) == want["high"]
        assert Decimal(item["low_24h"]) == want["low"]
        assert Decimal(item["volume_24h"]) == want["volume"]
        pct = (want["last"] - want["open"]) * 100 / want["open"]
        assert abs(Decimal(item["change_24h_percent"]) - pct) <= Decimal("0.00005")
        assert (item["base_currency"], item["quote_currency"]) == tuple(
            item["product_id"].split("-")
        )


async def test_ticker_is_the_newest_ticker_frame(served: Served) -> None:
    newest: dict[str, dict] = {}
    for line in served.recording.read_text().splitlines():
        msg = json.loads(json.loads(line)["raw"])
        if msg["type"] == "ticker":
            newest[msg["product_id"]] = msg
    for product in PRODUCTS:
        r = await served.client.get(f"/v1/products/{product}/ticker")
        assert r.status_code == 200
        got, want = r.json(), newest[product]
        assert got["source"] == "ticker" and got["trade_id"] == want["trade_id"]
        for name in ("price", "best_bid", "best_ask", "volume_24h", "open_24h"):
            assert Decimal(got[name]) == Decimal(want[name]), name
        assert got["sequence"] == want["sequence"]


async def test_restart_rebuilds_memory_from_the_lake(
    served: Served, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second process on the same lake (nothing new to replay) answers from warm memory."""
    empty = tmp_path_factory.mktemp("empty") / "nothing.ndjson"
    empty.write_text("")
    pipeline, task = await start(served.lake, empty, app_id="second")
    base = f"http://127.0.0.1:{pipeline.settings.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await wait_ready(client, task)
            health = (await client.get("/health")).json()
            hot = health["hot_state"]
            assert hot["warm"] is True and hot["products"] == 3 and hot["tickers"] == 3
            assert hot["trades"] == 3000  # the newest 1000 per product
            stored = read_table(served.lake, T.CANDLES_1M).to_pylist()
            for (_, product), book in pipeline.state.candles.items():
                assert book.since is not None and START < book.since < START + SPAN
                want = {r["start"] for r in stored
                        if r["product_id"] == product and r["start"] >= book.since}  # fmt: skip
                assert set(book.minutes) == want and len(want) > 500
            await check_everything(client, served.lake, served.missing)
            latest = (await client.get("/latest", params={"limit": 5})).json()["data"]
            newest = stored_trade_ids(served.lake, latest[0]["symbol"])[0]
            assert latest[0]["trade_id"] == newest
    finally:
        await stop(pipeline, task)


async def test_candles_default_window_and_limits(served: Served) -> None:
    c = served.client
    r = await c.get("/v1/products/BTC-USD/candles", params={"granularity": 3600})
    body = r.json()
    assert r.status_code == 200 and body["data"] == []  # the recording is in 2024; now is not
    window = parse_time(body["end"]) - parse_time(body["start"])
    assert window == timedelta(hours=300)
    only_start = {"granularity": 86400, "start": "2024-01-01T00:00:00Z"}
    body = (await c.get("/v1/products/BTC-USD/candles", params=only_start)).json()
    assert len(body["data"]) == 2 and body["end"] == "2024-10-27T00:00:00.000000Z"
    for params, field in (
        ({"granularity": 61}, "granularity"),
        ({"granularity": 60, "start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"},
         "end"),
        ({"granularity": 60, "start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"},
         "start"),
        ({"start": "yesterday"}, "start"),
    ):  # fmt: skip
        r = await c.get("/v1/products/BTC-USD/candles", params=params)
        assert r.status_code == 422, params
        body = r.json()
        assert body["error"] == "invalid request parameters" and body["status"] == 422
        assert [p["field"] for p in body["detail"]] == [field], body
        assert body["detail"][0]["message"]
