"""Model records (`Trade`, `Ticker`) from decoded Arrow rows, for the hot path only.

The lake takes the decoded columns as they are; the API's memory and live push work on
records, so the engine makes them for the rows they need and no others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def trade_records(
    table: pa.Table, frame_index: pa.Int32Array, frames: Sequence[RawFrame]
) -> Iterator[Trade]:
    """One `Trade` per row of a silver.trades table, with its frame's receive time (ns)."""
    columns = (
        table["exchange"].to_pylist(),
        table["product_id"].to_pylist(),
        table["trade_id"].to_pylist(),
        table["price"].to_pylist(),
        table["size"].to_pylist(),
        table["side"].to_pylist(),
        datetimes(table["time"]),
        [frames[i].recv_ns for i in frame_index.to_pylist()],
        table["sequence"].to_pylist(),
        table["maker_order_id"].to_pylist(),
        table["taker_order_id"].to_pylist(),
        table["conn_id"].to_pylist(),
    )
    for values in zip(*columns, strict=True):
        yield Trade(*values)


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
