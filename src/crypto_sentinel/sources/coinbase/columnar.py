"""Decode a micro-batch of Coinbase Exchange frames into Arrow tables in one go.

The per-frame codec (`coinbase_codec.decode`) stays the definition of what a frame means. This
module gives the same rows and the same quarantine reasons for a whole batch, faster:

- JSON is decoded by the codec's own msgspec decoder, so exactly the same frames parse, with the
  same values (datetimes, 64-bit ints, duplicate keys, unknown fields, missing fields);
- the checks the codec runs per frame in Python run column-wise in Arrow, and decimal text is
  cast to `decimal128` in Arrow;
- a frame that fails a column check, or is of a rare kind (heartbeat, gap, error, control), goes
  through `decode()` itself, which says exactly what is wrong (or returns its record).

The column checks may be stricter than the codec, never looser: whatever they cannot vouch for
is handed to `decode()`, so identical output holds by construction. One departure: a record
whose integer does not fit the lake's int64 (msgspec accepts up to 2**64 - 1) cannot be written
by `lake.writer` either (it raises, so the batch would never commit); here that frame is
quarantined with a reason instead.

Measured alternatives and numbers: `bench/decode.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import compress
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel.config import PRODUCT_RE
from crypto_sentinel.lake import tables as T
from crypto_sentinel.model import SCALE, RawFrame
from crypto_sentinel.sources.batch import INT64, DecodedBatch, decode_into, storable
from crypto_sentinel.sources.coinbase import codec
from crypto_sentinel.sources.coinbase.codec import (
    MAX_INTEGER_DIGITS,
    MAX_SKEW_SECONDS,
    Decoded,
    decode,
)

__all__ = ["DecodedBatch", "decode_batch", "decode_storable"]


_MATCH_KINDS = frozenset((codec._Match, codec._LastMatch))
_TICKER_KINDS = frozenset((codec._Ticker,))
_PAGE_KINDS = frozenset((codec._RestTrades,))
_FAST_KINDS = _MATCH_KINDS | _TICKER_KINDS | _PAGE_KINDS

#: Ticker amounts by lake type; the codec validates all of them alike.
_TICKER_PRICES = tuple(
    name
    for name in ("price", *codec.TICKER_AMOUNTS)
    if T.TICKERS.schema.field(name).type == T.PRICE
)
_TICKER_VOLUMES = tuple(
    name
    for name in ("price", *codec.TICKER_AMOUNTS)
    if T.TICKERS.schema.field(name).type == T.AMOUNT
)
_MAKER_SIDES = pa.array(["buy", "sell"])
_TAKER_SIDES = pa.array(["sell", "buy"])  # Coinbase reports the maker's side
#: The codec's `_PLAIN_AMOUNT` for RE2 (`$` is the end of the text); only for batches that
#: hold a malformed amount, to find which rows.
_PLAIN = rf"^0*[0-9]{{1,{MAX_INTEGER_DIGITS}}}(?:\.[0-9]{{1,{SCALE}}})?$"
#: Trades stamped within this margin of the skew limit are left to `decode()`, whose float
#: arithmetic decides; the columns are checked in exact integer microseconds.
_SKEW_LIMIT_US = int(MAX_SKEW_SECONDS * 1_000_000) - 1_000


def decode_batch(frames: Sequence[RawFrame]) -> DecodedBatch:
    """Decode and validate `frames` together; rows and reasons equal `decode()` per frame."""
    n = len(frames)
    msgs = _parse([f.text for f in frames])
    kinds = list(map(type, msgs))
    is_match = list(map(_MATCH_KINDS.__contains__, kinds))
    is_ticker = list(map(_TICKER_KINDS.__contains__, kinds))
    is_page = list(map(_PAGE_KINDS.__contains__, kinds))
    ctx = FrameContext(frames)
    trades = _TradeRows(ctx, msgs, is_match, is_page)
    tickers = _TickerRows(ctx, list(compress(msgs, is_ticker)), list(compress(range(n), is_ticker)))
    out = DecodedBatch(
        frames=n,
        trades=trades.table,
        trade_frames=trades.frame_idx,
        tickers=tickers.table,
        ticker_frames=tickers.frame_idx,
        gaps=T.GAPS.schema.empty_table(),
        gap_frames=pa.array([], pa.int32()),
        backfill_pages=sum(is_page) - len(trades.bad & set(compress(range(n), is_page))),
    )
    slow = trades.bad | tickers.bad
    if sum(is_match) + sum(is_ticker) + sum(is_page) < n:  # other kinds, or no parse
        slow.update(i for i, kind in enumerate(kinds) if kind not in _FAST_KINDS)
    if slow:
        _slow_path(frames, sorted(slow), out)
    return out


def _parse(texts: list[str]) -> list[Any]:
    """Each text through the codec's decoder; None where it fails (`decode()` says why).

    One C-level `map` over the batch; a failing frame costs one exception, after which the
    same iterator goes on from the next frame.
    """
    decode_one = codec._decoder.decode
    rest = iter(texts)
    out: list[Any] = []
    while True:
        try:
            out.extend(map(decode_one, rest))  # keeps what was decoded before a failure
            return out
        except msgspec.DecodeError:
            out.append(None)


class FrameContext:
    """Per-frame values a row copies from its frame (exchange, conn_id, receive time)."""

    def __init__(self, frames: Sequence[RawFrame]) -> None:
        self.exchange = [f.exchange for f in frames]
        self.conn_id = [f.conn_id for f in frames]
        self.recv_ns = pa.array([f.recv_ns for f in frames], pa.int64())

    @staticmethod
    def per_row(values: list[str], frame_idx: pa.Array) -> pa.Array:
        if values and values.count(values[0]) == len(values):  # one venue, one connection
            return pa.repeat(pa.scalar(values[0], pa.string()), len(frame_idx))
        return pa.array(values, pa.string()).take(frame_idx)

    def recv_times(self, frame_idx: pa.Array) -> pa.Array:
        """As `lake.writer` converts `recv_ns`: integer division, then a cast."""
        return pc.divide(self.recv_ns.take(frame_idx), 1000).cast(T.UTC_TS)

    def skew_ok(self, times: pa.Array, frame_idx: pa.Array) -> pa.Array | None:
        """Which rows are stamped at most the skew limit after receipt (None: all are)."""
        limit = pc.add(pc.divide(self.recv_ns.take(frame_idx), 1000), _SKEW_LIMIT_US)
        late = pc.subtract(times.cast(pa.int64()), limit)
        if not len(late) or pc.max(late).as_py() <= 0:
            return None
        return pc.less_equal(late, 0)


class _Rows:
    """Columns of one record kind, with a running set of frames to hand to `decode()`."""

    def __init__(self, frame_idx: list[int]) -> None:
        self.frame_idx: pa.Int32Array = pa.array(frame_idx, pa.int32())
        self.columns: dict[str, pa.Array] = {}
        self.bad: set[int] = set()

    def reject(self, ok: pa.Array | None) -> None:
        """Note the frames of rows where `ok` is false (None: every row passed)."""
        if ok is None:
            return
        failed = pc.invert(ok.fill_null(False))
        if pc.any(failed).as_py():
            self.bad.update(self.frame_idx.filter(failed).to_pylist())

    def drop_rejected(self) -> None:
        """Drop every row of a noted frame (all trades of a page go with it)."""
        if self.bad:
            keep = pc.invert(pc.is_in(self.frame_idx, pa.array(sorted(self.bad), pa.int32())))
            self.columns = {k: v.filter(keep) for k, v in self.columns.items()}
            self.frame_idx = self.frame_idx.filter(keep)

    def int64(self, name: str, values: Sequence[int | None], idx: list[int]) -> None:
        """msgspec decodes ints up to 2**64 - 1: rows beyond int64 go to `decode()`."""
        try:
            self.columns[name] = pa.array(values, pa.int64())
        except OverflowError:
            lo, hi = INT64
            fits = [v is None or lo <= v <= hi for v in values]
            self.bad.update(i for i, ok in zip(idx, fits, strict=True) if not ok)
            self.columns[name] = pa.array(
                [v if ok else 0 for v, ok in zip(values, fits, strict=True)], pa.int64()
            )

    def products(self, values: Sequence[str]) -> None:
        """The codec's own Python regex, run once per distinct id (a batch has a handful)."""
        array = pa.array(values, pa.string())
        self.columns["product_id"] = array
        distinct = pc.unique(array).to_pylist()
        good = [p for p in distinct if PRODUCT_RE.match(p)]
        if len(good) < len(distinct):
            self.reject(pc.is_in(array, pa.array(good, pa.string())))

    def amounts(self, cols: dict[str, list[Any]], names: Sequence[str], typ: pa.DataType) -> None:
        """Exact decimal text -> decimal128; rows with text that is not a plain decimal are
        rejected. The columns go through Arrow as one array: a kernel call per column per
        batch costs more than the values."""
        n = len(self.frame_idx)
        text: list[str | None] = []
        for name in names:
            text += cols[name]
        decimals, ok = _plain_decimals(pa.array(text, pa.string()), typ)
        for k, name in enumerate(names):
            self.columns[name] = decimals.slice(k * n, n)
        if ok is not None:
            row_ok = ok.slice(0, n)
            for k in range(1, len(names)):
                row_ok = pc.and_(row_ok, ok.slice(k * n, n))
            self.reject(row_ok)

    def positive(self, name: str) -> None:
        """Rows whose value is not > 0 are rejected (one min() when all are)."""
        values = self.columns[name]
        if len(values) and not pc.min(values).as_py() > 0:
            self.reject(pc.greater(values, 0))

    def times(self, ctx: FrameContext, values: Sequence[datetime]) -> None:
        """Timestamps as `lake.writer` converts them; no timezone or too late: rejected."""
        times, aware = _utc_timestamps(values)
        self.columns["time"] = times
        self.reject(aware)
        self.reject(ctx.skew_ok(times, self.frame_idx))


class _TradeRows(_Rows):
    """Trades of match frames and of backfill pages, in frame order."""

    def __init__(
        self, ctx: FrameContext, msgs: list[Any], is_match: list[bool], is_page: list[bool]
    ):
        n = len(msgs)
        match_idx = list(compress(range(n), is_match))
        cols = _match_columns(list(compress(msgs, is_match)))
        pages = list(compress(msgs, is_page))
        if pages:
            page_idx = list(compress(range(n), is_page))
            counts = [len(p.trades) for p in pages]
            rest = _rest_columns([t for p in pages for t in p.trades])
            none = [None] * sum(counts)
            for name, values in cols.items():
                values += rest.get(name, none)
            cols["product_id"][len(match_idx) :] = [
                p.product_id for p, c in zip(pages, counts, strict=True) for _ in range(c)
            ]
            idx = match_idx + [i for i, c in zip(page_idx, counts, strict=True) for _ in range(c)]
        else:
            idx = match_idx
        super().__init__(idx)
        if pages:  # the codec checks a page's product first, so an empty page is checked too
            self.bad.update(
                i
                for i, p in zip(page_idx, pages, strict=True)
                if not PRODUCT_RE.match(p.product_id)
            )
        self.int64("trade_id", cols["trade_id"], idx)
        self.int64("sequence", cols["sequence"], idx)
        self.positive("trade_id")
        side = pa.array(cols["side"], pa.string())
        self.reject(pc.is_in(side, _MAKER_SIDES))
        self.columns["side"] = side
        self.products(cols["product_id"])
        self.amounts(cols, ("price", "size"), T.PRICE)
        self.positive("price")
        self.positive("size")
        self.times(ctx, cols["time"])
        self.columns["maker_order_id"] = pa.array(cols["maker_order_id"], pa.string())
        self.columns["taker_order_id"] = pa.array(cols["taker_order_id"], pa.string())
        self.drop_rejected()
        c = self.columns
        c["side"] = _TAKER_SIDES.take(pc.index_in(c["side"], _MAKER_SIDES))
        if pages and len(self.frame_idx):
            order = pc.sort_indices(self.frame_idx)  # stable: a page keeps its trades' order
            self.columns = c = {k: v.take(order) for k, v in c.items()}
            self.frame_idx = self.frame_idx.take(order)
        c["exchange"] = ctx.per_row(ctx.exchange, self.frame_idx)
        c["conn_id"] = ctx.per_row(ctx.conn_id, self.frame_idx)
        c["recv_time"] = ctx.recv_times(self.frame_idx)
        c["date"] = c["time"].cast(pa.date32())
        c["venue_symbol"] = c["product_id"]  # Coinbase's own product id is the normalised one
        self.table = pa.table({k: c[k] for k in T.TRADES.schema.names}, schema=T.TRADES.schema)


class _TickerRows(_Rows):
    """Tickers; amounts are checked and cast as text, as `lake.rows.tickers_table` does."""

    def __init__(self, ctx: FrameContext, msgs: list[Any], idx: list[int]) -> None:
        super().__init__(idx)
        cols = _ticker_columns(msgs)
        self.int64("sequence", cols["sequence"], idx)
        self.int64("trade_id", cols["trade_id"], idx)
        self.products(cols["product_id"])
        self.amounts(cols, _TICKER_PRICES, T.PRICE)
        self.amounts(cols, _TICKER_VOLUMES, T.AMOUNT)
        self.positive("price")
        self.columns["side"] = pa.array(cols["side"], pa.string())
        self.times(ctx, cols["time"])
        self.drop_rejected()
        c = self.columns
        c["exchange"] = ctx.per_row(ctx.exchange, self.frame_idx)
        c["recv_time"] = ctx.recv_times(self.frame_idx)
        c["date"] = c["time"].cast(pa.date32())
        self.table = pa.table({k: c[k] for k in T.TICKERS.schema.names}, schema=T.TICKERS.schema)


def _match_columns(m: list[Any]) -> dict[str, list[Any]]:
    """Struct fields as columns, one comprehension each: tuples per row (`astuple`) would be
    GC-tracked and wake the collector several times per batch."""
    return {
        "trade_id": [x.trade_id for x in m],
        "side": [x.side for x in m],
        "size": [x.size for x in m],
        "price": [x.price for x in m],
        "product_id": [x.product_id for x in m],
        "time": [x.time for x in m],
        "sequence": [x.sequence for x in m],
        "maker_order_id": [x.maker_order_id for x in m],
        "taker_order_id": [x.taker_order_id for x in m],
    }


def _rest_columns(t: list[Any]) -> dict[str, list[Any]]:
    return {
        "trade_id": [x.trade_id for x in t],
        "side": [x.side for x in t],
        "size": [x.size for x in t],
        "price": [x.price for x in t],
        "time": [x.time for x in t],
    }


def _ticker_columns(t: list[Any]) -> dict[str, list[Any]]:
    return {
        "product_id": [x.product_id for x in t],
        "sequence": [x.sequence for x in t],
        "price": [x.price for x in t],
        "time": [x.time for x in t],
        "open_24h": [x.open_24h for x in t],
        "volume_24h": [x.volume_24h for x in t],
        "low_24h": [x.low_24h for x in t],
        "high_24h": [x.high_24h for x in t],
        "volume_30d": [x.volume_30d for x in t],
        "best_bid": [x.best_bid for x in t],
        "best_ask": [x.best_ask for x in t],
        "best_bid_size": [x.best_bid_size for x in t],
        "best_ask_size": [x.best_ask_size for x in t],
        "side": [x.side for x in t],
        "trade_id": [x.trade_id for x in t],
        "last_size": [x.last_size for x in t],
    }


def _plain_decimals(text: pa.Array, typ: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    """Cast decimal text; also say which rows are not plain decimals (None: all are; nulls are).

    The common case costs a byte scan and a few cheap kernels instead of a regex per value:
    text made of ASCII digits and dots, no leading or trailing dot, at most SCALE places, that
    Arrow casts (one dot, at most MAX_INTEGER_DIGITS significant integer digits) is exactly
    what the codec's `_PLAIN_AMOUNT` accepts. Anything else takes the exact regex.
    """
    if _looks_plain(text):
        try:
            return pc.cast(text, typ), None
        except pa.ArrowInvalid:
            pass
    ok = pc.match_substring_regex(text, _PLAIN).fill_null(True)
    return pc.cast(pc.if_else(ok, text, "0"), typ), ok


def _looks_plain(text: pa.Array) -> bool:
    """The cheap test of `_plain_decimals` (the cast itself is the rest of it)."""
    if not len(text) or text.null_count == len(text):
        return True
    _, offsets, data = text.buffers()
    bounds = memoryview(offsets).cast("i")  # int32 offsets of a `string` array
    start, end = bounds[text.offset], bounds[text.offset + len(text)]
    if data is None or data.to_pybytes()[start:end].translate(None, b"0123456789."):
        return False
    if pc.any(pc.starts_with(text, ".")).as_py() or pc.any(pc.ends_with(text, ".")).as_py():
        return False
    length = pc.binary_length(text)
    if pc.max(length).as_py() <= SCALE + 1:  # too short for more than SCALE places
        return True
    places = pc.subtract(pc.subtract(length, pc.find_substring(text, ".")), 1)
    return bool(pc.max(places).as_py() <= SCALE)  # no dot: the length; long ints take the regex


def _utc_timestamps(values: Sequence[datetime]) -> tuple[pa.Array, pa.Array | None]:
    """Datetimes as `pa.array(values, UTC_TS)` gives them, and which have a timezone.

    Converting datetime objects costs ~200 ns each; msgspec writes them back as RFC 3339 text
    in ~10 ns, and when every one is UTC with microseconds (the common case) Arrow parses that
    text as fixed-width values. Otherwise the plain conversion.
    """
    n = len(values)
    body = msgspec.json.encode(values)[1:-1] + b","  # '"...",' per value
    # Only a UTC value's text holds a "Z" (one, at its end) and it is 20 or 27 bytes long:
    # n Zs mean n UTC values, and 30 * n bytes in all that each is "YYYY-MM-DDTHH:MM:SS.ffffffZ".
    if n and len(body) == 30 * n and body[27::30] == b"Z" * n:
        quoted = pa.FixedSizeBinaryArray.from_buffers(pa.binary(30), n, [None, pa.py_buffer(body)])
        return pc.binary_slice(quoted, 1, 28).cast(pa.string()).cast(T.UTC_TS), None
    aware = pa.array([v.tzinfo is not None for v in values], pa.bool_())
    return pa.array(values, T.UTC_TS), aware


# --- the slow path: `decode()` per frame, its records turned into the same rows ---------------


def decode_storable(frame: RawFrame) -> Decoded:
    """`decode()` for one frame, also refusing what the lake cannot store (an int beyond int64)
    with the reason `decode_batch` gives: the engine's path for a few frames at a time."""
    return storable(frame, decode)


def _slow_path(frames: Sequence[RawFrame], slow: list[int], out: DecodedBatch) -> None:
    decode_into(frames, slow, out, decode)
