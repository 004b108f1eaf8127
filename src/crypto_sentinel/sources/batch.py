"""A micro-batch of decoded frames as Arrow tables, shared by every exchange codec.

`decode_each` is the reference way to fill one: each frame through the codec's per-frame
`decode`, the records turned into lake rows as `lake.writer` does. A codec with a faster
column-wise decoder (Coinbase: `coinbase.columnar`) hands it the frames it cannot vouch for, so
both ways give the same rows and the same quarantine reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.rows import gaps_table, tickers_table, trades_table
from crypto_sentinel.model import GapRecord, Heartbeat, RawFrame, Ticker, Trade
from crypto_sentinel.sources.codec import Decoded, FrameError, is_backfill_page

FrameDecoder = Callable[[RawFrame], Decoded]
INT64 = (-(2**63), 2**63 - 1)


@dataclass
class DecodedBatch:
    """One micro-batch as Arrow tables; each row carries the input position of its frame."""

    frames: int
    trades: pa.Table  # T.TRADES.schema, in frame order (a frame's trades in its order)
    trade_frames: pa.Int32Array  # index in the input of each trade row's frame
    tickers: pa.Table  # T.TICKERS.schema, in frame order
    ticker_frames: pa.Int32Array
    gaps: pa.Table  # T.GAPS.schema
    gap_frames: pa.Int32Array
    heartbeats: list[tuple[int, Heartbeat]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, quarantine reason)
    backfill_pages: int = 0  # `rest_trades` frames decoded (their trades are in `trades`)
    control: int = 0  # frames that carry no record (subscription acks)

    @classmethod
    def empty(cls, frames: int) -> DecodedBatch:
        none, trades, tickers, gaps = _EMPTY
        return cls(frames, trades, none, tickers, none, gaps, none)


#: Arrow arrays and tables are immutable: one set of empty ones serves every batch (making
#: them costs more than decoding a few frames).
_EMPTY = (
    pa.array([], pa.int32()),
    T.TRADES.schema.empty_table(),
    T.TICKERS.schema.empty_table(),
    T.GAPS.schema.empty_table(),
)


def decode_each(frames: Sequence[RawFrame], decode: FrameDecoder) -> DecodedBatch:
    """Every frame through the per-frame `decode` (the reference of what a batch holds)."""
    out = DecodedBatch.empty(len(frames))
    decode_into(frames, range(len(frames)), out, decode)
    return out


def decode_into(
    frames: Sequence[RawFrame], which: Sequence[int], out: DecodedBatch, decode: FrameDecoder
) -> None:
    """Decode the frames at `which` one by one and merge their rows into `out` in frame
    order."""
    part = DecodedBatch.empty(len(which))
    rows: dict[type, tuple[list[Any], list[int]]] = {kind: ([], []) for kind, _ in _RECORD_TABLES}
    for at, i in enumerate(which):
        try:
            record = storable(frames[i], decode)
        except FrameError as exc:
            part.rejected.append((at, str(exc)))
            continue
        if isinstance(record, list):  # several trades (a REST page, or a venue's batch)
            rows[Trade][0].extend(record)
            rows[Trade][1].extend([at] * len(record))
            part.backfill_pages += is_backfill_page(frames[i])
        elif type(record) in rows:
            rows[type(record)][0].append(record)
            rows[type(record)][1].append(at)
        elif isinstance(record, Heartbeat):
            part.heartbeats.append((at, record))
        else:
            part.control += 1
    for (kind, to_table), (table, index) in zip(_RECORD_TABLES, _TABLES, strict=True):
        records, positions = rows[kind]
        if records:
            setattr(part, table, to_table(records))
            setattr(part, index, pa.array(positions, pa.int32()))
    merge_into(out, [(part, which)])


_RECORD_TABLES: tuple[tuple[type, Callable[[list[Any]], pa.Table]], ...] = (
    (Trade, trades_table),
    (Ticker, tickers_table),
    (GapRecord, gaps_table),
)
_TABLES = (("trades", "trade_frames"), ("tickers", "ticker_frames"), ("gaps", "gap_frames"))


def merge_into(out: DecodedBatch, parts: Sequence[tuple[DecodedBatch, Sequence[int]]]) -> None:
    """Merge batches decoded from subsets of `out`'s frames into `out`, in frame order.

    Each part comes with `where`, the index in `out` of each of its frames (ascending). Rows
    already in `out` stay; rows of one frame keep their order.
    """
    tables: dict[str, list[tuple[pa.Table, pa.Int32Array]]] = {t: [] for t, _ in _TABLES}
    for table, index in _TABLES:
        if len(getattr(out, index)):
            tables[table].append((getattr(out, table), getattr(out, index)))
    for part, where in parts:
        at = pa.array(where, pa.int32())
        out.heartbeats.extend((where[i], hb) for i, hb in part.heartbeats)
        out.rejected.extend((where[i], reason) for i, reason in part.rejected)
        out.backfill_pages += part.backfill_pages
        out.control += part.control
        for table, index in _TABLES:
            if len(getattr(part, index)):
                tables[table].append((getattr(part, table), at.take(getattr(part, index))))
    out.rejected.sort()
    out.heartbeats.sort(key=lambda item: item[0])
    for table, index in _TABLES:
        rows = tables[table]
        if len(rows) == 1:
            setattr(out, table, rows[0][0])
            setattr(out, index, rows[0][1])
        elif rows:
            merged = pa.concat_tables([t for t, _ in rows])
            idx = pa.concat_arrays([i for _, i in rows])
            order = pc.sort_indices(idx)  # stable: rows of one frame keep their order
            setattr(out, table, merged.take(order))
            setattr(out, index, idx.take(order))


_INT_FIELDS: dict[type, tuple[str, ...]] = {
    Trade: ("trade_id", "sequence"),
    Ticker: ("sequence", "trade_id"),
    GapRecord: ("first_missing_id", "last_missing_id", "missing", "backfilled"),
}


def storable(frame: RawFrame, decode: FrameDecoder) -> Decoded:
    """`decode(frame)`, also refusing what the lake cannot store (an int beyond int64): the
    engine's path for a few frames at a time."""
    record = decode(frame)
    if isinstance(record, list):
        where = "the REST page" if is_backfill_page(frame) else "the frame"
        for trade in record:
            reason = unstorable(trade)
            if reason is not None:
                raise FrameError(f"trade {trade.trade_id} of {where}: {reason}")
        return record
    reason = unstorable(record)
    if reason is not None:
        raise FrameError(reason)
    return record


def unstorable(record: object) -> str | None:
    """Why a record the codec accepted cannot be a lake row (an int beyond int64), if so."""
    lo, hi = INT64
    for name in _INT_FIELDS.get(type(record), ()):
        value = getattr(record, name)
        if value is not None and not lo <= value <= hi:
            return f"{name} {value} does not fit a 64-bit signed integer"
    return None
