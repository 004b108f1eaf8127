"""Every venue codec against real recorded frames (Binance, Coinbase Advanced Trade) and
documented message shapes (Kraken v2), each compared with an independent reading of the
frames by plain `json` with Decimal; the batch path equals the per-frame path on a chunk
that mixes venues and bad frames."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from crypto_sentinel.model import RawFrame, Ticker, Trade
from crypto_sentinel.sources.base import GapTracker, SourceStatus
from crypto_sentinel.sources.batch import decode_each
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.venues import (
    codec_for,
    decode_frame,
    decode_frames,
    simulated_name,
    venue_of,
)
from tests.conftest import SHARED

DATA = SHARED / "data"
NOW_NS = time.time_ns()


def frame(exchange: str, text: str, seq: int = 0, recv_ns: int = NOW_NS) -> RawFrame:
    return RawFrame(exchange, "conn", seq, recv_ns, text)


def lines(path: str) -> list[str]:
    return [line for line in (DATA / path).read_text().splitlines() if line.strip()]


def trades_of(frames: list[RawFrame]) -> list[Trade]:
    out: list[Trade] = []
    for f in frames:
        record = decode_frame(f)
        if isinstance(record, Trade):
            out.append(record)
        elif isinstance(record, list):
            out.extend(record)
    return out


# -- Binance (real combined-stream frames) --------------------------------------------------


def test_binance_recording_gives_exactly_its_agg_trades() -> None:
    texts = lines("binance/aggTrade_combined_stream.ndjson")
    got = trades_of([frame("binance", t, i) for i, t in enumerate(texts)])
    want = []
    for text in texts:
        d = json.loads(text)["data"]
        symbol = d["s"]
        quote = next(q for q in ("USDT", "BUSD", "TRY", "BTC", "ETH") if symbol.endswith(q))
        want.append(
            (
                f"{symbol[: -len(quote)]}-{quote}",
                d["a"],
                Decimal(d["p"]),
                Decimal(d["q"]),
                "sell" if d["m"] else "buy",  # m: the buyer is the maker
                datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=d["T"]),
            )
        )
    assert len(want) == 54
    assert [(t.product_id, t.trade_id, t.price, t.size, t.side, t.time) for t in got] == want
    assert {t.product_id for t in got} >= {"AAVEUP-USDT", "BUSD-TRY", "VET-ETH", "SXP-BTC"}
    assert all(str(t.price) == json.loads(x)["data"]["p"] for t, x in zip(got, texts, strict=True))


@pytest.mark.parametrize("name", ["bookTicker", "depthUpdate"])
def test_binance_streams_without_rows_are_kept_raw_not_rejected(name: str) -> None:
    frames = [frame("binance", t) for t in lines(f"binance/{name}_combined_stream.ndjson")]
    batch = decode_frames(frames)
    assert batch.rejected == []
    assert batch.trades.num_rows == 0 and batch.tickers.num_rows == 0
    assert batch.control == len(frames)


def test_binance_day_ticker_and_control_frames() -> None:
    text = json.dumps(
        {"stream": "btcusdt@ticker", "data": {
            "e": "24hrTicker", "E": NOW_NS // 1_000_000, "s": "BTCUSDT", "c": "65000.10",
            "Q": "0.002", "b": "65000.00", "B": "1.5", "a": "65000.20", "A": "0.1",
            "o": "64000", "h": "66000", "l": "63000", "v": "1234.5", "L": 99,
        }}
    )  # fmt: skip
    ticker = decode_frame(frame("binance", text))
    assert isinstance(ticker, Ticker)
    assert (ticker.product_id, ticker.price, ticker.best_bid, ticker.trade_id) == (
        "BTC-USDT", "65000.10", "65000.00", 99,
    )  # fmt: skip
    assert decode_frame(frame("binance", '{"result":null,"id":1}')) is None
    with pytest.raises(FrameError, match="exchange error: -1121 Invalid symbol"):
        decode_frame(frame("binance", '{"code":-1121,"msg":"Invalid symbol."}'))


def agg(**over: object) -> str:
    data = {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 7, "p": "1.5", "q": "2",
            "f": 1, "l": 1, "T": NOW_NS // 1_000_000, "m": False, "M": True}  # fmt: skip
    data.update(over)
    return json.dumps({"stream": "btcusdt@aggTrade", "data": data})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (agg(p="-1"), "price must be > 0"),
        (agg(q="0.0000000000001"), "size has more than 12 decimal places"),
        (agg(p="1e5"), "price is not a plain non-negative decimal"),
        (agg(s="BTCXYZ"), "symbol 'BTCXYZ' does not end in a known quote asset"),
        (agg(a="7"), "bad aggTrade message"),
        (agg(a=2**63), "trade_id 9223372036854775808 does not fit a 64-bit signed integer"),
        (agg(T=(NOW_NS // 1_000_000) + 7_200_000), "far in the future"),
        ('{"stream":"x@aggTrade","data":{"e":"kline"}}', "unknown message type 'kline'"),
        ("{nope", "invalid JSON"),
        ("[1,2]", "not a Binance message object"),
    ],
)
def test_binance_bad_frames_are_quarantined_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_frame(frame("binance", text))


# -- Coinbase Advanced Trade (real session) --------------------------------------------------


def advanced_frames() -> list[RawFrame]:
    out = []
    for i, line in enumerate(lines("coinbase_advanced/session.recv_ts.ndjson")):
        wrapped = json.loads(line)
        out.append(frame("coinbase-advanced", wrapped["raw"], i, int(wrapped["recv_ts"] * 1e9)))
    return out


def test_coinbase_advanced_recording_gives_exactly_its_trades_and_tickers() -> None:
    frames = advanced_frames()
    want = []
    tickers = 0
    for f in frames:
        msg = json.loads(f.text)
        if msg["channel"] == "ticker":
            tickers += sum(len(e["tickers"]) for e in msg["events"])
        if msg["channel"] != "market_trades":
            continue
        batch = [t for e in msg["events"] for t in e["trades"]]
        for t in reversed(batch):  # batches come newest first
            taker = {"BUY": "sell", "SELL": "buy"}[t["side"]]  # side is the maker's
            want.append((t["product_id"], int(t["trade_id"]), Decimal(t["price"]),
                         Decimal(t["size"]), taker))  # fmt: skip
    got = trades_of(frames)
    assert [(t.product_id, t.trade_id, t.price, t.size, t.side) for t in got] == want
    assert len(got) == 147
    batch = decode_frames(frames)
    assert batch.rejected == []
    assert batch.tickers.num_rows == tickers == 73
    ids = sorted(t.trade_id for t in got)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous: nothing missing


def test_coinbase_advanced_bad_frames() -> None:
    good = json.loads(advanced_frames()[0].text)
    bad_side = json.loads(json.dumps(good))
    bad_side["events"][0]["trades"][0]["side"] = "buy"
    bad_id = json.loads(json.dumps(good))
    bad_id["events"][0]["trades"][0]["trade_id"] = "12a"
    cases = [
        (bad_side, "side must be 'BUY' or 'SELL'"),
        (bad_id, "trade_id must be a decimal integer"),
        ({"channel": "nope", "events": []}, "unknown channel 'nope'"),
        ({"type": "error", "message": "failure to subscribe"}, "exchange error: failure"),
    ]
    for msg, reason in cases:
        with pytest.raises(FrameError, match=reason):
            decode_frame(frame("coinbase-advanced", json.dumps(msg), recv_ns=NOW_NS))


# -- Kraken v2 (documented shapes: docs.kraken.com spot-websocket-v2 trade/ticker) -----------

STAMP = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
KRAKEN_TRADES = (
    '{"channel":"trade","type":"update","data":['
    '{"symbol":"BTC/USD","side":"sell","price":65000.123456789012,"qty":0.00012345,'
    f'"ord_type":"market","trade_id":4665906,"timestamp":"{STAMP}"}},'
    '{"symbol":"BTC/USD","side":"buy","price":65000.2,"qty":1e-5,'
    f'"ord_type":"limit","trade_id":4665907,"timestamp":"{STAMP}"}}]}}'
)


def test_kraken_trades_are_exact_decimals_from_json_numbers() -> None:
    got = decode_frame(frame("kraken", KRAKEN_TRADES))
    assert isinstance(got, list)
    want = json.loads(KRAKEN_TRADES, parse_float=Decimal)["data"]
    assert [(t.product_id, t.trade_id, t.price, t.size, t.side) for t in got] == [
        ("BTC-USD", w["trade_id"], w["price"], w["qty"], w["side"]) for w in want
    ]
    assert str(got[0].price) == "65000.123456789012"  # a float would give 65000.12345678901


def test_kraken_ticker_and_quiet_messages() -> None:
    text = (
        '{"channel":"ticker","type":"update","data":[{"symbol":"ETH/USD","bid":3000.1,'
        '"bid_qty":2.5,"ask":3000.2,"ask_qty":0.75,"last":3000.15,"volume":1234.5678,'
        '"vwap":2990.1,"low":2900,"high":3100,"change":10.5,"change_pct":0.35}]}'
    )
    ticker = decode_frame(frame("kraken", text))
    assert isinstance(ticker, Ticker)
    assert (ticker.product_id, ticker.price, ticker.best_ask_size, ticker.volume_24h) == (
        "ETH-USD", "3000.15", "0.75", "1234.5678",
    )  # fmt: skip
    quiet = [
        '{"channel":"heartbeat"}',
        '{"channel":"status","type":"update","data":[{"system":"online"}]}',
        '{"method":"pong","req_id":1,"time_in":"x","time_out":"y"}',
        '{"method":"subscribe","result":{"channel":"trade","snapshot":true,"symbol":"BTC/USD"},'
        '"success":true,"time_in":"x","time_out":"y"}',
        '{"channel":"book","type":"update","data":[]}',
    ]
    for text in quiet:
        assert decode_frame(frame("kraken", text)) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (KRAKEN_TRADES.replace('"sell"', '"short"'), "side must be 'buy' or 'sell'"),
        (KRAKEN_TRADES.replace("0.00012345", "-0.5"), "size must be > 0"),
        (KRAKEN_TRADES.replace("65000.2", "65000.1234567890123"), "more than 12 decimal places"),
        (KRAKEN_TRADES.replace("BTC/USD", "BTCUSD"), "symbol 'BTCUSD' is not BASE/QUOTE"),
        (KRAKEN_TRADES.replace("4665906", '"4665906"'), "bad trade message"),
        (
            '{"method":"subscribe","success":false,"error":"Currency pair not supported"}',
            "exchange error: subscribe failed: Currency pair not supported",
        ),
        ('{"channel":"spread","data":[]}', "unknown channel 'spread'"),
        ('[993,[],"trade","XMR/USD"]', "not a Kraken message object"),  # a v1 frame
    ],
)
def test_kraken_bad_frames_are_quarantined_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_frame(frame("kraken", text))


# -- registry, mixed batches, gaps ------------------------------------------------------------


def test_registry_names() -> None:
    assert venue_of("coinbase") == venue_of("simulator") == "coinbase"
    assert venue_of("simulator-kraken") == "kraken"
    assert venue_of("binance") == "binance"
    assert venue_of("nope") is None and codec_for("nope") is None
    assert simulated_name("binance") == "simulator-binance"
    assert simulated_name("coinbase") == "simulator"


def mixed_chunk() -> list[RawFrame]:
    coinbase = [
        frame("coinbase", json.loads(line)["raw"], i)
        for i, line in enumerate(lines("coinbase_exchange/session.recv_ts.ndjson"))
    ]
    binance = [frame("binance", t) for t in lines("binance/aggTrade_combined_stream.ndjson")]
    bad = [
        frame("binance", agg(p="0")),
        frame("kraken", KRAKEN_TRADES.replace("4665907", "-3")),
        frame("atlantis", '{"type":"match"}'),
    ]
    kraken = [frame("kraken", KRAKEN_TRADES), frame("simulator-kraken", KRAKEN_TRADES)]
    chunk = []
    for group in (coinbase, binance, advanced_frames(), bad, kraken):
        chunk.extend(group)
    # Interleave the venues as a multi-source process would see them.
    return chunk[0::3] + chunk[1::3] + chunk[2::3]


def test_mixed_venue_batch_equals_frame_by_frame() -> None:
    frames = mixed_chunk()
    batch = decode_frames(frames)
    reference = decode_each(frames, decode_frame)
    assert batch.trades.equals(reference.trades)
    assert batch.trade_frames.equals(reference.trade_frames)
    assert batch.tickers.equals(reference.tickers)
    assert batch.ticker_frames.equals(reference.ticker_frames)
    assert batch.rejected == reference.rejected
    reasons = [reason for _, reason in batch.rejected]
    assert "unknown exchange 'atlantis'" in reasons
    assert any("trade_id must be positive" in r for r in reasons)
    assert any("price must be > 0" in r for r in reasons)
    assert len(batch.rejected) == 3
    assert batch.trades.num_rows == 27 + 54 + 147 + 4
    exchanges = set(batch.trades.column("exchange").to_pylist())
    assert exchanges == {"coinbase", "binance", "coinbase-advanced", "kraken", "simulator-kraken"}


def test_gap_tracker_uses_the_venue_rule() -> None:
    reported = []
    status = SourceStatus("binance", "binance", "ws://x")
    gaps = GapTracker(status, on_gap=reported.append)
    for agg_id in (10, 11, 14, 12):
        gaps.observe(agg(a=agg_id))
    assert [(g.product_id, g.first, g.last, g.kind) for g in reported] == [
        ("BTC-USDT", 12, 13, "trade_id")
    ]
    assert reported[0].arrived == {12}  # a late frame, not lost after all

    reported.clear()
    advanced = GapTracker(SourceStatus("x", "coinbase-advanced", "ws://x"), reported.append)
    for f in advanced_frames():
        advanced.observe(f.text)
    assert reported == []  # the recording is contiguous (snapshot newest first included)

    kraken = GapTracker(SourceStatus("x", "kraken", "ws://x"), reported.append)
    kraken.observe(KRAKEN_TRADES)
    kraken.observe(KRAKEN_TRADES.replace("4665907", "4665910"))
    assert [(g.first, g.last) for g in reported] == [(4665908, 4665909)]
