"""Exactness checks shared by the end-to-end and chaos suites: the lake against the
simulator's emitted trades, and gold candles against an independent DuckDB recomputation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
from deltalake import DeltaTable

from crypto_sentinel.config import Settings, load_settings
from crypto_sentinel.lake import tables as T
from crypto_sentinel.simulator import SimTrade
from tests.conftest import ROOT, free_port, read_table

#: Where chaos scenarios write their reports (docs/reliability.md is made from them).
CHAOS_RESULTS = ROOT / "bench" / "results" / "chaos"

TradeKey = tuple[str, int]


def emitted_set(trades: Iterable[SimTrade]) -> dict[TradeKey, tuple[Decimal, Decimal]]:
    return {(t.product_id, t.trade_id): (Decimal(t.price), Decimal(t.size)) for t in trades}


def silver_rows(lake: Path) -> list[dict[str, Any]]:
    return read_table(lake, T.TRADES).to_pylist()


def compare_silver(lake: Path, emitted: dict[TradeKey, tuple[Decimal, Decimal]]) -> dict[str, int]:
    """Lost, duplicated, extra and wrong-valued trades of silver against the emitted set."""
    rows = silver_rows(lake)
    stored = {(r["product_id"], r["trade_id"]): (r["price"], r["size"]) for r in rows}
    return {
        "emitted": len(emitted),
        "stored": len(rows),
        "lost": len(emitted.keys() - stored.keys()),
        "duplicated": len(rows) - len(stored),
        "extra": len(stored.keys() - emitted.keys()),
        "wrong_values": sum(1 for k, v in stored.items() if k in emitted and emitted[k] != v),
    }


def assert_silver_exact(lake: Path, emitted: dict[TradeKey, tuple[Decimal, Decimal]]) -> dict:
    result = compare_silver(lake, emitted)
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["extra"] == 0, result
    assert result["wrong_values"] == 0, result
    return result


def assert_candles_match_silver(lake: Path) -> int:
    """Recompute 1-minute candles from silver with DuckDB and compare every minute;
    returns how many candles were compared."""
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
    return len(want)


def venue_time(time: datetime, exchange: str) -> datetime:
    """A trade time as the venue's feed states it (Binance: whole milliseconds)."""
    if exchange.removeprefix("simulator-") == "binance":
        return time.replace(microsecond=time.microsecond // 1000 * 1000)
    return time


def candles_of_emitted(
    trades: Iterable[SimTrade], exchange: str = "simulator"
) -> dict[tuple[str, str, datetime], dict[str, Any]]:
    """1-minute candles straight from what the exchange emitted (not from the lake): the
    taker is the opposite of the maker side the simulator reports, exact Decimal sums."""
    out: dict[tuple[str, str, datetime], dict[str, Any]] = {}
    for t in sorted(trades, key=lambda t: (t.product_id, t.trade_id)):
        t = dataclasses.replace(t, time=venue_time(t.time, exchange))
        price, size = Decimal(t.price), Decimal(t.size)
        start = t.time.replace(second=0, microsecond=0)
        c = out.get((exchange, t.product_id, start))
        buy = size if t.maker_side == "sell" else Decimal(0)  # the taker bought
        if c is None:
            out[(exchange, t.product_id, start)] = {
                "open": price, "high": price, "low": price, "close": price, "volume": size,
                "buy_volume": buy, "sell_volume": size - buy, "quote_volume": price * size,
                "trade_count": 1, "first_trade_id": t.trade_id, "last_trade_id": t.trade_id,
                "first_trade_time": t.time, "last_trade_time": t.time,
            }  # fmt: skip
            continue
        c["high"], c["low"], c["close"] = max(c["high"], price), min(c["low"], price), price
        c["volume"] += size
        c["buy_volume"] += buy
        c["sell_volume"] += size - buy
        c["quote_volume"] += price * size
        c["trade_count"] += 1
        c["last_trade_id"] = t.trade_id
        c["first_trade_time"] = min(c["first_trade_time"], t.time)
        c["last_trade_time"] = max(c["last_trade_time"], t.time)
    return out


def assert_candles_match_emitted(
    lake: Path, trades: Iterable[SimTrade], exchange: str = "simulator"
) -> int:
    """Every gold 1-minute candle equals the one computed from the exchange's emitted trades
    (every minute, every field); returns how many minutes were compared."""
    want = candles_of_emitted(trades, exchange)
    rows = read_table(lake, T.CANDLES_1M).to_pylist()
    got = {(c["exchange"], c["product_id"], c["start"]): c for c in rows}
    assert len(rows) == len(got), "duplicate candles"
    assert got.keys() == want.keys(), (sorted(got.keys() ^ want.keys()))[:5]
    for key, exp in want.items():
        row = got[key]
        for name, value in exp.items():
            assert row[name] == value, (key, name, row[name], value)
        vwap = (exp["quote_volume"] / exp["volume"]).quantize(Decimal("1e-12"))
        assert row["vwap"] == vwap, (key, row["vwap"], vwap)
    return len(want)


def gap_rows(lake: Path) -> list[dict[str, Any]]:
    path = T.GAPS.path(lake)
    if not DeltaTable.is_deltatable(str(path)):
        return []
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def quarantine_reasons(lake: Path) -> list[str]:
    return [r["reason"] for r in read_table(lake, T.QUARANTINE).to_pylist()]


def write_report(name: str, report: dict[str, Any]) -> Path:
    """Written for every run, passed or failed (`passed`, `error`), from what was measured."""
    CHAOS_RESULTS.mkdir(parents=True, exist_ok=True)
    path = CHAOS_RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    return path


def chaos_settings(
    ws_url: str, products: list[str], lake: Path, venue: str = "coinbase", rest_url: str = ""
) -> Settings:
    """A pipeline on a faulty simulator: short batches, a quick idle timeout and backoff.
    Coinbase's simulator is stored as `simulator`; another venue's runs as that venue (its
    URLs pointed at the simulator) and is stored under the venue's name."""
    if venue == "coinbase":
        where: dict[str, Any] = {"source": "simulator", "simulator_url": ws_url}
    else:
        key = venue.replace("-", "_")
        where = {"source": venue, f"{key}_ws_url": ws_url, f"{key}_rest_url": rest_url,
                 f"{key}_products": products}  # fmt: skip
    return load_settings(
        **where,
        products=products,
        lake_dir=lake,
        port=free_port(),
        batch_interval_ms=100,
        idle_timeout=3,
        backoff_cap=1,
    )


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample family's values matching `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        family, _, rest = head.partition("{")
        if family != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def connections_in_bronze(lake: Path) -> int:
    """How many connections delivered frames (each has its own conn_id in bronze)."""
    ids = set(read_table(lake, T.BRONZE).column("conn_id").to_pylist())
    return sum(1 for i in ids if not str(i).startswith("rest-"))
