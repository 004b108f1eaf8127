"""Read the Delta tables with DuckDB (offline: a read_parquet view over the table's live files).

Only files of the current Delta snapshot are read, so files replaced by compaction or
merges are never double counted. Every query is parameterised.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T


class LakeReader:
    """Thread-safe read access for the API and for engine start-up."""

    def __init__(self, lake: Path) -> None:
        self.lake = lake
        self._db = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._tables: dict[str, DeltaTable] = {}

    def _table(self, spec: T.TableSpec) -> DeltaTable | None:
        dt = self._tables.get(spec.name)
        path = str(spec.path(self.lake))
        if dt is None:
            if not DeltaTable.is_deltatable(path):
                return None
            dt = self._tables[spec.name] = DeltaTable(path)
        else:
            with self._lock:
                dt.update_incremental()
        return dt

    def files(self, spec: T.TableSpec, dates: Sequence[date] | None = None) -> list[str]:
        """Live data files of the table, pruned to the given date partitions."""
        dt = self._table(spec)
        if dt is None:
            return []
        if dates is None:
            return dt.file_uris()
        if not dates:
            return []
        return dt.file_uris(file_pruning_predicate=[("date", "in", [d.isoformat() for d in dates])])

    def query(
        self,
        spec: T.TableSpec,
        sql: str,
        params: Sequence[Any] = (),
        dates: Sequence[date] | None = None,
    ) -> list[dict[str, Any]]:
        """Run `sql` with the table available as `t`; [] when there is no data."""
        files = self.files(spec, dates)
        if not files:
            return []
        cur = self._db.cursor()
        try:
            cur.execute("SET TimeZone = 'UTC'")
            rel = cur.execute(
                "WITH t AS (SELECT * FROM read_parquet(?, hive_partitioning = true,"
                " union_by_name = true)) " + sql,
                [files, *params],
            )
            names = [d[0] for d in rel.description or []]
            return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]
        finally:
            cur.close()

    # --- engine start-up -------------------------------------------------------------------

    def trade_id_ranges(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """Committed trade ids per (exchange, product) as contiguous ranges (gaps and islands)."""
        rows = self.query(
            T.TRADES,
            """
            SELECT exchange, product_id, min(trade_id) AS lo, max(trade_id) AS hi
            FROM (SELECT exchange, product_id, trade_id,
                         trade_id - row_number() OVER (
                             PARTITION BY exchange, product_id ORDER BY trade_id) AS island
                  FROM t)
            GROUP BY exchange, product_id, island
            ORDER BY exchange, product_id, lo
            """,
        )
        ranges: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for r in rows:
            ranges.setdefault((r["exchange"], r["product_id"]), []).append((r["lo"], r["hi"]))
        return ranges

    def ticker_high_water(self) -> dict[tuple[str, str], tuple[int, datetime]]:
        rows = self.query(
            T.TICKERS,
            "SELECT exchange, product_id, max(sequence) AS seq, max(time) AS time"
            " FROM t GROUP BY exchange, product_id",
        )
        return {(r["exchange"], r["product_id"]): (r["seq"], r["time"]) for r in rows}

    # --- API history -------------------------------------------------------------------

    def trades(
        self, exchange: str, product_id: str, before: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest-first trades with trade_id < before."""
        return self.query(
            T.TRADES,
            "SELECT * FROM t WHERE exchange = ? AND product_id = ? AND trade_id < ?"
            " ORDER BY trade_id DESC LIMIT ?",
            [exchange, product_id, before if before is not None else 2**62, limit],
        )

    def latest_trades(self, exchanges: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """Newest trades, reading only the newest date partitions."""
        today = datetime.now().astimezone().date()
        dates = [today - timedelta(days=i) for i in range(2)]
        return self.query(
            T.TRADES,
            "SELECT * FROM t WHERE list_contains(?, exchange) ORDER BY time DESC, trade_id DESC"
            " LIMIT ?",
            [list(exchanges), limit],
            dates=dates,
        )

    def candles(
        self, exchange: str, product_id: str, start: datetime, end: datetime, limit: int
    ) -> list[dict[str, Any]]:
        days = (end.date() - start.date()).days
        dates = [start.date() + timedelta(days=i) for i in range(days + 1)]
        return self.query(
            T.CANDLES_1M,
            "SELECT * FROM t WHERE exchange = ? AND product_id = ? AND start >= ? AND start < ?"
            " ORDER BY start DESC LIMIT ?",
            [exchange, product_id, start, end, limit],
            dates=dates,
        )

    def exchanges_with_product(self, product_id: str) -> list[str]:
        rows = self.query(
            T.TRADES, "SELECT DISTINCT exchange FROM t WHERE product_id = ?", [product_id]
        )
        return [r["exchange"] for r in rows]
