"""Exactness checks shared by the end-to-end and chaos suites: the lake against the
simulator's emitted trades, and gold candles against an independent DuckDB recomputation."""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def gap_rows(lake: Path) -> list[dict[str, Any]]:
    path = T.GAPS.path(lake)
    if not DeltaTable.is_deltatable(str(path)):
        return []
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def quarantine_reasons(lake: Path) -> list[str]:
    return [r["reason"] for r in read_table(lake, T.QUARANTINE).to_pylist()]


def write_report(name: str, report: dict[str, Any]) -> Path:
    CHAOS_RESULTS.mkdir(parents=True, exist_ok=True)
    path = CHAOS_RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    return path


def chaos_settings(ws_url: str, products: list[str], lake: Path) -> Settings:
    """A pipeline on a faulty simulator: short batches, a quick idle timeout and backoff."""
    return load_settings(
        source="simulator",
        simulator_url=ws_url,
        products=products,
        lake_dir=lake,
        port=free_port(),
        batch_interval_ms=100,
        idle_timeout=3,
        backoff_cap=1,
    )
