"""The seed's `/latest`: the one baseline every read benchmark sets beside ours.

The seed kept one table of trades as plain Parquet; its `/latest` listed every Parquet file
of its lake, read the newest with pandas and answered that file's newest rows. Over our lake:
list every Parquet data file of every table (the Delta logs' checkpoints are not data, and
the seed had none), take the newest file of the trades table and read it with
pyarrow.parquet (what pandas calls; pandas is not installed here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from crypto_sentinel.lake import tables as T


def seed_latest(lake: Path, limit: int = 50) -> list[dict[str, Any]]:
    """The newest file's `limit` newest trades, as the seed found and read them."""
    files: list[str] = []
    for folder, dirs, names in os.walk(lake):
        dirs[:] = [d for d in dirs if d != "_delta_log"]
        files.extend(os.path.join(folder, n) for n in names if n.endswith(".parquet"))
    trades = str(T.TRADES.path(lake)) + os.sep
    newest = max((f for f in files if f.startswith(trades)), key=os.path.getmtime)
    table = pq.read_table(newest)
    return table.sort_by([("time", "descending")]).slice(0, limit).to_pylist()


def seed_response(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed's `/latest` body."""
    return {
        "data": [
            {
                "symbol": r["product_id"],
                "price": str(r["price"]),
                "side": r["side"],
                "timestamp": r["time"].isoformat(),
                "processing_time": r["recv_time"].isoformat(),
            }
            for r in rows
        ]
    }
