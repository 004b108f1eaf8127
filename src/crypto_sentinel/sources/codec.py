"""What every exchange codec shares: the error that quarantines a frame, the checks that keep
amounts exact and times plausible, and the two frame kinds our own sources write (a REST
backfill page wrapper and a gap record), which every codec reads alike."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec

from crypto_sentinel.config import PRODUCT_RE
from crypto_sentinel.model import SCALE, GapRecord, Heartbeat, RawFrame, Ticker, Trade

#: A trade stamped this far after we received it is not plausible.
MAX_SKEW_SECONDS = 3600.0
MAX_INTEGER_DIGITS = 16

#: What a codec makes of one frame: a record, several trades (a frame or a REST page that
#: carries many), or None for a frame that carries nothing to store (acks, keep-alives).
Decoded = Trade | Ticker | Heartbeat | list[Trade] | GapRecord | None

#: How our backfill wraps a REST page (sources/backfill.py); the first bytes are fixed.
BACKFILL_PAGE_PREFIX = '{"type":"rest_trades"'
GAP_RECORD_PREFIX = '{"type":"gap"'


class Sighting(NamedTuple):
    """A trade id a frame shows, for gap tracking (sources/base.GapTracker)."""

    product_id: str
    newest: int  # this id exists at the exchange
    covered: int  # ids up to this one should have reached us
    kind: str  # trade_id | heartbeat: what a gap found through it is called
    carries_trade: bool  # the frame holds the trade itself (a heartbeat only names it)


class FrameError(ValueError):
    """The frame cannot be used; the message is the quarantine reason."""


def is_backfill_page(frame: RawFrame) -> bool:
    return frame.text.startswith(BACKFILL_PAGE_PREFIX)


#: Product ids already validated: a feed repeats a handful of them on every frame.
_VALID_PRODUCTS: set[str] = set()


def check_product(product_id: str) -> None:
    if product_id in _VALID_PRODUCTS:
        return
    if not PRODUCT_RE.match(product_id):
        raise FrameError(f"invalid product_id {product_id!r}")
    if len(_VALID_PRODUCTS) >= 10_000:  # bounded even when a feed invents products
        _VALID_PRODUCTS.clear()
    _VALID_PRODUCTS.add(product_id)


#: A plain non-negative decimal as the exchange sends it: ASCII digits (`[0-9]`, unlike
#: `str.isdigit`, takes no "²" or "٣"), at most SCALE places, no absurd integer part.
PLAIN_AMOUNT = re.compile(rf"0*[0-9]{{1,{MAX_INTEGER_DIGITS}}}(?:\.[0-9]{{1,{SCALE}}})?")


def check_amount(name: str, text: str, allow_zero: bool = False) -> None:
    """Validate exact decimal text as sent ("0.00001305") on the string: one C-level match
    per field (a ticker has eleven); the slow path only says what is wrong."""
    if PLAIN_AMOUNT.fullmatch(text) is not None and (allow_zero or text.strip("0.")):
        return
    whole, dot, frac = text.partition(".")
    if not text.isascii() or not whole.isdigit() or (dot and not frac.isdigit()):
        if text.startswith("-") and not allow_zero:
            raise FrameError(f"{name} must be > 0, got {text}")
        raise FrameError(f"{name} is not a plain non-negative decimal: {text!r}")
    if len(frac) > SCALE:
        raise FrameError(f"{name} has more than {SCALE} decimal places: {text}")
    if len(whole.lstrip("0")) > MAX_INTEGER_DIGITS:
        raise FrameError(f"{name} is absurdly large: {text}")
    raise FrameError(f"{name} must be > 0, got {text}")


def number_text(name: str, value: Decimal, allow_zero: bool = False) -> str:
    """A JSON number (parsed as Decimal, never float) as plain decimal text, checked like a
    string amount: venues that send numbers (Kraken) get exactly the same rules."""
    if not value.is_finite():
        raise FrameError(f"{name} is not a finite number: {value}")
    text = format(value, "f")
    check_amount(name, text, allow_zero)
    return text


def check_time(frame: RawFrame, time: datetime) -> None:
    if time.tzinfo is None:
        raise FrameError("time has no timezone (expected UTC with Z)")
    if time.timestamp() - frame.recv_ns / 1e9 > MAX_SKEW_SECONDS:
        raise FrameError(f"time {time.isoformat()} is far in the future of its receipt")


class GapFrame(msgspec.Struct, tag_field="type", tag="gap", kw_only=True):
    """A gap record written by our source once its backfill has finished."""

    product_id: str
    kind: str
    detected_at: datetime
    first_missing_id: int | None
    last_missing_id: int | None
    missing: int
    backfilled: int
    outcome: str


GAP_KINDS = ("disconnect", "trade_id", "heartbeat", "startup")
GAP_OUTCOMES = ("filled", "partial", "unfilled")


def gap_record(frame: RawFrame, msg: GapFrame) -> GapRecord:
    check_product(msg.product_id)
    if msg.kind not in GAP_KINDS or msg.outcome not in GAP_OUTCOMES:
        raise FrameError(f"bad gap record: kind {msg.kind!r}, outcome {msg.outcome!r}")
    return GapRecord(
        frame.exchange, msg.product_id, msg.kind, msg.detected_at, msg.first_missing_id,
        msg.last_missing_id, msg.missing, msg.backfilled, msg.outcome, frame.recv_ns,
        frame.conn_id,
    )  # fmt: skip


_gap_decoder = msgspec.json.Decoder(GapFrame)


def decode_gap_frame(frame: RawFrame) -> GapRecord:
    try:
        return gap_record(frame, _gap_decoder.decode(frame.text))
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad gap message: {exc}") from None


def ids_message(decoder: msgspec.json.Decoder[Any], text: str, marker: str) -> Any | None:
    """A frame read for its trade ids only when it mentions `marker` (most frames do not, and
    a substring test is far cheaper than parsing); None when it does not parse either (the
    full codec quarantines such a frame)."""
    if marker not in text:
        return None
    try:
        return decoder.decode(text)
    except msgspec.DecodeError:
        return None
