"""Reads the API serves from the lake alone (`sentinel serve`, no hot state) equal a full scan.

A lake of three days in many small commits (files of several row groups) and two exchanges;
its 1-minute candles are computed from its trades. `/latest` (newest trades), trade pages
below a `before` cursor and old candle pages, from `LakeReader` and through the API with
empty hot state, are compared with DuckDB over every row of the tables; then again after
compaction (one file per partition, still several row groups). Not timed: the speed of these
reads is measured by `sentinel bench api` and `sentinel bench lake`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, WriterProperties, write_deltalake

from crypto_sentinel.api.app import create_app
from crypto_sentinel.api.render import format_decimal, iso
from crypto_sentinel.api.state import HotState
from crypto_sentinel.lake import maintenance
from crypto_sentinel.lake import query as Q
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import Maintainer, Policy
from crypto_sentinel.lake.query import LakeReader
from tests.conftest import read_table

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
EXCHANGES = ["coinbase", "kraken"]
START = datetime(2024, 3, 1, 12, tzinfo=UTC)  # three date partitions: 1, 2 and 3 March
COMMITS = 24  # appends per exchange, each one file per date it touches
PER_COMMIT = 600  # trades per append (all products), spread over 100 minutes
STEP = timedelta(seconds=30)  # between a product's trades
SMALL_GROUPS = WriterProperties(max_row_group_size=256)  # several row groups per file


def _trades(exchange: str, commit: int) -> pa.Table:
    """One append: trades of every product, ids rising with time per product."""
    n = PER_COMMIT
    first = START + commit * (n // len(PRODUCTS)) * STEP
    if exchange == "kraken":
        first += timedelta(hours=3)
    rows = []
    for i in range(n):
        k = commit * n + i
        product = PRODUCTS[i % len(PRODUCTS)]
        t = first + (i // len(PRODUCTS)) * STEP + timedelta(microseconds=i % len(PRODUCTS))
        rows.append(
            {
                "exchange": exchange,
                "product_id": product,
                "trade_id": 1000 + k // len(PRODUCTS) * 2 + (k % 7 == 0),  # ids with holes
                "price": Decimal(f"{100 + k % 97}.{k % 13:02d}"),
                "size": Decimal(f"0.{k % 991:03d}1"),
                "side": "buy" if k % 3 else "sell",
                "time": t,
                "recv_time": t + timedelta(milliseconds=5),
                "sequence": k,
                "maker_order_id": f"m{k}",
                "taker_order_id": f"t{k}",
                "conn_id": "test",
                "date": t.date(),
            }
        )
    return pa.Table.from_pylist(rows, schema=T.TRADES.schema)


def _candles(trades: pa.Table) -> pa.Table:
    """1-minute candles of `trades`, as the engine computes them (exact decimals)."""
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.register("t", trades)
    table = db.sql(
        """
        SELECT exchange, product_id, time_bucket(INTERVAL 1 MINUTE, time) AS start,
               arg_min(price, time) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, time) AS close, sum(size) AS volume,
               sum(CASE WHEN side = 'buy' THEN size ELSE 0 END) AS buy_volume,
               sum(CASE WHEN side = 'sell' THEN size ELSE 0 END) AS sell_volume,
               sum(price * size) AS quote_volume, NULL AS vwap, count(*) AS trade_count,
               arg_min(trade_id, time) AS first_trade_id, min(time) AS first_trade_time,
               arg_max(trade_id, time) AS last_trade_id, max(time) AS last_trade_time,
               CAST(time_bucket(INTERVAL 1 MINUTE, time) AS DATE) AS date
        FROM t GROUP BY ALL ORDER BY start
        """
    ).to_arrow_table()
    return table.select(T.CANDLES_1M.schema.names).cast(T.CANDLES_1M.schema)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lakereads") / "lake"
    tables = T.ensure_tables(root)
    everything = []
    for commit in range(COMMITS):
        for exchange in EXCHANGES:
            part = _trades(exchange, commit)
            everything.append(part)
            write_deltalake(tables[T.TRADES.name], part, mode="append",
                            partition_by=["date", "exchange"],
                            writer_properties=SMALL_GROUPS)  # fmt: skip
    candles = _candles(pa.concat_tables(everything))
    for day in sorted(set(candles["date"].to_pylist())):  # a few candle files per date
        rows = candles.filter(pc.equal(candles["date"], day))
        half = rows.num_rows // 2
        for piece in (rows.slice(0, half), rows.slice(half)):
            write_deltalake(tables[T.CANDLES_1M.name], piece, mode="append",
                            partition_by=["date"])  # fmt: skip
    return root


def full_scan(lake: Path) -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    for name, spec in (("trades", T.TRADES), ("candles", T.CANDLES_1M)):
        db.register("rows", read_table(lake, spec))
        db.execute(f"CREATE TABLE {name} AS SELECT * FROM rows")
        db.unregister("rows")
    return db


def scan_rows(db: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    rel = db.execute(sql, params)
    names = [d[0] for d in rel.description or []]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


KEYS = ("exchange", "product_id", "trade_id", "price", "size", "side", "time", "recv_time")


def same_trades(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [tuple(r[k] for k in KEYS) for r in got] == [tuple(r[k] for k in KEYS) for r in want]


def cursors(db: duckdb.DuckDBPyConnection, exchange: str, product: str) -> list[int | None]:
    """`before` values: none, above the newest, every few hundredth id, day edges, the oldest."""
    ids = [r[0] for r in db.execute(
        "SELECT trade_id FROM trades WHERE exchange = ? AND product_id = ? ORDER BY trade_id",
        [exchange, product]).fetchall()]  # fmt: skip
    edges = [r[0] for r in db.execute(
        "SELECT min(trade_id) FROM trades WHERE exchange = ? AND product_id = ? GROUP BY date",
        [exchange, product]).fetchall()]  # fmt: skip
    picks = ids[::797] + [i + 1 for i in ids[5::797]] + edges + [e + 1 for e in edges]
    return [None, ids[-1] + 10, ids[-1], ids[0], ids[0] + 1, ids[1], 1, *picks]


def check_trade_pages(reader: LakeReader, db: duckdb.DuckDBPyConnection) -> int:
    """Every cursor and limit against the full scan; returns how many pages the candle
    window answered (the rest fell back to reading the newest files)."""
    windowed = 0
    for exchange in EXCHANGES:
        for product in PRODUCTS:
            for before in cursors(db, exchange, product):
                for limit in (1, 50, 1000):
                    want = scan_rows(db, "SELECT * FROM trades WHERE exchange = ? AND"
                                     " product_id = ? AND trade_id < ? ORDER BY trade_id DESC"
                                     " LIMIT ?", [exchange, product,
                                     2**62 if before is None else before, limit])  # fmt: skip
                    got = reader.trades(exchange, product, before, limit)
                    same_trades(got, want)
                    if before is not None:
                        window = reader._candle_window(exchange, product, before, limit)
                        if window is not None and window[1] is not None:
                            page = reader._window_page(
                                exchange, product, before, limit, window[0], window[1]
                            )
                            if page is not None:
                                same_trades(page, want)
                                windowed += 1
    return windowed


def check_newest(reader: LakeReader, db: duckdb.DuckDBPyConnection) -> None:
    for exchange in [*EXCHANGES, "nowhere"]:
        for product in [None, *PRODUCTS, "DOGE-USD"]:
            for limit in (1, 7, 50):
                want = scan_rows(db, "SELECT * FROM trades WHERE exchange = ? AND (? IS NULL"
                                 " OR product_id = ?) ORDER BY time DESC, trade_id DESC LIMIT ?",
                                 [exchange, product, product, limit])  # fmt: skip
                same_trades(reader.newest_trades(exchange, product, limit), want)
                same_trades(reader.newest_trades(exchange, product, limit), want)  # kept answer


def check_old_candles(reader: LakeReader, db: duckdb.DuckDBPyConnection) -> None:
    for granularity in (60, 300, 3600, 21600):
        for lo, hi in [
            (START, START + timedelta(seconds=granularity * 300)),
            (START + timedelta(hours=5, minutes=7), START + timedelta(hours=6, minutes=1)),
            (datetime(2024, 3, 2, 23, 30, tzinfo=UTC), datetime(2024, 3, 3, 0, 30, tzinfo=UTC)),
        ]:
            lo = datetime.fromtimestamp(lo.timestamp() // granularity * granularity, UTC)
            want = scan_rows(db, """
                SELECT to_timestamp((epoch(start)::BIGINT // $g) * $g) AS bucket,
                       arg_min(open, first_trade_time) AS open, max(high) AS high,
                       min(low) AS low, arg_max(close, last_trade_time) AS close,
                       sum(volume) AS volume, sum(trade_count)::BIGINT AS trade_count,
                       min(first_trade_id) AS first_trade_id, max(last_trade_id) AS last_trade_id
                FROM candles WHERE exchange = 'coinbase' AND product_id = 'ETH-USD'
                  AND start >= $lo AND start < $hi GROUP BY ALL ORDER BY bucket DESC
                """, {"g": granularity, "lo": lo, "hi": hi})  # type: ignore[arg-type]  # fmt: skip
            assert want, (granularity, lo)
            got = reader.candle_buckets("coinbase", "ETH-USD", lo, hi, granularity).to_pylist()
            names = ("bucket", "open", "high", "low", "close", "volume", "trade_count",
                     "first_trade_id", "last_trade_id")  # fmt: skip
            assert [tuple(r[n] for n in names) for r in got] == [
                tuple(r[n] for n in names) for r in want
            ], (granularity, lo)


async def check_api(reader: LakeReader, db: duckdb.DuckDBPyConnection) -> None:
    """The routes over the lake alone (hot state empty, as in `sentinel serve`)."""
    app = create_app(HotState(), reader, lambda: "coinbase", PRODUCTS, dict, lambda: True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        want = scan_rows(db, "SELECT * FROM trades WHERE exchange = 'kraken' AND product_id ="
                         " 'SOL-USD' ORDER BY time DESC, trade_id DESC LIMIT 50", [])  # fmt: skip
        for _ in range(2):  # the second answer is the one kept for the snapshot
            r = await client.get("/latest", params={"exchange": "kraken", "symbol": "SOL-USD"})
            assert r.status_code == 200, r.text
            assert [(d["symbol"], d["trade_id"], d["price"], d["timestamp"])
                    for d in r.json()["data"]] == [
                (w["product_id"], w["trade_id"], format_decimal(w["price"]), iso(w["time"]))
                for w in want]  # fmt: skip
        for before in cursors(db, "coinbase", "BTC-USD")[::3]:
            params: dict[str, Any] = {"limit": 100}
            if before is not None:
                params["before"] = before
            r = await client.get("/v1/products/BTC-USD/trades", params=params)
            assert r.status_code == 200, r.text
            want = scan_rows(db, "SELECT * FROM trades WHERE exchange = 'coinbase' AND"
                             " product_id = 'BTC-USD' AND trade_id < ? ORDER BY trade_id DESC"
                             " LIMIT 100", [2**62 if before is None else before])  # fmt: skip
            assert [(d["trade_id"], d["price"], d["size"], d["time"]) for d in r.json()["data"]
                    ] == [(w["trade_id"], format_decimal(w["price"]), format_decimal(w["size"]),
                           iso(w["time"])) for w in want]  # fmt: skip


async def test_lake_reads_equal_a_full_scan_compacted_or_not(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = LakeReader(lake)
    files = DeltaTable(str(T.TRADES.path(lake))).file_uris()
    assert len(files) >= 50  # many small files over three dates and two exchanges
    db = full_scan(lake)
    check_newest(reader, db)
    assert check_trade_pages(reader, db) > 60  # the candle window answers most old pages
    check_old_candles(reader, db)
    await check_api(reader, db)

    # compacted: one file per partition, still several row groups each
    monkeypatch.setattr(
        maintenance, "COMPACT_PROPERTIES", WriterProperties(max_row_group_size=1000)
    )
    m = Maintainer(lake, Policy())
    for spec in (T.TRADES, T.CANDLES_1M):
        m.compact(spec, max_files=1)
    assert len(DeltaTable(str(T.TRADES.path(lake))).file_uris()) == 6  # three dates x two exchanges
    time.sleep(max(Q.TRADES_MAX_AGE, Q.CANDLE_HISTORY_MAX_AGE) + 0.05)  # the reader sees it
    check_newest(reader, db)  # the same reader: its caches follow the new version
    assert check_trade_pages(reader, db) > 60
    check_old_candles(reader, db)
    await check_api(reader, db)
    # what it holds of the trades is the compacted files' row groups only: the groups and
    # footers of the files compaction retired are forgotten, not left to the row bound
    live = set(DeltaTable(str(T.TRADES.path(lake))).file_uris())
    caches = (reader._trade_groups, reader._old_trade_groups)
    held = {key[0] for cache in caches for key in [*cache._groups, *cache._footers]}
    assert held and held <= live, sorted(held - live)[:3]
    live_candles = set(DeltaTable(str(T.CANDLES_1M.path(lake))).file_uris())
    assert reader._candle_files._tables and set(reader._candle_files._tables) <= live_candles
    check_newest(LakeReader(lake), db)  # and a new one


def test_a_kept_old_page_follows_a_trade_stored_later_into_its_window(tmp_path: Path) -> None:
    """Old trade pages are kept per question and per the row groups that answer it: a trade
    stored later into the page's window (a backfill fills a hole) is in the next answer."""
    lake = tmp_path / "lake"
    tables = T.ensure_tables(lake)
    parts = [_trades("coinbase", commit) for commit in range(4)]
    for part in parts:
        write_deltalake(tables[T.TRADES.name], part, mode="append",
                        partition_by=["date", "exchange"],
                        writer_properties=SMALL_GROUPS)  # fmt: skip
    write_deltalake(tables[T.CANDLES_1M.name], _candles(pa.concat_tables(parts)), mode="append",
                    partition_by=["date"])  # fmt: skip
    db = full_scan(lake)
    ids = [r[0] for r in db.execute("SELECT trade_id FROM trades WHERE product_id = 'BTC-USD'"
                                    " ORDER BY trade_id").fetchall()]  # fmt: skip
    before = ids[len(ids) // 2]
    hole = next(i for i in range(before - 1, ids[0], -1) if i not in set(ids))
    reader = LakeReader(lake)
    window = reader._candle_window("coinbase", "BTC-USD", before, 50)
    assert window is not None and window[1] is not None  # answered by the candle window
    first = reader.trades("coinbase", "BTC-USD", before, 50)
    assert reader.trades("coinbase", "BTC-USD", before, 50) == first  # the kept answer
    assert hole not in [r["trade_id"] for r in first] and hole > first[-1]["trade_id"]

    stored = [r for part in parts for r in part.to_pylist() if r["product_id"] == "BTC-USD"]
    neighbour = max((r for r in stored if r["trade_id"] < hole), key=lambda r: r["trade_id"])
    late = {**neighbour, "trade_id": hole, "sequence": -1}
    write_deltalake(tables[T.TRADES.name], pa.Table.from_pylist([late], schema=T.TRADES.schema),
                    mode="append", partition_by=["date", "exchange"])  # fmt: skip
    time.sleep(Q.TRADES_MAX_AGE + 0.05)  # the reader sees the new version
    again = reader.trades("coinbase", "BTC-USD", before, 50)
    assert hole in [r["trade_id"] for r in again]
    want = scan_rows(full_scan(lake), "SELECT * FROM trades WHERE product_id = 'BTC-USD' AND"
                     " trade_id < ? ORDER BY trade_id DESC LIMIT 50", [before])  # fmt: skip
    same_trades(again, want)


async def test_a_kept_old_candle_page_follows_rewritten_candles(tmp_path: Path) -> None:
    """A candle page of the past from the lake alone is rendered once and kept while its
    files stay the same; rewritten candles (new files) are in the next answer."""
    lake = tmp_path / "lake"
    tables = T.ensure_tables(lake)
    trades = pa.concat_tables([_trades("coinbase", commit) for commit in range(2)])
    write_deltalake(tables[T.TRADES.name], trades, mode="append",
                    partition_by=["date", "exchange"])  # fmt: skip
    candles = _candles(trades)
    write_deltalake(tables[T.CANDLES_1M.name], candles, mode="append", partition_by=["date"])
    app = create_app(HotState(), LakeReader(lake), lambda: "coinbase", PRODUCTS, dict, lambda: True)
    transport = httpx.ASGITransport(app=app)
    page = {"granularity": 60, "start": "2024-03-01T12:00:00Z", "end": "2024-03-01T13:00:00Z"}
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        first, again = [await client.get("/v1/products/BTC-USD/candles", params=page)
                        for _ in range(2)]  # fmt: skip
        assert first.status_code == 200, first.text
        assert first.content == again.content
        minute = {d["start"]: d for d in first.json()["data"]}["2024-03-01T12:10:00.000000Z"]
        assert minute["trade_count"] == 2 and minute["forming"] is False

        at = pc.and_(pc.equal(candles["product_id"], "BTC-USD"),
                     pc.equal(candles["start"], pa.scalar(START + timedelta(minutes=10),
                                                          T.UTC_TS)))  # fmt: skip
        rewritten = candles.set_column(
            candles.schema.get_field_index("trade_count"), "trade_count",
            pc.if_else(at, pa.scalar(7, candles["trade_count"].type), candles["trade_count"]),
        )  # fmt: skip
        write_deltalake(tables[T.CANDLES_1M.name], rewritten, mode="overwrite",
                        partition_by=["date"])  # fmt: skip
        time.sleep(Q.CANDLE_HISTORY_MAX_AGE + 0.05)  # the reader looks at the log again
        later = await client.get("/v1/products/BTC-USD/candles", params=page)
        minute = {d["start"]: d for d in later.json()["data"]}["2024-03-01T12:10:00.000000Z"]
        assert minute["trade_count"] == 7


def test_an_old_candle_window_is_kept_while_only_newer_minutes_are_committed(
    tmp_path: Path,
) -> None:
    """The files of a candle window are those whose minutes meet it (the Delta log's `start`
    statistics), not the whole date: a commit of a later minute of the same day leaves an
    old window's rolled-up buckets as they were (kept, not rolled up again), while a commit
    that lands a minute inside the window is in the next answer."""
    lake = tmp_path / "lake"
    tables = T.ensure_tables(lake)
    candles = _candles(_trades("coinbase", 0))
    old = candles.filter(pc.less(candles["start"], pa.scalar(START + timedelta(hours=1), T.UTC_TS)))
    write_deltalake(tables[T.CANDLES_1M.name], old, mode="append", partition_by=["date"])
    reader = LakeReader(lake)
    lo, hi = START, START + timedelta(minutes=30)
    first = reader.candle_buckets("coinbase", "BTC-USD", lo, hi, 300)
    assert first.num_rows == 6

    later = candles.filter(pc.greater_equal(candles["start"], pa.scalar(hi + timedelta(hours=1),
                                                                         T.UTC_TS)))  # fmt: skip
    assert later.num_rows and set(later["date"].to_pylist()) <= set(old["date"].to_pylist())
    write_deltalake(tables[T.CANDLES_1M.name], later, mode="append", partition_by=["date"])
    time.sleep(Q.CANDLE_HISTORY_MAX_AGE + 0.05)  # the reader looks at the log again
    assert reader.candle_buckets("coinbase", "BTC-USD", lo, hi, 300) is first

    late = old.filter(pc.equal(old["start"], pa.scalar(START + timedelta(minutes=5), T.UTC_TS)))
    late = late.set_column(late.schema.get_field_index("trade_count"), "trade_count",
                           pc.multiply(late["trade_count"], 10))  # fmt: skip
    write_deltalake(tables[T.CANDLES_1M.name], late, mode="append", partition_by=["date"])
    time.sleep(Q.CANDLE_HISTORY_MAX_AGE + 0.05)
    again = reader.candle_buckets("coinbase", "BTC-USD", lo, hi, 300)
    assert again is not first
    counts = {r["bucket"]: r["trade_count"] for r in again.to_pylist()}
    before = {r["bucket"]: r["trade_count"] for r in first.to_pylist()}
    assert counts[START + timedelta(minutes=5)] > before[START + timedelta(minutes=5)]
