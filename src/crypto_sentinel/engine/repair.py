"""Recompute from silver the candles a crash left without their trades' contribution.

A batch commits table by table (trades before candles). A process ended between the two
leaves trades in silver whose candle contribution gold lacks; derived again from bronze
(engine/recovery.py), those trades are known duplicates, so nothing would add them. For such a
batch, every minute its trades fall in is recomputed from silver, the source of truth.

Only the minutes of that batch: recomputing every recent minute (as this did before, from the
time of the newest candle commit) would, over Kafka, overwrite candles that another processor
was updating at that moment from trades this one had not read.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import timedelta

from crypto_sentinel.engine.candles import Candle, CandleKey, candles_of, minute_start
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import RawFrame, Trade
from crypto_sentinel.sources.venues import decode_frames

log = logging.getLogger(__name__)


def lacks_candles(writer: LakeWriter, txns: dict[str, int], owns: Collection[str]) -> bool:
    """Whether silver holds this batch of an owned app id and gold does not."""
    trades, candles = writer.tables[T.TRADES.name], writer.tables[T.CANDLES_1M.name]
    trades.update_incremental()
    candles.update_incremental()
    for app, version in txns.items():
        if app not in owns:
            continue
        in_trades = trades.transaction_version(app)
        in_candles = candles.transaction_version(app)
        if in_trades is not None and in_trades >= version > (in_candles or -1):
            return True
    return False


def minutes_of(frames: Sequence[RawFrame]) -> set[CandleKey]:
    """The candle minutes of every trade in `frames` (duplicates included)."""
    return {candle.key for candle in candles_of(decode_frames(frames).trades)}


def repair_candles(writer: LakeWriter, reader: LakeReader, keys: Collection[CandleKey]) -> int:
    """Recompute the candles of `keys` from silver; returns how many were written."""
    if not keys:
        return 0
    written = writer.upsert_candles(lambda: candles_from_silver(reader, keys))
    log.warning("recomputed %d candles from silver after an interrupted commit", written)
    return written


def candles_from_silver(reader: LakeReader, keys: Collection[CandleKey]) -> list[Candle]:
    """The candles of `keys` from every trade silver holds now."""
    first = min(k[2] for k in keys)
    last = max(k[2] for k in keys) + timedelta(minutes=1)
    rows = reader.query(
        T.TRADES,
        "SELECT * FROM t WHERE time >= ? AND time < ? ORDER BY time, trade_id",
        [first, last],
        newest=True,
    )
    candles: dict[CandleKey, Candle] = {}
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
    return list(candles.values())
