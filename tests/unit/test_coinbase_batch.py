"""Differential test: the batch decoders against `decode` (per frame) + `lake.writer`.

Every test runs twice: with `columnar.decode_batch` (Python and Arrow) and with
`compiled.decode_batch` (the compiled decoder in `native/`, which hands what it does not vouch
for to the columnar one). The compiled decoder must be installed (`make install` builds it).

The per-frame codec is the specification. For every batch the oracle decodes frame by frame
and builds the tables with `lake.writer`; the columnar decoder must give equal tables, equal
frame indices and equal quarantine reasons. Inputs: every recording in ../shared/data, the
simulator's fault frames, and generated frames (mutated real frames, random batches).

The one documented departure: a record whose integer does not fit int64 (msgspec decodes up to
2**64 - 1) makes `lake.writer` raise, so the per-frame path has no output for it; the batch
decoder quarantines that frame instead.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.rows import gaps_table, tickers_table, trades_table
from crypto_sentinel.model import SCALE, GapRecord, Heartbeat, RawFrame, Ticker, Trade
from crypto_sentinel.simulator import Market
from crypto_sentinel.simulator.faults import CORRUPTIONS, FaultPlan, FaultSpec
from crypto_sentinel.simulator.market import format_time
from crypto_sentinel.sources.coinbase import codec, columnar, compiled
from crypto_sentinel.sources.coinbase.codec import MAX_INTEGER_DIGITS, FrameError, decode
from crypto_sentinel.sources.coinbase.columnar import DecodedBatch, decode_batch
from crypto_sentinel.sources.replay import parse_line
from tests.conftest import COINBASE_DATA, SHARED

#: Receive time of frames that carry none: after the 2021 Coinbase capture, so it is not late.
RECV_NS = 1_618_700_000 * 10**9
UNSTORABLE = "does not fit a 64-bit signed integer"
INT64_MAX = 2**63 - 1


# --- the oracle --------------------------------------------------------------------------------


DECODERS = {"columnar": columnar.decode_batch, "compiled": compiled.decode_batch}


@pytest.fixture(autouse=True, params=sorted(DECODERS))
def batch_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with each batch decoder (the module's `decode_batch` is replaced)."""
    if request.param == "compiled" and not compiled.AVAILABLE:
        pytest.fail("the compiled decoder is not installed: run `make install` with cargo on PATH")
    monkeypatch.setitem(globals(), "decode_batch", DECODERS[request.param])
    return str(request.param)


@dataclass
class Expected:
    trades: list[Trade] = field(default_factory=list)
    trade_frames: list[int] = field(default_factory=list)
    tickers: list[Ticker] = field(default_factory=list)
    ticker_frames: list[int] = field(default_factory=list)
    gaps: list[GapRecord] = field(default_factory=list)
    gap_frames: list[int] = field(default_factory=list)
    heartbeats: list[tuple[int, Heartbeat]] = field(default_factory=list)
    rejected: list[tuple[int, str | None]] = field(default_factory=list)  # None: unstorable
    pages: int = 0
    control: int = 0


def _fits(*values: int | None) -> bool:
    return all(v is None or -(2**63) <= v <= INT64_MAX for v in values)


def _storable(record: object) -> bool:
    """Whether `lake.writer` can turn the record into a row (it raises on ints beyond int64)."""
    if isinstance(record, list):
        return all(_storable(t) for t in record)
    if isinstance(record, Trade):
        return _fits(record.trade_id, record.sequence)
    if isinstance(record, Ticker):
        return _fits(record.sequence, record.trade_id)
    if isinstance(record, GapRecord):
        r = record
        return _fits(r.first_missing_id, r.last_missing_id, r.missing, r.backfilled)
    return True


def per_frame(frames: list[RawFrame]) -> Expected:
    """What the engine gets today: `decode()` frame by frame."""
    out = Expected()
    for i, frame in enumerate(frames):
        try:
            record = decode(frame)
        except FrameError as exc:
            out.rejected.append((i, str(exc)))
            continue
        if not _storable(record):
            out.rejected.append((i, None))
        elif isinstance(record, Trade):
            out.trades.append(record)
            out.trade_frames.append(i)
        elif isinstance(record, list):
            out.trades.extend(record)
            out.trade_frames.extend([i] * len(record))
            out.pages += 1
        elif isinstance(record, Ticker):
            out.tickers.append(record)
            out.ticker_frames.append(i)
        elif isinstance(record, GapRecord):
            out.gaps.append(record)
            out.gap_frames.append(i)
        elif isinstance(record, Heartbeat):
            out.heartbeats.append((i, record))
        else:
            out.control += 1
    return out


def assert_tables_equal(expected: pa.Table, actual: pa.Table, what: str) -> None:
    assert actual.schema == expected.schema, what
    if expected.equals(actual):
        return
    exp, act = expected.to_pylist(), actual.to_pylist()
    assert len(exp) == len(act), f"{what}: {len(act)} rows, expected {len(exp)}"
    for n, (e, a) in enumerate(zip(exp, act, strict=True)):
        assert e == a, f"{what} row {n}"
    raise AssertionError(f"{what}: tables differ")  # e.g. in a way to_pylist hides


def assert_same(frames: list[RawFrame]) -> DecodedBatch:
    """The batch decoder agrees with the per-frame codec + writer on these frames."""
    want = per_frame(frames)
    got = decode_batch(frames)
    assert got.frames == len(frames)
    assert len(got.rejected) == len(want.rejected), (got.rejected, want.rejected)
    for (i, reason), (j, expected) in zip(got.rejected, want.rejected, strict=True):
        assert i == j, (got.rejected, want.rejected)
        if expected is None:
            assert reason.endswith(UNSTORABLE), reason
        else:
            assert reason == expected, frames[i].text
    exp_trades = trades_table(want.trades) if want.trades else T.TRADES.schema.empty_table()
    assert_tables_equal(exp_trades, got.trades, "trades")
    assert got.trade_frames.to_pylist() == want.trade_frames
    exp_tickers = tickers_table(want.tickers) if want.tickers else T.TICKERS.schema.empty_table()
    assert_tables_equal(exp_tickers, got.tickers, "tickers")
    assert got.ticker_frames.to_pylist() == want.ticker_frames
    exp_gaps = gaps_table(want.gaps) if want.gaps else T.GAPS.schema.empty_table()
    assert_tables_equal(exp_gaps, got.gaps, "gaps")
    assert got.gap_frames.to_pylist() == want.gap_frames
    assert got.heartbeats == want.heartbeats
    assert (got.backfill_pages, got.control) == (want.pages, want.control)
    return got


def frames_of(texts: list[str], recv_ns: int = RECV_NS) -> list[RawFrame]:
    return [RawFrame("coinbase", "c1", i, recv_ns + i, text) for i, text in enumerate(texts)]


# --- real recordings ---------------------------------------------------------------------------


def recorded_frames(path: Path) -> list[RawFrame]:
    frames = []
    for seq, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        ts, text = parse_line(line)
        recv_ns = int(ts * 1e9) if ts is not None else RECV_NS
        frames.append(RawFrame(path.parent.name, path.name, seq, recv_ns, text))
    return frames


RECORDINGS = sorted(p for p in (SHARED / "data").rglob("*") if p.suffix in (".ndjson", ".json"))


def test_the_shared_recordings_are_there() -> None:
    assert COINBASE_DATA / "session.ndjson" in RECORDINGS
    assert {p.parent.name for p in RECORDINGS} >= {"coinbase_exchange", "binance", "kraken_v1"}


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_recording(path: Path) -> None:
    """Whole file as one batch and in small batches; other venues' frames are all rejected."""
    frames = recorded_frames(path)
    got = assert_same(frames)
    for start in range(0, len(frames), 50):
        assert_same(frames[start : start + 50])
    if path.parent.name != "coinbase_exchange":
        assert len(got.rejected) == len(frames)


def test_all_recordings_in_one_batch() -> None:
    frames = [f for path in RECORDINGS for f in recorded_frames(path)]
    got = assert_same(frames)
    # session.ndjson and session.recv_ts.ndjson hold the same 27 trades
    assert got.trades.num_rows == got.tickers.num_rows == 2 * 27


def test_the_recorded_rest_page_wrapped_as_backfill_does() -> None:
    """Its `trade_id` is a string (ccxt's re-serialisation): quarantined by both."""
    body = (COINBASE_DATA / "rest_products_trades.ndjson").read_text().strip()
    got = assert_same(
        frames_of([f'{{"type":"rest_trades","product_id":"BTC-USD","trades":{body}}}'])
    )
    assert got.rejected and "Expected `int`, got `str`" in got.rejected[0][1]


# --- simulator frames and its faults -----------------------------------------------------------

SIM_START = datetime(2024, 1, 1, tzinfo=UTC)


def simulator_frames(trades: int = 400, seed: int = 5) -> tuple[list[str], int]:
    """A simulated session: matches, tickers, heartbeats, REST pages, gap records."""
    market = Market(["BTC-USD", "ETH-USD", "SOL-USD"], seed=seed, start_trade_id=1_000)
    texts = []
    now = SIM_START
    for k in range(trades):
        now = SIM_START + timedelta(microseconds=1_000 * k + 7)
        trade = market.next_trade(now)
        texts += [market.match_frame(trade), market.ticker_frame(trade)]
        if k % 97 == 0:
            texts.append(market.heartbeat_frame(trade.product_id, now))
    texts.append(market.match_frame(trade, "last_match"))
    for product in market.products:
        page = [market.rest_trade(t) for t in market.trades_page(product, limit=25)]
        body = orjson.dumps(page).decode()
        texts.append(f'{{"type":"rest_trades","product_id":"{product}","trades":{body}}}')
        gap = {
            "type": "gap", "product_id": product, "kind": "trade_id",
            "detected_at": format_time(now), "first_missing_id": 1_010, "last_missing_id": 1_020,
            "missing": 11, "backfilled": 11, "outcome": "filled",
        }  # fmt: skip
        texts.append(orjson.dumps(gap).decode())
    texts.append('{"type":"rest_trades","product_id":"BTC-USD","trades":[]}')
    recv_ns = int((now - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e9) + 10**6
    return texts, recv_ns


def test_simulator_session() -> None:
    texts, recv_ns = simulator_frames()
    got = assert_same(frames_of(texts, recv_ns))
    assert not got.rejected and got.backfill_pages == 4 and got.gaps.num_rows == 3
    assert got.trades.num_rows == 401 + 3 * 25


def test_simulator_fault_plan() -> None:
    """Duplicates, reordering and malformed copies as the simulator injects them on the wire."""
    texts, recv_ns = simulator_frames(seed=11)
    plan = FaultPlan(
        FaultSpec(seed=3, drop=0.02, duplicate=0.1, reorder=0.1, malformed=0.3, drop_max=3)
    )
    session = object()
    wire = [str(out) for text in texts for out in plan.outbound(session, text)]
    assert plan.malformed > 50 and plan.duplicated > 10
    frames = frames_of(wire, recv_ns)
    got = assert_same(frames)
    assert len(got.rejected) >= plan.malformed - 5  # some corruptions are still valid frames
    for size in (1, 7, 64, 500):
        for start in range(0, len(frames), size):
            assert_same(frames[start : start + size])


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_every_simulator_corruption(corrupt: Callable[[str], str]) -> None:
    """Each kind of malformed frame, applied to every frame of a session, mixed with good ones."""
    texts, recv_ns = simulator_frames(trades=150)
    mixed = [t for text in texts for t in (text, corrupt(text))]
    assert_same(frames_of(mixed, recv_ns))


# --- hand-picked cases -------------------------------------------------------------------------

MATCH = orjson.loads((COINBASE_DATA / "session.ndjson").read_text().splitlines()[3])
TICKER = orjson.loads((COINBASE_DATA / "session.ndjson").read_text().splitlines()[2])
assert MATCH["type"] == "last_match" and TICKER["type"] == "ticker"
HEARTBEAT = {
    "type": "heartbeat", "last_trade_id": 881613, "product_id": "BAND-GBP",
    "sequence": 333938800, "time": "2021-04-17T16:43:31.000000Z",
}  # fmt: skip
REST_TRADE = {k: MATCH[k] for k in ("trade_id", "side", "size", "price", "time")}
PAGE = {"type": "rest_trades", "product_id": "BAND-GBP", "trades": [REST_TRADE] * 3}
GAP = {
    "type": "gap", "product_id": "BAND-GBP", "kind": "disconnect",
    "detected_at": "2021-04-17T16:43:40.000000Z", "first_missing_id": None,
    "last_missing_id": None, "missing": 0, "backfilled": 0, "outcome": "filled",
}  # fmt: skip
BASES = {"match": MATCH, "ticker": TICKER, "heartbeat": HEARTBEAT, "page": PAGE, "gap": GAP}


def dumps(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def with_(base: dict[str, Any], **changes: object) -> str:
    return dumps({**base, **changes})


def at(seconds: float) -> str:
    """A Coinbase timestamp `seconds` after RECV_NS."""
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=RECV_NS // 1000)
    return format_time(when + timedelta(seconds=seconds))


CASES = {
    "good match": dumps(MATCH),
    "match": with_(MATCH, type="match"),
    "good page": dumps(PAGE),
    "empty page": with_(PAGE, trades=[]),
    "empty page, bad product": with_(PAGE, trades=[], product_id="bad"),
    "page with one bad trade": with_(PAGE, trades=[REST_TRADE, {**REST_TRADE, "size": "0"}]),
    "page trade without timezone": with_(
        PAGE, trades=[{**REST_TRADE, "time": "2021-04-17T16:43:30.244075"}]
    ),
    "page trade id beyond int64": with_(PAGE, trades=[{**REST_TRADE, "trade_id": 2**63}]),
    "page trade id as string": with_(PAGE, trades=[{**REST_TRADE, "trade_id": "5"}]),
    "error frame": '{"type":"error","message":"Failed to subscribe","reason":"No channels"}',
    "error without reason": '{"type":"error"}',
    "gap": dumps(GAP),
    "gap, unknown kind": with_(GAP, kind="nap"),
    "gap, missing beyond int64": with_(GAP, missing=2**63),
    "gap, bad product": with_(GAP, product_id="x"),
    "heartbeat": dumps(HEARTBEAT),
    "heartbeat beyond int64 (no table: kept)": with_(HEARTBEAT, last_trade_id=2**64 - 1),
    "subscriptions": (COINBASE_DATA / "subscriptions.ndjson").read_text().splitlines()[0],
    "duplicate key, bad first": dumps(MATCH)[:-1] + ',"time":"x","time":"2021-04-17T16:43:30Z"}',
    "duplicate key, bad last": dumps(MATCH)[:-1] + ',"price":"1","price":"-1"}',
    "duplicate type": '{"type":"heartbeat",' + dumps(MATCH)[1:],
    "product with newline (Python $)": with_(MATCH, product_id="BAND-GBP\n"),
    "product lower case": with_(MATCH, product_id="band-gbp"),
    "product too long": with_(MATCH, product_id="ABCDEFGHIJKLM-USD"),
    "naive time": with_(MATCH, time="2021-04-17T16:43:30.244075"),
    "offset time": with_(MATCH, time="2021-04-17T18:43:30.244075+02:00"),
    "negative zero offset": with_(MATCH, time="2021-04-17T16:43:30.244075-00:00"),
    "lower-case z": with_(MATCH, time="2021-04-17t16:43:30.244075z"),
    "space separator": with_(MATCH, time="2021-04-17 16:43:30.244075Z"),
    "nanoseconds": with_(MATCH, time="2021-04-17T16:43:30.244075999Z"),
    "no fraction": with_(MATCH, time="2021-04-17T16:43:30Z"),
    "february 30": with_(MATCH, time="2021-02-30T16:43:30Z"),
    "leap second": with_(MATCH, time="2016-12-31T23:59:60Z"),
    "hour 24": with_(MATCH, time="2021-04-17T24:00:00Z"),
    "year 1 east of UTC": with_(MATCH, time="0001-01-01T00:00:00.000001+05:00"),
    "year 9999 west of UTC": with_(MATCH, time="9999-12-31T23:59:59.999999-05:00"),
    "date only": with_(MATCH, time="2021-04-17"),
    "time as number": with_(MATCH, time=1618677810),
    "far future": with_(MATCH, time="2999-01-01T00:00:00.000000Z"),
    "just inside the skew limit": with_(MATCH, time=at(3600 - 0.0015)),
    "at the skew limit": with_(MATCH, time=at(3600)),
    "just past the skew limit": with_(MATCH, time=at(3600.000001)),
    "ticker in the future": with_(TICKER, time=at(7200)),
    "ticker at the skew limit": with_(TICKER, time=at(3600)),
    "trade_id 0": with_(MATCH, trade_id=0),
    "trade_id -1": with_(MATCH, trade_id=-1),
    "trade_id int64 max": with_(MATCH, trade_id=INT64_MAX),
    "trade_id beyond int64": dumps(MATCH).replace('"trade_id":881613', f'"trade_id":{2**63}'),
    "trade_id 2**64 - 1": dumps(MATCH).replace('"trade_id":881613', f'"trade_id":{2**64 - 1}'),
    "trade_id 2**64": dumps(MATCH).replace('"trade_id":881613', f'"trade_id":{2**64}'),
    "trade_id float": dumps(MATCH).replace('"trade_id":881613', '"trade_id":881613.0'),
    "trade_id exponent": dumps(MATCH).replace('"trade_id":881613', '"trade_id":8.81613e5'),
    "trade_id string": with_(MATCH, trade_id="881613"),
    "trade_id bool": with_(MATCH, trade_id=True),
    "sequence beyond int64": dumps(MATCH).replace('"sequence":333938798', f'"sequence":{2**63}'),
    "sequence null": with_(MATCH, sequence=None),
    "order ids missing": dumps({k: v for k, v in MATCH.items() if "order" not in k}),
    "side up": with_(MATCH, side="up"),
    "side upper case": with_(MATCH, side="BUY"),
    "price missing": dumps({k: v for k, v in MATCH.items() if k != "price"}),
    "price null": with_(MATCH, price=None),
    "price number": with_(MATCH, price=14.7775),
    "price zero": with_(MATCH, price="0.000"),
    "price negative": with_(MATCH, price="-1.5"),
    "price negative zero": with_(MATCH, price="-0"),
    "price plus": with_(MATCH, price="+1.5"),
    "price exponent": with_(MATCH, price="1e5"),
    "price leading dot": with_(MATCH, price=".5"),
    "price trailing dot": with_(MATCH, price="5."),
    "price empty": with_(MATCH, price=""),
    "price spaces": with_(MATCH, price=" 1"),
    "price NaN": with_(MATCH, price="NaN"),
    "price Arabic-Indic digit": with_(MATCH, price="\u0663.5"),
    "price superscript": with_(MATCH, price="1.\u00b2"),
    "price full-width digit": with_(MATCH, price="\uff11"),
    "price 12 places": with_(MATCH, price="1.000000000001"),
    "price 13 places": with_(MATCH, price="1.0000000000001"),
    "price 13 places, trailing zero": with_(MATCH, price="1.0000000000000"),
    "price 16 integer digits": with_(MATCH, price="9999999999999999.999999999999"),
    "price 17 integer digits": with_(MATCH, price="10000000000000000"),
    "price leading zeros": with_(MATCH, price="0000000000000000000000000001.5"),
    "price two dots": with_(MATCH, price="1.2.3"),
    "size tiny": with_(MATCH, size="0.000000000001"),
    "size zero": with_(MATCH, size="0"),
    "extra field": with_(MATCH, extra={"nested": [1, 2, None]}),
    "ticker minimal": dumps(
        {k: TICKER[k] for k in ("type", "product_id", "sequence", "price", "time")}
    ),
    "ticker with sizes": with_(TICKER, best_bid_size="0.5", best_ask_size="0"),
    "ticker zero bid": with_(TICKER, best_bid="0"),
    "ticker zero price": with_(TICKER, price="0"),
    "ticker null volume": with_(TICKER, volume_30d=None),
    "ticker volume 16 digits": with_(TICKER, volume_30d="1234567890123456.123456789012"),
    "ticker volume 17 digits": with_(TICKER, volume_30d="12345678901234567"),
    "ticker bad low": with_(TICKER, low_24h="-1"),
    "ticker 13 places": with_(TICKER, best_ask="1.0000000000000"),
    "ticker odd side": with_(TICKER, side="sideways"),
    "ticker trade_id null": with_(TICKER, trade_id=None),
    "ticker sequence beyond int64": dumps(TICKER).replace(
        '"sequence":333938798', f'"sequence":{2**63}'
    ),
    "ticker sequence missing": dumps({k: v for k, v in TICKER.items() if k != "sequence"}),
    "unknown type": with_(MATCH, type="match_v2"),
    "type not a string": with_(MATCH, type=5),
    "no type": dumps({k: v for k, v in MATCH.items() if k != "type"}),
    "type only": '{"type":"match"}',
    "array": "[1, 2]",
    "null": "null",
    "number": "1",
    "string": '"match"',
    "empty": "",
    "blank": "  ",
    "empty object": "{}",
    "truncated": dumps(MATCH)[:40],
    "trailing garbage": dumps(MATCH) + "x",
    "two objects": dumps(MATCH) + dumps(MATCH),
    "pretty printed": orjson.dumps(MATCH, option=orjson.OPT_INDENT_2).decode(),
    "trailing newline": dumps(MATCH) + "\n",
    "NaN literal": with_(MATCH, x=1)[:-2] + "NaN}",
    "escaped string": dumps(MATCH).replace('"sell"', '"s\\u0065ll"'),
    "control character in string": dumps(MATCH).replace('"sell"', '"se\tll"'),
    "non-ASCII product": with_(MATCH, product_id="BAND-GB\u00dc"),
}


@pytest.mark.parametrize("name", CASES)
def test_case(name: str) -> None:
    """Alone, and between good frames that must come out untouched."""
    text = CASES[name]
    assert_same(frames_of([text]))
    assert_same(frames_of([dumps(MATCH), text, dumps(TICKER), text, dumps(PAGE), text]))


def test_the_unstorable_departure() -> None:
    """`lake.writer` cannot write an int beyond int64, so the per-frame path has no rows for
    it; the batch decoder quarantines just that frame."""
    record = decode(frames_of([CASES["trade_id beyond int64"]])[0])
    assert isinstance(record, Trade)
    with pytest.raises(OverflowError):
        trades_table([record])
    got = decode_batch(frames_of([dumps(MATCH), CASES["trade_id beyond int64"]]))
    assert got.rejected == [(1, f"trade_id {2**63} does not fit a 64-bit signed integer")]
    assert got.trades.num_rows == 1


def test_a_page_rejected_whole_names_the_trade() -> None:
    got = assert_same(frames_of([CASES["page with one bad trade"]]))
    assert got.rejected == [
        (0, f"trade {MATCH['trade_id']} of the REST page: size must be > 0, got 0")
    ]


def test_surrogates_raise_like_the_codec() -> None:
    """No source produces them (all decode with errors="replace"); both fail the same way."""
    frames = frames_of([dumps(MATCH), '{"type":"match","x":"\ud800"}'])
    with pytest.raises(UnicodeEncodeError):
        decode(frames[1])
    with pytest.raises(UnicodeEncodeError):
        decode_batch(frames)


def test_order_sources_and_frame_indices() -> None:
    """Rows follow frame order (a page's trades in page order) across venues and connections."""
    texts = [dumps(PAGE), dumps(MATCH), CASES["price zero"], dumps(PAGE), dumps(TICKER)]
    frames = [
        RawFrame(ex, conn, i, RECV_NS + i, t)
        for i, (t, ex, conn) in enumerate(
            zip(texts, ["coinbase", "simulator"] * 3, ["a", "b", "b", "c", "a"], strict=False)
        )
    ]
    got = assert_same(frames)
    assert got.trade_frames.to_pylist() == [0, 0, 0, 1, 3, 3, 3]
    assert got.trades.column("exchange").to_pylist()[3:] == ["simulator"] * 4
    assert got.ticker_frames.to_pylist() == [4]


def test_values_are_exact() -> None:
    got = decode_batch(frames_of([CASES["price leading zeros"], CASES["price 16 integer digits"]]))
    assert got.trades.column("price").to_pylist() == [
        Decimal("1.5"),
        Decimal("9999999999999999.999999999999"),
    ]
    assert got.trades.column("side").to_pylist() == ["buy", "buy"]  # maker sold


def test_times_whose_text_adds_up_to_the_fixed_width() -> None:
    """Five naive times (26 bytes) and one with an offset (32) are 6 x 27 bytes, like six UTC
    ones: the fixed-width parse must not take them."""
    naive = [with_(MATCH, time="2021-04-17T16:43:30.244075")] * 5
    texts = [*naive, with_(MATCH, time="2021-04-17T16:43:30.244075+01:00")]
    assert len(assert_same(frames_of(texts)).rejected) == 5


def test_empty_batch() -> None:
    got = assert_same([])
    assert got.trades.schema == T.TRADES.schema and got.trades.num_rows == 0


# --- generated frames --------------------------------------------------------------------------

GENERATED = settings(
    derandomize=True,  # the same examples on every run: CI stays deterministic
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEYS = sorted({k for base in BASES.values() for k in base} | {"extra", "channels", "message"})
AMOUNTS = [
    "0", "0.0", "1", "-1", "+1", "1e5", "1E-3", ".5", "5.", "", " 1", "1 ", "\u0663", "\u00b2",
    "\uff11", "NaN", "inf", "0x1", "1_0", "1..2", "1.2.3", "-0", "0.000000000001",
    "1.0000000000001", "1.0000000000000", "9999999999999999", "10000000000000000",
    "00000000000000000000000000000000001", "0000.5", "1234567890123456.123456789012",
]  # fmt: skip
TIMES = [
    "2021-04-17T16:43:30.244075Z", "2021-04-17T16:43:30.244075", "2021-04-17T16:43:30Z",
    "2021-04-17T16:43:30.2Z", "2021-04-17T16:43:30.123456789Z", "2021-04-17T16:43:30+05:30",
    "2021-04-17T16:43:30.000001-23:59", "2021-04-17t16:43:30z", "2021-04-17 16:43:30Z",
    "2021-02-29T00:00:00Z", "2020-02-29T00:00:00.000000Z", "2021-04-17T16:60:00Z",
    "0001-01-01T00:00:00.000000Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
    "2021-04-17", "16:43:30", "", "x",
]  # fmt: skip
INTS = [0, 1, -1, INT64_MAX, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30]


def json_scalar() -> st.SearchStrategy[str]:
    """JSON text of a value, including what orjson cannot write (ints beyond 64 bits)."""
    decimal_text = st.builds(
        lambda whole, frac: whole + (f".{frac}" if frac is not None else ""),
        st.text("0123456789", min_size=1, max_size=18),
        st.none() | st.text("0123456789", min_size=0, max_size=14),
    )
    skew = st.integers(-2_000_000, 2_000_000).map(lambda us: at(3600 + us / 1e6))
    offset = st.builds(
        lambda t, m: (
            f"2021-04-17T16:43:30.{t:06d}{'+' if m >= 0 else '-'}"
            f"{abs(m) // 60:02d}:{abs(m) % 60:02d}"
        ),
        st.integers(0, 999_999),
        st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    )
    strings = st.one_of(
        st.sampled_from(AMOUNTS),
        decimal_text,
        st.sampled_from(TIMES),
        skew,
        offset,
        st.sampled_from(["buy", "sell", "BUY", "", "BAND-GBP", "BTC-USD\n", "band-gbp"]),
        st.text(max_size=12),
    )
    return st.one_of(
        strings.map(lambda s: orjson.dumps(s).decode()),
        st.sampled_from(INTS).map(str),
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(["1.0", "1.5", "-0.0", "1e5", "true", "false", "null", "[]", "{}", '[""]']),
    )


JSON_SCALAR = json_scalar()


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A real frame with a few fields dropped, replaced, duplicated or added; maybe truncated."""
    base = draw(st.sampled_from(sorted(BASES)))
    pairs = [(k, orjson.dumps(v).decode()) for k, v in BASES[base].items()]
    if base == "page" and draw(st.booleans()):  # mutate one trade of the page instead
        trade = [(k, orjson.dumps(v).decode()) for k, v in REST_TRADE.items()]
        trade = _mutate(draw, trade, sorted(REST_TRADE))
        page_trades = [dumps(REST_TRADE), "{" + ",".join(f'"{k}":{v}' for k, v in trade) + "}"]
        position = draw(st.integers(0, 1))
        pairs[2] = ("trades", "[" + ",".join(page_trades[position:] + page_trades[:position]) + "]")
    else:
        pairs = _mutate(draw, pairs, KEYS)
    text = "{" + ",".join(f"{orjson.dumps(k).decode()}:{v}" for k, v in pairs) + "}"
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _mutate(
    draw: st.DrawFn, pairs: list[tuple[str, str]], keys: list[str]
) -> list[tuple[str, str]]:
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "replace", "replace", "duplicate", "add"]))
        if action == "drop" and pairs:
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif action == "replace" and pairs:
            i = draw(st.integers(0, len(pairs) - 1))
            pairs[i] = (pairs[i][0], draw(JSON_SCALAR))
        elif action == "duplicate" and pairs:
            key = pairs[draw(st.integers(0, len(pairs) - 1))][0]
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(JSON_SCALAR)))
        else:
            pairs.append((draw(st.sampled_from(keys)), draw(JSON_SCALAR)))
    return pairs


GOOD = [dumps(base) for base in BASES.values()] + [
    line for line in (COINBASE_DATA / "session.ndjson").read_text().splitlines()
]


@st.composite
def frame_batch(draw: st.DrawFn, bad: st.SearchStrategy[str]) -> list[RawFrame]:
    texts = draw(st.lists(st.one_of(st.sampled_from(GOOD), bad), min_size=1, max_size=40))
    frames = []
    for i, text in enumerate(texts):
        exchange, conn = draw(
            st.sampled_from([("coinbase", "c1"), ("coinbase", "c2"), ("sim", "s")])
        )
        recv_ns = RECV_NS + draw(st.integers(0, 3_000_000_000))  # up to 3 s later
        frames.append(RawFrame(exchange, conn, i, recv_ns, text))
    return frames


@settings(GENERATED, max_examples=700)
@given(mutated())
def test_generated_mutations_of_real_frames(text: str) -> None:
    assert_same(frames_of([dumps(MATCH), text, dumps(TICKER)]))


@settings(GENERATED, max_examples=250)
@given(frame_batch(mutated()))
def test_generated_batches_of_good_and_bad_frames(frames: list[RawFrame]) -> None:
    assert_same(frames)


@settings(GENERATED, max_examples=200)
@given(st.data())
def test_generated_amounts_in_every_field(data: st.DataObject) -> None:
    """Every amount field of matches, tickers and page trades, many at a time."""
    fields = {
        "match": ["price", "size"],
        "ticker": ["price", "open_24h", "volume_24h", "low_24h", "high_24h", "volume_30d",
                   "best_bid", "best_ask", "best_bid_size", "best_ask_size", "last_size"],
    }  # fmt: skip
    amount = st.one_of(
        st.sampled_from(AMOUNTS),
        st.text("0123456789.", min_size=1, max_size=32),
        st.text("0123456789.-+eE \u0663", max_size=8),
    )
    texts = []
    for _ in range(data.draw(st.integers(1, 20))):
        kind = data.draw(st.sampled_from(["match", "ticker", "page"]))
        if kind == "page":
            trades = [
                {**REST_TRADE, "price": data.draw(amount), "size": data.draw(amount)}
                for _ in range(data.draw(st.integers(0, 3)))
            ]
            texts.append(with_(PAGE, trades=trades))
        else:
            changed = data.draw(st.lists(st.sampled_from(fields[kind]), max_size=4))
            texts.append(with_(BASES[kind], **{name: data.draw(amount) for name in changed}))
    assert_same(frames_of(texts))


@settings(GENERATED, max_examples=300)
@given(
    st.tuples(
        st.integers(1, 9999), st.integers(1, 12), st.integers(1, 31), st.integers(0, 24),
        st.integers(0, 60), st.integers(0, 60), st.integers(0, 999_999),
    )
)  # fmt: skip
def test_generated_times_in_coinbase_form(parts: tuple[int, ...]) -> None:
    """Dates and times written as Coinbase writes them, impossible ones included."""
    year, month, day, hour, minute, second, micros = parts
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{micros:06d}Z"
    assert_same(frames_of([with_(MATCH, time=text), with_(TICKER, time=text)], RECV_NS))


def test_leap_days_and_month_ends() -> None:
    days = ["1900-02-29", "2000-02-29", "2020-02-29", "2021-02-29", "2021-04-31", "2021-12-31"]
    texts = [with_(MATCH, time=f"{day}T12:00:00.000001Z") for day in days]
    assert_same(frames_of(texts + [with_(TICKER, time=f"{day}T00:00:00.000000Z") for day in days]))


def test_the_compiled_decoder_copies_the_codecs_rules() -> None:
    native = compiled._native
    assert native is not None, "the compiled decoder is not installed"
    assert (native.SCALE, native.MAX_INTEGER_DIGITS) == (SCALE, MAX_INTEGER_DIGITS)
    assert tuple(native.TICKER_AMOUNTS) == codec.TICKER_AMOUNTS


def test_the_compiled_decoder_vouches_for_the_common_frames(batch_decoder: str) -> None:
    """Matches and tickers as Coinbase and the simulator write them are decoded without
    Python: were they not, the tests above would pass without testing it."""
    assert compiled._native is not None, "the compiled decoder is not installed"
    texts, _ = simulator_frames(trades=200)
    real = (COINBASE_DATA / "session.ndjson").read_text().splitlines()
    for batch in (texts, real):
        kinds = compiled._native.decode_coinbase(batch)["kinds"]
        for text, kind in zip(batch, kinds, strict=True):
            expected = {"match": 1, "last_match": 1, "ticker": 2}.get(orjson.loads(text)["type"], 0)
            assert kind == expected, text


def test_a_large_random_batch() -> None:
    """Thousands of frames, one in ten corrupted some way, decoded as one batch."""
    rng = random.Random(7)
    texts, recv_ns = simulator_frames(trades=2_000, seed=2)
    for i in range(0, len(texts), 10):
        texts[i] = (
            rng.choice(CORRUPTIONS)(texts[i])
            if rng.random() < 0.5
            else rng.choice(list(CASES.values()))
        )
    assert_same(frames_of(texts, recv_ns))


def test_without_the_compiled_decoder_one_line_says_so_and_python_decodes() -> None:
    """A machine without Rust: the same rows from the Python decoder, and one warning."""
    script = (
        "import logging, sys; logging.basicConfig(format='%(levelname)s %(message)s'); "
        "sys.modules['crypto_sentinel_native'] = None\n"
        "from crypto_sentinel.model import RawFrame\n"
        "from crypto_sentinel.sources.coinbase import compiled\n"
        f"frame = RawFrame('coinbase', 'c', 1, {RECV_NS}, {dumps(MATCH)!r})\n"
        "print(compiled.AVAILABLE, compiled.decode_batch([frame]).trades.num_rows)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "1"]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "make install" in warnings[0], run.stderr
