"""Lake rows from records: the Arrow tables of bronze, quarantine, trades, tickers, gaps and
candles, shaped by `lake.tables`. The writer commits them; the per-frame codecs' batches
(`sources.batch`) build theirs here too, so both paths give the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel import extension_arrow as buffers
from crypto_sentinel.engine.candles import Candle
from crypto_sentinel.extension import NATIVE
from crypto_sentinel.lake import tables as T
from crypto_sentinel.model import GapRecord, RawFrame, Rejected, Ticker, Trade


def _columns(records: Sequence[msgspec.Struct]) -> dict[str, tuple[Any, ...]]:
    """Transpose records into columns in one pass (not one Python loop per column)."""
    names = type(records[0]).__struct_fields__
    rows = map(msgspec.structs.astuple, records)
    return dict(zip(names, zip(*rows, strict=True), strict=True))


def _timestamps_us(ns_values: Sequence[int]) -> pa.Array:
    return pc.divide(pa.array(ns_values, pa.int64()), 1000).cast(T.UTC_TS)


def _dates(ts: pa.Array) -> pa.Array:
    return pc.cast(ts, pa.date32())


def bronze_table(frames: Sequence[RawFrame]) -> pa.Table:
    """Every frame's row; through the compiled extension when it is installed (the same
    values, without a Python list per column: this is the widest batch)."""
    if NATIVE is not None and frames:
        columns = NATIVE.bronze_columns(frames if isinstance(frames, list) else list(frames))
        if columns is not None:
            n = len(frames)
            return pa.table(
                {
                    "source": buffers.strings(n, columns["source"]),
                    "conn_id": buffers.strings(n, columns["conn_id"]),
                    "recv_seq": buffers.plain(pa.int64(), columns["recv_seq"]),
                    "recv_time": buffers.plain(T.UTC_TS, columns["recv_us"]),
                    "frame": buffers.strings(n, columns["frame"]),
                    "date": buffers.plain(pa.date32(), columns["date"]),
                },
                schema=T.BRONZE.schema,
            )
    return python_bronze_table(frames)


def python_bronze_table(frames: Sequence[RawFrame]) -> pa.Table:
    """`bronze_table` in Python: a list per field (several times faster than transposing
    structs)."""
    recv = _timestamps_us([f.recv_ns for f in frames])
    return pa.table(
        {
            "source": pa.array([f.exchange for f in frames], pa.string()),
            "conn_id": pa.array([f.conn_id for f in frames], pa.string()),
            "recv_seq": pa.array([f.recv_seq for f in frames], pa.int64()),
            "recv_time": recv,
            "frame": pa.array([f.text for f in frames], pa.string()),
            "date": _dates(recv),
        },
        schema=T.BRONZE.schema,
    )


def quarantine_table(rejected: Sequence[Rejected]) -> pa.Table:
    recv = _timestamps_us([r.frame.recv_ns for r in rejected])
    return pa.table(
        {
            "source": [r.frame.exchange for r in rejected],
            "conn_id": [r.frame.conn_id for r in rejected],
            "recv_seq": pa.array([r.frame.recv_seq for r in rejected], pa.int64()),
            "recv_time": recv,
            "frame": [r.frame.text for r in rejected],
            "reason": [r.reason for r in rejected],
            "date": _dates(recv),
        },
        schema=T.QUARANTINE.schema,
    )


def gaps_table(gaps: Sequence[GapRecord]) -> pa.Table:
    detected = pa.array([g.detected_at for g in gaps], T.UTC_TS)
    return pa.table(
        {
            "exchange": [g.exchange for g in gaps],
            "product_id": [g.product_id for g in gaps],
            "kind": [g.kind for g in gaps],
            "detected_at": detected,
            "first_missing_id": pa.array([g.first_missing_id for g in gaps], pa.int64()),
            "last_missing_id": pa.array([g.last_missing_id for g in gaps], pa.int64()),
            "missing": pa.array([g.missing for g in gaps], pa.int64()),
            "backfilled": pa.array([g.backfilled for g in gaps], pa.int64()),
            "outcome": [g.outcome for g in gaps],
            "recv_time": _timestamps_us([g.recv_ns for g in gaps]),
            "conn_id": [g.conn_id for g in gaps],
            "date": _dates(detected),
            "reason": pa.array([g.reason for g in gaps], pa.string()),
        },
        schema=T.GAPS.schema,
    )


def trades_table(trades: Sequence[Trade]) -> pa.Table:
    v = _columns(trades)
    times = pa.array(v["time"], T.UTC_TS)
    return pa.table(
        {
            "exchange": pa.array(v["exchange"], pa.string()),
            "product_id": pa.array(v["product_id"], pa.string()),
            "trade_id": pa.array(v["trade_id"], pa.int64()),
            "price": pa.array(v["price"], T.PRICE),
            "size": pa.array(v["size"], T.PRICE),
            "side": pa.array(v["side"], pa.string()),
            "time": times,
            "recv_time": _timestamps_us(v["recv_ns"]),
            "sequence": pa.array(v["sequence"], pa.int64()),
            "maker_order_id": pa.array(v["maker_order_id"], pa.string()),
            "taker_order_id": pa.array(v["taker_order_id"], pa.string()),
            "conn_id": pa.array(v["conn_id"], pa.string()),
            "date": _dates(times),
            "venue_symbol": pa.array(v["venue_symbol"], pa.string()),
        },
        schema=T.TRADES.schema,
    )


def tickers_table(tickers: Sequence[Ticker]) -> pa.Table:
    values = _columns(tickers)
    times = pa.array(values["time"], T.UTC_TS)
    columns: dict[str, Any] = {}
    for name in T.TICKERS.schema.names:
        if name == "time":
            columns[name] = times
        elif name == "recv_time":
            columns[name] = _timestamps_us(values["recv_ns"])
        elif name == "date":
            columns[name] = _dates(times)
        else:
            typ = T.TICKERS.schema.field(name).type
            if pa.types.is_decimal(typ):  # exact decimal text -> decimal, vectorised
                columns[name] = pc.cast(pa.array(values[name], pa.string()), typ)
            else:
                columns[name] = pa.array(values[name], typ)
    return pa.table(columns, schema=T.TICKERS.schema)


def candles_table(candles: Sequence[Candle]) -> pa.Table:
    return pa.Table.from_pylist([c.to_row() for c in candles], schema=T.CANDLES_1M.schema)
