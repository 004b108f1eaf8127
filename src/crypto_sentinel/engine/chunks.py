"""Accept a chunk of frames: decode it column-wise, drop what was seen, tell the hot path.

Shared by the engine (which also writes the lake) and the hot feed of `serve` replicas (which
only shows). Listeners get every new trade, each product's newest new ticker, and per minute
a candle of the chunk's new trades (a delta: merge it into what is known of the minute).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel import metrics
from crypto_sentinel.engine.candles import Candle, candles_of
from crypto_sentinel.engine.dedupe import IdRanges
from crypto_sentinel.engine.records import ticker_records, trade_records
from crypto_sentinel.model import RawFrame, Ticker, Trade
from crypto_sentinel.sources.coinbase_batch import DecodedBatch, decode_batch

#: Called for every new trade and ticker shown, and for every candle delta.
Listener = Callable[[Trade | Ticker | Candle], None]


@dataclass
class Accepted:
    """A chunk after deduplication: rows for the lake, candle deltas for the books."""

    decoded: DecodedBatch
    trades: pa.Table
    tickers: pa.Table
    candles: list[Candle]
    duplicates: int


class ChunkAcceptor:
    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.trade_ids: dict[tuple[str, str], IdRanges] = {}
        #: Newest ticker per product: (sequence, time in unix microseconds).
        self.ticker_marks: dict[tuple[str, str], tuple[int, int]] = {}

    def accept(self, frames: Sequence[RawFrame]) -> Accepted:
        decoded = decode_batch(frames)
        trades, duplicates = self._new_trades(decoded, frames)
        tickers = self._new_tickers(decoded, frames)
        candles = candles_of(trades)
        for listener in self.listeners:
            for candle in candles:
                listener(candle)
        return Accepted(decoded, trades, tickers, candles, duplicates)

    def _new_trades(
        self, decoded: DecodedBatch, frames: Sequence[RawFrame]
    ) -> tuple[pa.Table, int]:
        table, frame_index = decoded.trades, decoded.trade_frames
        if not table.num_rows:
            return table, 0
        exchanges = table["exchange"].to_pylist()
        known = self.trade_ids
        sets = []
        for key in zip(exchanges, table["product_id"].to_pylist(), strict=True):
            ids = known.get(key)
            if ids is None:
                ids = known[key] = IdRanges()
            sets.append(ids)
        trade_ids = table["trade_id"].to_pylist()
        keep = [ids.add(tid) for ids, tid in zip(sets, trade_ids, strict=True)]
        duplicates = len(keep) - sum(keep)
        if duplicates:
            for exchange, kept in zip(exchanges, keep, strict=True):
                if not kept:
                    metrics.DUPLICATES.labels(exchange).inc()
            mask = pa.array(keep, pa.bool_())
            table, frame_index = table.filter(mask), frame_index.filter(mask)
        if self.listeners and table.num_rows:
            for trade in trade_records(table, frame_index, frames):
                for listener in self.listeners:
                    listener(trade)
        return table, duplicates

    def _new_tickers(self, decoded: DecodedBatch, frames: Sequence[RawFrame]) -> pa.Table:
        table, frame_index = decoded.tickers, decoded.ticker_frames
        if not table.num_rows:
            return table
        marks = self.ticker_marks
        keep = []
        kept = 0
        newest: dict[tuple[str, str], int] = {}  # product -> its newest accepted row
        rows = zip(
            table["exchange"].to_pylist(),
            table["product_id"].to_pylist(),
            table["sequence"].to_pylist(),
            pc.cast(table["time"], pa.int64()).to_pylist(),
            strict=True,
        )
        for ex, product, sequence, time_us in rows:
            key = (ex, product)
            mark = marks.get(key)
            if mark is not None and sequence <= mark[0] and time_us <= mark[1]:
                keep.append(False)  # already stored, or older than what we have
                continue
            marks[key] = (sequence, time_us)
            newest[key] = kept  # its row once the others are filtered out
            kept += 1
            keep.append(True)
        if not all(keep):
            mask = pa.array(keep, pa.bool_())
            table, frame_index = table.filter(mask), frame_index.filter(mask)
        if self.listeners and newest:  # the hot path keeps each product's newest ticker
            for ticker in ticker_records(table, frame_index, frames, sorted(newest.values())):
                for listener in self.listeners:
                    listener(ticker)
        return table
