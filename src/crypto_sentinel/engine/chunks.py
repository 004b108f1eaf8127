"""Accept a chunk of frames: decode it, drop what was seen, tell the hot path.

Shared by the engine (which also writes the lake) and the hot feed of `serve` replicas (which
only shows). Listeners get, once per chunk, its new trades (Arrow rows, made into records only
where shown: `NewTrades`), each product's newest new ticker, and per minute a candle of the
chunk's new trades (a delta: merge it into what is known of the minute).

A chunk of `COLUMNAR_FROM` frames or more (a backlog) is decoded column-wise into Arrow
(each exchange's codec through `sources.venues.decode_frames`; Coinbase's costs about a
millisecond per chunk plus a few microseconds per frame); a live feed's few frames at a time go
through the per-frame codec instead. Both give the same rows and the same quarantine reasons
(tests/unit/test_coinbase_batch.py, tests/unit/test_venue_codecs.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel import metrics
from crypto_sentinel.engine.candles import Candle, CandleKey, candles_of, minute_start
from crypto_sentinel.engine.dedupe import IdRanges
from crypto_sentinel.engine.records import NewTrades, ticker_records, unix_us
from crypto_sentinel.model import GapRecord, RawFrame, Ticker, Trade
from crypto_sentinel.sources.batch import DecodedBatch
from crypto_sentinel.sources.codec import FrameError, is_backfill_page
from crypto_sentinel.sources.venues import decode_frame, decode_frames


@dataclass
class ChunkNews:
    """What one chunk adds to the hot path."""

    trades: NewTrades  # new trades, in chunk order
    tickers: list[Ticker]  # each product's newest new ticker
    candles: list[Candle]  # per minute, the candle of the chunk's new trades (a delta)


#: Called once per chunk that brought anything new.
Listener = Callable[[ChunkNews], None]

#: Chunks this large are decoded column-wise (measured break-even: a few hundred frames).
COLUMNAR_FROM = 400


@dataclass
class Accepted:
    """A chunk after deduplication: rows for the lake (Arrow tables from the columnar path,
    records from the per-frame one), quarantine reasons, candle deltas for the books."""

    trades: pa.Table | list[Trade]
    tickers: pa.Table | list[Ticker]
    gaps: pa.Table | list[GapRecord]
    rejected: list[tuple[int, str]]  # (index in the chunk, quarantine reason)
    candles: list[Candle]
    duplicates: int = 0
    backfill_pages: int = 0


class ChunkAcceptor:
    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.trade_ids: dict[tuple[str, str], IdRanges] = {}
        #: Newest ticker per product: (sequence, time in unix microseconds).
        self.ticker_marks: dict[tuple[str, str], tuple[int, int]] = {}

    def accept(self, frames: Sequence[RawFrame]) -> Accepted:
        if len(frames) < COLUMNAR_FROM:
            return self._accept_each(frames)
        decoded = decode_frames(frames)
        trades, frame_index, duplicates = self._new_trades(decoded)
        tickers, newest = self._new_tickers(decoded, frames)
        candles = candles_of(trades)
        if self.listeners:
            self._announce(
                ChunkNews(NewTrades.of_rows(trades, frame_index, frames), newest, candles)
            )
        return Accepted(
            trades, tickers, decoded.gaps, decoded.rejected, candles, duplicates,
            decoded.backfill_pages,
        )  # fmt: skip

    def _announce(self, news: ChunkNews) -> None:
        if len(news.trades) or news.tickers or news.candles:
            for listener in self.listeners:
                listener(news)

    def _accept_each(self, frames: Sequence[RawFrame]) -> Accepted:
        """The per-frame path: the same checks, records instead of columns."""
        out = Accepted([], [], [], [], [])
        deltas: dict[CandleKey, Candle] = {}
        newest: dict[tuple[str, str], Ticker] = {}
        for index, frame in enumerate(frames):
            try:
                record = decode_frame(frame)
            except FrameError as exc:
                out.rejected.append((index, str(exc)))
                continue
            if isinstance(record, Trade):
                self._new_trade(record, out, deltas)
            elif isinstance(
                record, list
            ):  # several trades (a REST backfill page, or a venue's batch)
                out.backfill_pages += is_backfill_page(frame)
                for trade in record:
                    self._new_trade(trade, out, deltas)
            elif isinstance(record, Ticker):
                key = (record.exchange, record.product_id)
                mark = self.ticker_marks.get(key)
                time_us = unix_us(record.time)
                if mark is not None and record.sequence <= mark[0] and time_us <= mark[1]:
                    continue  # already stored, or older than what we have
                self.ticker_marks[key] = (record.sequence, time_us)
                assert isinstance(out.tickers, list)
                out.tickers.append(record)
                newest[key] = record
            elif isinstance(record, GapRecord):
                assert isinstance(out.gaps, list)
                out.gaps.append(record)
        out.candles = list(deltas.values())
        if self.listeners:
            assert isinstance(out.trades, list)
            trades = NewTrades(records=out.trades)
            self._announce(ChunkNews(trades, list(newest.values()), out.candles))
        return out

    def _new_trade(self, trade: Trade, out: Accepted, deltas: dict[CandleKey, Candle]) -> None:
        key = (trade.exchange, trade.product_id)
        ids = self.trade_ids.get(key)
        if ids is None:
            ids = self.trade_ids[key] = IdRanges()
        if not ids.add(trade.trade_id):
            out.duplicates += 1
            metrics.DUPLICATES.labels(trade.exchange).inc()
            return
        assert isinstance(out.trades, list)
        out.trades.append(trade)
        start = minute_start(trade.time)
        delta = deltas.get((*key, start))
        if delta is None:
            deltas[(*key, start)] = Candle.from_trade(trade, start)
        else:
            delta.add(trade)

    def _new_trades(self, decoded: DecodedBatch) -> tuple[pa.Table, pa.Int32Array, int]:
        """The rows of trades not seen before, their frames, and how many were dropped."""
        table, frame_index = decoded.trades, decoded.trade_frames
        if not table.num_rows:
            return table, frame_index, 0
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
        return table, frame_index, duplicates

    def _new_tickers(
        self, decoded: DecodedBatch, frames: Sequence[RawFrame]
    ) -> tuple[pa.Table, list[Ticker]]:
        """The rows of tickers newer than what was stored, and each product's newest one as a
        record when anyone listens."""
        table, frame_index = decoded.tickers, decoded.ticker_frames
        if not table.num_rows:
            return table, []
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
        shown: list[Ticker] = []
        if self.listeners and newest:  # the hot path keeps each product's newest ticker
            shown = ticker_records(table, frame_index, frames, sorted(newest.values()))
        return table, shown
