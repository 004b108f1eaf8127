"""Coinbase micro-batches through the compiled decoder (`native/`, Rust), when it is installed.

Why: `columnar.decode_batch` still turns every field of every frame into a Python object on
its way into Arrow, and that is most of the engine's CPU at high rates. The compiled decoder
parses each match and ticker frame once and returns Arrow-ready column buffers.

It only vouches for frames written the way Coinbase writes them; every other frame goes
through `columnar.decode_batch` (and so, where needed, the per-frame codec), as do rows whose
product id fails the codec's pattern or whose time is near the skew limit. So the rows and the
quarantine reasons are the same with it as without it; the differential tests hold both to the
per-frame codec. `SENTINEL_COMPILED_DECODER=off` turns it off (`crypto_sentinel/extension.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel import extension_arrow as buffers
from crypto_sentinel.config import PRODUCT_RE
from crypto_sentinel.extension import NATIVE
from crypto_sentinel.lake import tables as T
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.batch import DecodedBatch, merge_into
from crypto_sentinel.sources.coinbase import codec, columnar

__all__ = ["AVAILABLE", "decode_batch"]


_native = NATIVE
#: Whether batches go through the compiled decoder (else `columnar.decode_batch` alone).
AVAILABLE = _native is not None

_TAKER_SIDES = pa.array(["buy", "sell"])  # by `taker_sell`: 1 when the maker bought
_OTHER = 0  # `kinds` of a frame left to Python (1: a match row, 2: a ticker row)


def decode_batch(frames: Sequence[RawFrame]) -> DecodedBatch:
    """Decode and validate `frames` together; rows and reasons equal `decode()` per frame."""
    if _native is None:
        return columnar.decode_batch(frames)
    raw = _native.decode_coinbase([f.text for f in frames])
    kinds: bytes = raw["kinds"]
    n = len(frames)
    out = DecodedBatch.empty(n)
    ctx = columnar.FrameContext(frames)
    products = pa.array(raw["products"], pa.string())
    known = pa.array([bool(PRODUCT_RE.match(p)) for p in raw["products"]], pa.bool_())
    others = _left_to_python(kinds)
    out.trades, out.trade_frames = _rows(_trades(raw["matches"], products), known, ctx, others)
    out.tickers, out.ticker_frames = _rows(_tickers(raw["tickers"], products), known, ctx, others)
    if others:
        where = sorted(others)
        merge_into(out, [(columnar.decode_batch([frames[i] for i in where]), where)])
    return out


def _left_to_python(kinds: bytes) -> set[int]:
    """Indexes of the frames the compiled decoder did not vouch for (a few per batch)."""
    others = set()
    at = kinds.find(_OTHER)
    while at >= 0:
        others.add(at)
        at = kinds.find(_OTHER, at + 1)
    return others


class _Columns:
    """One kind's rows as the compiled decoder left them, and its frame indexes."""

    def __init__(self, schema: pa.Schema, columns: dict[str, pa.Array], code: pa.Array) -> None:
        self.schema = schema
        self.columns = columns
        self.product_code = code
        self.frame_idx = columns.pop("frame")


def _rows(
    rows: _Columns, known: pa.Array, ctx: columnar.FrameContext, others: set[int]
) -> tuple[pa.Table, pa.Int32Array]:
    """The table of the rows whose product and time pass; the frames of the others go to
    `others` (for the Python decoder, which says what is wrong or decides at the margin)."""
    c = rows.columns
    idx = rows.frame_idx
    ok = known.take(rows.product_code) if len(idx) else None
    skew = ctx.skew_ok(c["time"], idx)
    if skew is not None:
        ok = skew if ok is None else pc.and_(ok, skew)
    if ok is not None and not pc.all(ok).as_py():
        others.update(idx.filter(pc.invert(ok)).to_pylist())
        c = {k: v.filter(ok) for k, v in c.items()}
        idx = idx.filter(ok)
    c["exchange"] = ctx.per_row(ctx.exchange, idx)
    c["recv_time"] = ctx.recv_times(idx)
    c["date"] = c["time"].cast(pa.date32())
    if "conn_id" in rows.schema.names:
        c["conn_id"] = ctx.per_row(ctx.conn_id, idx)
        c["venue_symbol"] = c["product_id"]  # Coinbase's own product id is the normalised one
    table = pa.table({k: c[k] for k in rows.schema.names}, schema=rows.schema)
    return table, idx


def _trades(raw: dict[str, Any], products: pa.Array) -> _Columns:
    n = len(raw["frame"]["data"]) // 4
    code = buffers.values(pa.int32(), n, raw["product"])
    columns = {
        "frame": buffers.values(pa.int32(), n, raw["frame"]),
        "trade_id": buffers.values(pa.int64(), n, raw["trade_id"]),
        "sequence": buffers.values(pa.int64(), n, raw["sequence"]),
        "side": _TAKER_SIDES.take(buffers.plain(pa.uint8(), raw["taker_sell"])),
        "product_id": products.take(code),
        "price": buffers.values(T.PRICE, n, raw["price"]),
        "size": buffers.values(T.PRICE, n, raw["size"]),
        "time": buffers.values(T.UTC_TS, n, raw["time"]),
        "maker_order_id": buffers.strings(n, raw["maker_order_id"]),
        "taker_order_id": buffers.strings(n, raw["taker_order_id"]),
    }
    return _Columns(T.TRADES.schema, columns, code)


def _tickers(raw: dict[str, Any], products: pa.Array) -> _Columns:
    n = len(raw["frame"]["data"]) // 4
    code = buffers.values(pa.int32(), n, raw["product"])
    columns = {
        "frame": buffers.values(pa.int32(), n, raw["frame"]),
        "product_id": products.take(code),
        "sequence": buffers.values(pa.int64(), n, raw["sequence"]),
        "side": buffers.strings(n, raw["side"]),
        "trade_id": buffers.values(pa.int64(), n, raw["trade_id"]),
        "time": buffers.values(T.UTC_TS, n, raw["time"]),
    }
    for name in ("price", *codec.TICKER_AMOUNTS):
        columns[name] = buffers.values(T.TICKERS.schema.field(name).type, n, raw[name])
    return _Columns(T.TICKERS.schema, columns, code)
