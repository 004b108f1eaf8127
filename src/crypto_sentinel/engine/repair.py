"""Recompute candles from silver for minutes a crash may have left behind.

A batch commits table by table (trades before candles). A process killed between the two
leaves trades whose candle contribution is missing, and on restart those trades are known
duplicates, so nothing would add them. At start-up, every minute with trades committed after
the last candle commit is recomputed from silver, which is the source of truth.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from deltalake import DeltaTable

from crypto_sentinel.engine.candles import Candle, minute_start
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import Trade

log = logging.getLogger(__name__)


def _last_commit(dt: DeltaTable) -> datetime | None:
    dt.update_incremental()
    history = dt.history(1)
    if not history:
        return None
    return datetime.fromtimestamp(int(history[0]["timestamp"]) / 1000, UTC)


def repair_candles(writer: LakeWriter, reader: LakeReader) -> int:
    """Returns how many candles were recomputed (0 when the lake is consistent)."""
    trades_at = _last_commit(writer.tables[T.TRADES.name])
    candles_at = _last_commit(writer.tables[T.CANDLES_1M.name])
    if trades_at is None or (candles_at is not None and candles_at >= trades_at):
        return 0
    since = (candles_at or datetime(1970, 1, 1, tzinfo=UTC)) - timedelta(seconds=5)
    touched = reader.query(
        T.TRADES,
        "SELECT DISTINCT exchange, product_id, date_trunc('minute', time) AS start"
        " FROM t WHERE recv_time >= ?",
        [since],
        newest=True,
    )
    if not touched:
        return 0
    keys = {(r["exchange"], r["product_id"], r["start"]) for r in touched}
    first = min(k[2] for k in keys)
    last = max(k[2] for k in keys) + timedelta(minutes=1)
    rows = reader.query(
        T.TRADES,
        "SELECT * FROM t WHERE time >= ? AND time < ? ORDER BY time, trade_id",
        [first, last],
        newest=True,
    )
    candles: dict[tuple[str, str, datetime], Candle] = {}
    for row in rows:
        trade = Trade(
            row["exchange"], row["product_id"], row["trade_id"], row["price"], row["size"],
            row["side"], row["time"], 0,
        )  # fmt: skip
        key = (trade.exchange, trade.product_id, minute_start(trade.time))
        if key not in keys:
            continue
        if key in candles:
            candles[key].add(trade)
        else:
            candles[key] = Candle.from_trade(trade, key[2])
    writer.upsert_candles(list(candles.values()))
    log.warning("recomputed %d candles from silver after an interrupted commit", len(candles))
    return len(candles)
