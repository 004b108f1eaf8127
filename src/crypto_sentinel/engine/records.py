"""Model records (`Trade`, `Ticker`) from decoded Arrow rows, for the hot path only.

The lake takes the decoded columns as they are; the API's memory and live push work on
records, so the engine makes them for the rows they need and no others.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from crypto_sentinel.model import RawFrame, Ticker, Trade, format_decimal

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def unix_us(when: datetime) -> int:
    """Microseconds since the epoch, exactly (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICRO


def datetimes(column: pa.ChunkedArray | pa.Array) -> list[datetime]:
    """UTC datetimes of a timestamp[us] column (several times faster than `to_pylist`)."""
    return [_EPOCH + us * _MICRO for us in pc.cast(column, pa.int64()).to_pylist()]


def trade_records(table: pa.Table, recv_ns: pa.Array | pa.ChunkedArray) -> list[Trade]:
    """One `Trade` per row of a silver.trades table, with its frame's receive time (ns)."""
    columns = (
        table["exchange"].to_pylist(),
        table["product_id"].to_pylist(),
        table["trade_id"].to_pylist(),
        table["price"].to_pylist(),
        table["size"].to_pylist(),
        table["side"].to_pylist(),
        datetimes(table["time"]),
        recv_ns.to_pylist(),
        table["sequence"].to_pylist(),
        table["maker_order_id"].to_pylist(),
        table["taker_order_id"].to_pylist(),
        table["conn_id"].to_pylist(),
        table["venue_symbol"].to_pylist(),
    )
    return [Trade(*values) for values in zip(*columns, strict=True)]


Pair = tuple[str, str]  # exchange, product_id


class NewTrades:
    """The new trades of one chunk, for the hot path: Arrow rows (silver.trades columns and
    each frame's receive time) made into `Trade` records only for the rows that are shown.
    The per-frame path hands its records as they are."""

    def __init__(
        self,
        table: pa.Table | None = None,
        recv_ns: pa.Array | pa.ChunkedArray | None = None,
        records: list[Trade] | None = None,
    ) -> None:
        self.table = table
        self.recv_ns = recv_ns
        self._records = records
        self._parts: dict[Pair, NewTrades] | None = None

    @classmethod
    def of_rows(
        cls, table: pa.Table, frame_index: pa.Int32Array, frames: Sequence[RawFrame]
    ) -> NewTrades:
        recv = pa.array([f.recv_ns for f in frames], pa.int64()).take(frame_index)
        return cls(table, recv)

    def __len__(self) -> int:
        if self._records is not None:
            return len(self._records)
        return 0 if self.table is None else int(self.table.num_rows)

    def records(self, start: int = 0) -> list[Trade]:
        """`Trade`s of the rows from `start` on (negative: from the end)."""
        if self._records is not None:
            return self._records[start:]
        if self.table is None:
            return []
        n = int(self.table.num_rows)
        start = max(n + start, 0) if start < 0 else min(start, n)
        assert self.recv_ns is not None
        return trade_records(self.table.slice(start), self.recv_ns.slice(start))

    def first(self) -> Trade:
        """The first trade (there is at least one)."""
        if self._records is not None:
            return self._records[0]
        assert self.table is not None and self.recv_ns is not None
        return trade_records(self.table.slice(0, 1), self.recv_ns.slice(0, 1))[0]

    def id_range(self) -> tuple[int, int]:
        """Lowest and highest trade id (there is at least one trade)."""
        if self._records is not None:
            ids = [t.trade_id for t in self._records]
            return min(ids), max(ids)
        assert self.table is not None
        lo, hi = pc.min_max(self.table["trade_id"]).values()
        return int(lo.as_py()), int(hi.as_py())

    def recv_times(self) -> list[int]:
        """Each trade's receive time (ns)."""
        if self._records is not None:
            return [t.recv_ns for t in self._records]
        assert self.recv_ns is not None
        return list(self.recv_ns.to_pylist())

    def per_product(self) -> dict[Pair, NewTrades]:
        """The same trades split by (exchange, product), each in chunk order."""
        if self._parts is None:
            self._parts = self._split()
        return self._parts

    def _split(self) -> dict[Pair, NewTrades]:
        if self._records is not None:
            parts: dict[Pair, list[Trade]] = {}
            for trade in self._records:
                parts.setdefault((trade.exchange, trade.product_id), []).append(trade)
            return {pair: NewTrades(records=rows) for pair, rows in parts.items()}
        table, recv = self.table, self.recv_ns
        if table is None or not table.num_rows:
            return {}
        assert recv is not None
        exchanges, products = table["exchange"], table["product_id"]
        if pc.count_distinct(products).as_py() == 1 and pc.count_distinct(exchanges).as_py() == 1:
            return {(exchanges[0].as_py(), products[0].as_py()): self}
        # one stable sort by product, then a zero-copy slice per product
        order = pc.sort_indices(table, [("exchange", "ascending"), ("product_id", "ascending")])
        table, recv = table.take(order), recv.take(order)
        pairs = list(
            zip(table["exchange"].to_pylist(), table["product_id"].to_pylist(), strict=True)
        )
        out = {}
        start = 0
        for end in range(1, len(pairs) + 1):
            if end == len(pairs) or pairs[end] != pairs[start]:
                out[pairs[start]] = NewTrades(
                    table.slice(start, end - start), recv.slice(start, end - start)
                )
                start = end
        return out


_TICKER_AMOUNTS = (
    "best_bid", "best_ask", "best_bid_size", "best_ask_size", "open_24h", "high_24h",
    "low_24h", "volume_24h", "volume_30d", "last_size",
)  # fmt: skip


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


def ticker_records(
    table: pa.Table, frame_index: pa.Int32Array, frames: Sequence[RawFrame], rows: list[int]
) -> list[Ticker]:
    """`Ticker` records of the given rows of a silver.tickers table (amounts as plain text)."""
    picked = table.take(pa.array(rows, pa.int64()))
    values = {name: picked[name].to_pylist() for name in picked.column_names}
    times = datetimes(picked["time"])
    index = frame_index.take(pa.array(rows, pa.int64())).to_pylist()
    out = []
    for i in range(len(rows)):
        amounts = {name: _text(values[name][i]) for name in _TICKER_AMOUNTS}
        out.append(
            Ticker(
                exchange=values["exchange"][i],
                product_id=values["product_id"][i],
                sequence=values["sequence"][i],
                price=format_decimal(values["price"][i]),
                side=values["side"][i],
                trade_id=values["trade_id"][i],
                time=times[i],
                recv_ns=frames[index[i]].recv_ns,
                **amounts,
            )
        )
    return out
