"""`sentinel history` for venues whose REST pages trades forward by time (Kraken
`GET /0/public/Trades?pair=&since=<ns cursor>`), not backwards by id.

The walk starts at `--since` and follows the venue's cursor until `--until` or the present;
each page's trades in [since, until) go down the normal path as a `rest_trades` frame, as
with the backwards walk. Kraken's cursor is the time of a page's last trade and `since` is
exclusive, so trades sharing that nanosecond could fall between two pages: each next page
starts one nanosecond earlier and repeats that last trade (dedupe drops it).

Resumable: when a page holds only ids the lake has, and the lake's contiguous ids reach
further, the walk jumps to the time of the last of them (read from the lake), so a rerun
after a kill asks only for what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PageRow:
    trade_id: int
    time: datetime
    raw: bytes  # the row exactly as the venue sent it


@dataclass(frozen=True)
class ForwardPage:
    pair: str  # the venue's key of the rows in its body
    rows: list[PageRow]  # oldest first
    last: int  # the cursor of the next page (ns)


class _Body(msgspec.Struct):
    error: list[str] = []
    result: dict[str, msgspec.Raw] = {}


_body = msgspec.json.Decoder(_Body)
_rows = msgspec.json.Decoder(list[msgspec.Raw])
_row = msgspec.json.Decoder(tuple[msgspec.Raw, msgspec.Raw, float, str, str, str, int])
_cursor = msgspec.json.Decoder(str | int)


def kraken_page(body: str) -> ForwardPage:
    """A Trades body as rows with id and time (each row kept byte for byte); ValueError
    says why a body cannot be paged on."""
    try:
        page = _body.decode(body)
        if page.error:
            raise ValueError(f"exchange error: {', '.join(page.error)}")
        if "last" not in page.result:
            raise ValueError("Trades body without result.last")
        last = int(_cursor.decode(page.result["last"]))
        pairs = [k for k in page.result if k != "last"]
        if len(pairs) != 1:
            raise ValueError(f"Trades body with {len(pairs)} pairs")
        rows = []
        for raw in _rows.decode(page.result[pairs[0]]):
            row = _row.decode(raw)
            seconds, trade_id = row[2], row[6]
            time = _EPOCH + timedelta(microseconds=round(seconds * 1_000_000))
            rows.append(PageRow(trade_id, time, bytes(raw)))
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid Trades body: {exc}") from None
    return ForwardPage(pairs[0], rows, last)


def as_ns(time: datetime) -> int:
    delta = time - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def rest_trades_frame(product: str, page: ForwardPage, rows: list[PageRow]) -> str:
    """The `rest_trades` frame of some rows of a page (the codec reads a Trades result)."""
    body = b",".join(r.raw for r in rows).decode()
    pair = msgspec.json.encode(page.pair).decode()
    product_json = msgspec.json.encode(product).decode()
    return (
        f'{{"type":"rest_trades","product_id":{product_json},'
        f'"trades":{{{pair}:[{body}],"last":"{page.last}"}}}}'
    )


def stored_time(lake: Any, exchange: str, product: str, trade_id: int) -> datetime | None:
    """When a stored trade happened (None: not stored)."""
    rows = LakeReader(lake).query(
        T.TRADES,
        "SELECT time FROM t WHERE exchange = ? AND product_id = ? AND trade_id = ?",
        [exchange, product, trade_id],
    )
    return rows[0]["time"] if rows else None


def jump(
    rows: list[PageRow], islands: list[tuple[int, int]], when: Callable[[int], datetime | None]
) -> tuple[int, int] | None:
    """(cursor ns, ids skipped) past the stored ids that continue a page whose ids are all
    stored, or None when the walk must go on page by page."""
    if not rows:
        return None
    lo, hi = rows[0].trade_id, rows[-1].trade_id
    for a, b in islands:
        if a <= lo and hi < b:
            time = when(b)
            if time is None:
                return None
            return as_ns(time) - 1, b - hi
    return None
