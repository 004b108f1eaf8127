"""Normalisation of Coinbase frames: exact decimals, taker side, validation reasons."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from crypto_sentinel.model import Heartbeat, RawFrame, Ticker, Trade
from crypto_sentinel.sources.coinbase.codec import FrameError, decode
from tests.conftest import COINBASE_DATA

MATCH = {
    "type": "match",
    "trade_id": 280232,
    "maker_order_id": "27fff20b-af29-4f45-8744-56dd1ef57dc0",
    "taker_order_id": "1da6ce16-c8da-4732-9f71-6049f4c6aaf8",
    "side": "sell",
    "size": "985",
    "price": "0.00001305",
    "product_id": "SKL-BTC",
    "sequence": 177100030,
    "time": "2021-04-17T16:43:37.089723Z",
}


def frame(payload: dict | str, recv_ns: int | None = None) -> RawFrame:
    text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return RawFrame("coinbase", "c1", 1, recv_ns or time.time_ns(), text)


def test_match_becomes_trade_with_exact_decimals_and_taker_side() -> None:
    trade = decode(frame(MATCH))
    assert isinstance(trade, Trade)
    assert trade.price == Decimal("0.00001305") and isinstance(trade.price, Decimal)
    assert trade.size == Decimal("985")
    assert trade.side == "buy"  # maker sold, so the taker bought
    assert trade.time == datetime(2021, 4, 17, 16, 43, 37, 89723, tzinfo=UTC)
    assert trade.trade_id == 280232 and trade.sequence == 177100030
    assert trade.maker_order_id == MATCH["maker_order_id"]


def test_exchange_time_and_receive_time_are_kept_apart() -> None:
    recv_ns = 1_700_000_000_123_456_789
    trade = decode(frame(MATCH, recv_ns))
    assert isinstance(trade, Trade)
    assert trade.recv_ns == recv_ns
    assert trade.time.year == 2021


def test_last_match_is_a_trade_too() -> None:
    trade = decode(frame({**MATCH, "type": "last_match"}))
    assert isinstance(trade, Trade) and trade.trade_id == 280232


def test_every_recorded_frame_decodes_and_sides_agree_with_ticker() -> None:
    """In the real recording the ticker carries the taker side: ours must agree."""
    trades: dict[tuple[str, int], Trade] = {}
    tickers: dict[tuple[str, int], Ticker] = {}
    for line in (COINBASE_DATA / "session.ndjson").read_text().splitlines():
        record = decode(frame(line, recv_ns=1_618_700_000 * 10**9))
        if isinstance(record, Trade):
            trades[(record.product_id, record.trade_id)] = record
        elif isinstance(record, Ticker):
            assert record.trade_id is not None
            tickers[(record.product_id, record.trade_id)] = record
    assert len(trades) == 27
    both = trades.keys() & tickers.keys()
    assert len(both) >= 20
    for key in both:
        assert trades[key].side == tickers[key].side
        assert trades[key].price == Decimal(tickers[key].price)


def test_heartbeat() -> None:
    hb = decode(
        frame(
            {
                "type": "heartbeat",
                "sequence": 90,
                "last_trade_id": 20,
                "product_id": "BTC-USD",
                "time": "2014-11-07T08:19:28.464459Z",
            }
        )
    )
    assert isinstance(hb, Heartbeat) and hb.last_trade_id == 20


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"type":"match","trade_id":', "invalid JSON"),
        ('{"type":"received","product_id":"BTC-USD"}', "unknown message type 'received'"),
        ("[1, 2]", "not a message object"),
        (orjson.dumps({**MATCH, "trade_id": "12"}).decode(), "Expected `int`, got `str`"),
        (orjson.dumps({k: v for k, v in MATCH.items() if k != "price"}).decode(), "price"),
        (orjson.dumps({**MATCH, "size": "0"}).decode(), "size must be > 0"),
        (orjson.dumps({**MATCH, "price": "-1"}).decode(), "price must be > 0"),
        (orjson.dumps({**MATCH, "price": "NaN"}).decode(), "not a plain non-negative decimal"),
        (orjson.dumps({**MATCH, "size": "1e5"}).decode(), "not a plain non-negative decimal"),
        (orjson.dumps({**MATCH, "price": "1.\u00b2"}).decode(), "not a plain non-negative"),
        (orjson.dumps({**MATCH, "size": "\u0663.5"}).decode(), "not a plain non-negative"),
        (orjson.dumps({**MATCH, "price": 5}).decode(), "Expected `str`, got `int`"),
        (orjson.dumps({**MATCH, "price": "1.0000000000001"}).decode(), "decimal places"),
        (orjson.dumps({**MATCH, "side": "up"}).decode(), "side must be"),
        (orjson.dumps({**MATCH, "product_id": "btc usd"}).decode(), "invalid product_id"),
        (orjson.dumps({**MATCH, "time": "2099-01-01T00:00:00.000000Z"}).decode(), "future"),
        (orjson.dumps({**MATCH, "time": "2021-04-17T16:43:37"}).decode(), "timezone"),
        ('{"type":"error","message":"Failed to subscribe","reason":"x"}', "exchange error"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(text: str, reason: str) -> None:
    recv = 1_618_700_000 * 10**9 if "2099" not in text else None
    with pytest.raises(FrameError) as err:
        decode(frame(text, recv))
    assert reason in str(err.value)


def test_control_frames_are_not_errors() -> None:
    for line in (COINBASE_DATA / "subscriptions.ndjson").read_text().splitlines():
        assert decode(frame(line)) is None
