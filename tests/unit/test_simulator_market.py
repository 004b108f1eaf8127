"""The simulator's market: reproducible trades, and frames shaped exactly like real ones."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from crypto_sentinel.simulator import Market, SimTrade, write_recording
from crypto_sentinel.simulator.market import ResumePoint
from crypto_sentinel.simulator.protocol import (
    ProtocolError,
    Subscriptions,
    error_frame,
    parse_client_message,
)
from crypto_sentinel.simulator.server import ws_text_frame
from tests.conftest import COINBASE_DATA

PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD"]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
DECIMAL_RE = re.compile(r"^(0|[1-9]\d*)(\.\d+)?$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def real_frames(type_: str) -> list[dict]:
    lines = (COINBASE_DATA / "session.ndjson").read_text().splitlines()
    frames = [json.loads(line) for line in lines]
    found = [f for f in frames if f["type"] == type_]
    assert found, f"no real {type_} frame in the recording"
    return found


def shape(frame: dict) -> list[tuple[str, type]]:
    return [(k, type(v)) for k, v in frame.items()]


def trades(market: Market, n: int, start: datetime = T0, step_ms: int = 5) -> list[SimTrade]:
    return [market.next_trade(start + timedelta(milliseconds=i * step_ms)) for i in range(n)]


def content(t: SimTrade) -> tuple:
    """Everything about a trade except its time."""
    return (
        t.product_id,
        t.trade_id,
        t.price,
        t.size,
        t.maker_side,
        t.sequence,
        t.maker_order_id,
        t.taker_order_id,
    )


# --------------------------------------------------------------------------- determinism


def test_same_seed_and_start_id_give_identical_trades_regardless_of_timing() -> None:
    a = Market(PRODUCTS, seed=7, start_trade_id=1000)
    b = Market(PRODUCTS, seed=7, start_trade_id=1000)
    slow = trades(a, 3000, step_ms=250)
    fast = [b.next_trade() for _ in range(3000)]  # wall-clock times
    assert [content(t) for t in slow] == [content(t) for t in fast]
    assert {t.product_id for t in slow} == set(PRODUCTS)
    # the frames agree too once the times are equal
    c = Market(PRODUCTS, seed=7, start_trade_id=1000)
    same_times = trades(c, 3000, step_ms=250)
    assert [a.match_frame(t) for t in slow] == [c.match_frame(t) for t in same_times]


def test_other_seed_or_start_id_gives_other_trades() -> None:
    base = [content(t) for t in trades(Market(PRODUCTS, seed=1, start_trade_id=10), 200)]
    other_seed = [content(t) for t in trades(Market(PRODUCTS, seed=2, start_trade_id=10), 200)]
    assert base != other_seed
    moved = trades(Market(PRODUCTS, seed=1, start_trade_id=500), 200)
    assert min(t.trade_id for t in moved) == 500


def test_default_start_id_is_the_current_time_in_microseconds() -> None:
    before = int(time.time() * 1_000_000)
    market = Market(PRODUCTS)
    after = int(time.time() * 1_000_000)
    assert before <= market.start_trade_id <= after
    assert market.next_trade().trade_id == market.start_trade_id


def test_resume_continues_each_products_ids_and_price_walk() -> None:
    """A restart continues from the lake's last trade per product, not from the seed."""
    first = Market(PRODUCTS, seed=3, start_trade_id=1)
    run1 = trades(first, 900)
    last = {t.product_id: t for t in run1}  # each product's newest trade
    resume = {p: ResumePoint(t.trade_id, Decimal(t.price), t.sequence) for p, t in last.items()}
    # Another seed on purpose: where a fresh walk of that seed starts is far from run 1's end.
    fresh = Market(PRODUCTS, seed=9, start_trade_id=1)
    again = Market(PRODUCTS, seed=9, start_trade_id=1, resume=resume)
    for p in PRODUCTS:
        assert again.price(p) == last[p].price  # the walk starts at the stored price
        assert abs(Decimal(fresh.price(p)) / Decimal(last[p].price) - 1) > Decimal("0.005")
    run2 = trades(again, 900, start=T0 + timedelta(minutes=5))
    for p in PRODUCTS:
        new = [t for t in run2 if t.product_id == p]
        assert [t.trade_id for t in new] == list(
            range(last[p].trade_id + 1, last[p].trade_id + 1 + len(new))
        )
        # One step of the walk (sigma 0.005 %) from the stored price, not a jump (> 0.5 %).
        step = Decimal(new[0].price) / Decimal(last[p].price) - 1
        assert abs(step) < Decimal("0.0005"), (p, last[p].price, new[0].price)
        assert again.trades_page(p, 1000)[-1].trade_id == last[p].trade_id + 1  # REST agrees
        # The feed's sequence never goes back (tickers are keyed by it).
        assert new[0].sequence > last[p].sequence


def test_resume_only_for_given_products_and_rounds_to_the_tick() -> None:
    market = Market(PRODUCTS, seed=5, start_trade_id=77,
                    resume={"ETH-USD": ResumePoint(41, Decimal("3012.345"))})  # fmt: skip
    assert market.price("ETH-USD") == "3012.34"  # half-even onto the 0.01 increment
    firsts = {}
    for t in trades(market, 60):
        firsts.setdefault(t.product_id, t.trade_id)
    assert firsts == {"BTC-USD": 77, "ETH-USD": 42, "SOL-USD": 77}
    with pytest.raises(ValueError, match="not simulated"):
        Market(PRODUCTS, resume={"DOGE-USD": ResumePoint(1, Decimal(1))})
    with pytest.raises(ValueError, match="invalid resume point"):
        Market(PRODUCTS, resume={"BTC-USD": ResumePoint(1, Decimal(0))})


# --------------------------------------------------------------------------- trade contents


def test_trade_ids_are_contiguous_per_product_and_sequences_jump_1_to_20() -> None:
    market = Market(PRODUCTS, seed=3, start_trade_id=42)
    by_product: dict[str, list[SimTrade]] = defaultdict(list)
    for t in trades(market, 5000):
        by_product[t.product_id].append(t)
    assert set(by_product) == set(PRODUCTS)
    for product, items in by_product.items():
        ids = [t.trade_id for t in items]
        assert ids == list(range(42, 42 + len(items))), product
        jumps = {b.sequence - a.sequence for a, b in itertools.pairwise(items)}
        assert min(jumps) >= 1 and max(jumps) <= 20, product
        assert len(jumps) > 5  # really random, not a constant step
        assert market.history(product) == items


def test_prices_are_positive_on_the_quote_increment_and_sizes_have_8_decimals_at_most() -> None:
    market = Market([*PRODUCTS, "ETH-BTC", "DOGE-EUR"], seed=5, start_trade_id=1)
    increments = {p: Decimal(market.specs[p].quote_increment) for p in market.products}
    assert increments["BTC-USD"] == Decimal("0.01") and increments["DOGE-EUR"] == Decimal("0.01")
    for t in trades(market, 5000):
        price, size = Decimal(t.price), Decimal(t.size)
        assert price > 0 and price % increments[t.product_id] == 0, t
        assert size > 0 and size == size.quantize(Decimal("0.00000001")), t
        assert DECIMAL_RE.match(t.price) and DECIMAL_RE.match(t.size), t
        assert not t.price.endswith("0") or "." not in t.price  # normalised like real matches
        assert UUID_RE.match(t.maker_order_id) and UUID_RE.match(t.taker_order_id)
        assert t.maker_side in ("buy", "sell")
        assert t.time.tzinfo is not None


def test_start_prices_are_sensible_and_the_walk_stays_near_them() -> None:
    market = Market([*PRODUCTS, "ADA-USD"], seed=11, start_trade_id=1)
    expected = {"BTC-USD": 60_000, "ETH-USD": 3_000, "SOL-USD": 150, "ADA-USD": 100}
    for t in trades(market, 20_000):
        ratio = Decimal(t.price) / expected[t.product_id]
        assert Decimal("0.8") < ratio < Decimal("1.2"), t


def test_up_ticks_are_maker_sells_and_down_ticks_maker_buys() -> None:
    """Docs: a sell side is an up-tick (a taker bought from a resting sell)."""
    market = Market(PRODUCTS, seed=9, start_trade_id=1)
    last: dict[str, Decimal] = {}
    ups = downs = 0
    for t in trades(market, 5000):
        price = Decimal(t.price)
        prev = last.get(t.product_id)
        if prev is not None and price > prev:
            assert t.maker_side == "sell"
            ups += 1
        elif prev is not None and price < prev:
            assert t.maker_side == "buy"
            downs += 1
        last[t.product_id] = price
    assert ups > 100 and downs > 100


def test_times_never_go_backwards() -> None:
    market = Market(PRODUCTS, seed=1, start_trade_id=1)
    first = market.next_trade(T0)
    second = market.next_trade(T0 - timedelta(seconds=5))
    assert second.time == first.time
    with pytest.raises(ValueError):
        market.next_trade(datetime(2024, 1, 1))  # naive


def test_history_and_emitted_are_bounded() -> None:
    market = Market(PRODUCTS, seed=1, start_trade_id=1, history_limit=100)
    made = trades(market, 1000)
    assert market.emitted() == made[-100:]
    for product in PRODUCTS:
        mine = [t for t in made if t.product_id == product]
        assert market.history(product) == mine[-100:]
        assert market.last_trade(product) == mine[-1]


def test_invalid_products_are_refused() -> None:
    for bad in ([], ["BTC-USD", "BTC-USD"], ['BTC-"USD'], ["btc-usd"]):
        with pytest.raises(ValueError):
            Market(bad)


def test_trades_page_slices_by_cursor() -> None:
    market = Market(["BTC-USD"], seed=1, start_trade_id=1)
    trades(market, 50)  # ids 1..50
    ids = [t.trade_id for t in market.trades_page("BTC-USD", 10)]
    assert ids == list(range(50, 40, -1))
    assert [t.trade_id for t in market.trades_page("BTC-USD", 10, after=41)] == list(
        range(40, 30, -1)
    )
    assert [t.trade_id for t in market.trades_page("BTC-USD", 5, before=10)] == [15, 14, 13, 12, 11]
    assert [t.trade_id for t in market.trades_page("BTC-USD", 100, before=5, after=9)] == [8, 7, 6]
    assert market.trades_page("BTC-USD", 10, after=1) == []
    assert market.trades_page("BTC-USD", 10, before=50) == []


# --------------------------------------------------------------------------- frame shapes


def test_match_and_last_match_frames_have_the_real_keys_order_and_types() -> None:
    market = Market(PRODUCTS, seed=1, start_trade_id=1)
    for t in trades(market, 300):
        for type_ in ("match", "last_match"):
            text = market.match_frame(t, type_)
            ours = json.loads(text)
            for real in real_frames(type_):
                assert shape(ours) == shape(real)
            assert ours["type"] == type_
            assert TIME_RE.match(ours["time"])
            assert ours["time"] == t.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            assert (ours["trade_id"], ours["side"], ours["sequence"]) == (
                t.trade_id,
                t.maker_side,
                t.sequence,
            )
            assert (ours["price"], ours["size"]) == (t.price, t.size)
            assert UUID_RE.match(ours["maker_order_id"])
            assert text == json.dumps(ours, separators=(",", ":"))  # compact like the feed


def test_ticker_frame_has_the_real_keys_plus_the_newer_best_sizes() -> None:
    market = Market(PRODUCTS, seed=1, start_trade_id=1)
    real = real_frames("ticker")
    # Newer frames add best_bid_size / best_ask_size after best_bid / best_ask.
    expected: list[tuple[str, type]] = []
    for key, kind in shape(real[0]):
        expected.append((key, kind))
        if key in ("best_bid", "best_ask"):
            expected.append((f"{key}_size", str))
    for frame in real:
        assert [k for k, _ in shape(frame)] == [k for k, _ in shape(real[0])]
    for t in trades(market, 500):
        ticker = json.loads(market.ticker_frame(t))
        assert shape(ticker) == expected
        assert ticker["side"] != t.maker_side  # ticker side is the taker's
        assert (ticker["trade_id"], ticker["sequence"], ticker["price"]) == (
            t.trade_id,
            t.sequence,
            t.price,
        )
        assert ticker["last_size"] == t.size
        assert ticker["time"] == t.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        bid, ask = Decimal(ticker["best_bid"]), Decimal(ticker["best_ask"])
        price = Decimal(t.price)
        assert 0 < bid < ask and bid <= price <= ask
        assert price == (ask if t.maker_side == "sell" else bid)
        low, high = Decimal(ticker["low_24h"]), Decimal(ticker["high_24h"])
        assert low <= price <= high and low <= Decimal(ticker["open_24h"]) <= high
        assert Decimal(ticker["volume_30d"]) > Decimal(ticker["volume_24h"]) > 0
        for key in ("volume_24h", "volume_30d", "best_bid_size", "best_ask_size"):
            assert re.match(r"^\d+\.\d{8}$", ticker[key]), key  # padded like the real ones
        assert ticker["best_bid"] == str(bid.quantize(Decimal("0.01")))  # padded to increment


def test_volume_24h_grows_by_each_trade_size_within_the_hour() -> None:
    market = Market(["BTC-USD"], seed=1, start_trade_id=1)
    made = trades(market, 2, start=T0.replace(minute=10))
    vol0 = Decimal(json.loads(market.ticker_frame(made[0]))["volume_24h"])
    t = market.next_trade(T0.replace(minute=20))
    vol1 = Decimal(json.loads(market.ticker_frame(t))["volume_24h"])
    assert vol1 - vol0 == Decimal(t.size)


def test_heartbeat_frame_matches_real_captures() -> None:
    """Real heartbeats (not the docs' example) order keys type, last_trade_id, product_id,
    sequence, time."""
    market = Market(PRODUCTS, seed=1, start_trade_id=77)
    empty = json.loads(market.heartbeat_frame("ETH-USD", T0))
    assert empty["last_trade_id"] == 0  # no trade yet, as the real feed reports it
    made = trades(market, 50)
    last_eth = [t for t in made if t.product_id == "ETH-USD"][-1]
    hb = json.loads(market.heartbeat_frame("ETH-USD", T0 + timedelta(seconds=1)))
    assert list(hb) == ["type", "last_trade_id", "product_id", "sequence", "time"]
    assert hb == {
        "type": "heartbeat",
        "last_trade_id": last_eth.trade_id,
        "product_id": "ETH-USD",
        "sequence": last_eth.sequence,
        "time": "2024-05-01T12:00:01.000000Z",
    }


def test_rest_trade_item_has_maker_side_int_id_and_padded_decimals() -> None:
    market = Market(["BTC-USD"], seed=1, start_trade_id=5)
    t = market.next_trade(T0)
    item = market.rest_trade(t)
    assert list(item) == ["trade_id", "side", "size", "price", "time"]
    assert item["trade_id"] == 5 and item["side"] == t.maker_side
    assert Decimal(str(item["price"])) == Decimal(t.price)
    for key in ("price", "size"):
        assert re.match(r"^\d+\.\d{8}$", str(item[key])), key
    real = json.loads((COINBASE_DATA / "rest_products_trades.ndjson").read_text())[0]
    assert set(item) == set(real)


def test_rest_product_has_the_real_product_keys_and_types() -> None:
    real = json.loads((COINBASE_DATA / "rest_products.json").read_text())
    btc_real = next(p for p in real if p["id"] == "BTC-USD")
    ours = Market(PRODUCTS, seed=1, start_trade_id=1).specs["BTC-USD"].rest()
    assert shape(ours) == shape(btc_real)
    for key in ("id", "base_currency", "quote_currency", "quote_increment", "base_increment"):
        assert ours[key] == btc_real[key]


# --------------------------------------------------------------------------- client messages


def test_subscribe_forms_and_errors() -> None:
    products = set(PRODUCTS)
    plain = parse_client_message(
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["matches"]}',
        products,
    )
    assert plain.type == "subscribe" and plain.channels == {"matches": ["BTC-USD", "ETH-USD"]}
    objects = parse_client_message(
        json.dumps(
            {
                "type": "subscribe",
                "product_ids": ["SOL-USD"],
                "channels": [
                    "heartbeat",
                    {"name": "ticker", "product_ids": ["ETH-USD", "ETH-USD"]},
                ],
            }
        ),
        products,
    )
    assert objects.channels == {"heartbeat": ["SOL-USD"], "ticker": ["ETH-USD"]}

    real_errors = [
        json.loads(line) for line in (COINBASE_DATA / "error.ndjson").read_text().splitlines()
    ]
    cases = {
        '{"type":"subscribe","product_ids":["BTC-USD"],"channels":[]}': "No channels provided",
        '{"type":"subscribe","product_ids":["BTC-USD"]}': "No channels provided",
        '{"type":"subscribe","product_ids":["FOO-USD"],"channels":["matches"]}': (
            "FOO-USD is not a valid product"
        ),
        '{"type":"subscribe","channels":["heartbeat"]}': (
            "You need to specify at least one product ID for channel heartbeat"
        ),
        '{"type":"subscribe","product_ids":["BTC-USD"],'
        '"channels":[{"name":"matches","product_ids":[]}]}': " is not a valid product",
        '{"type":"subscribe","product_ids":["BTC-USD"],"channels":["level3"]}': (
            "level3 is not a valid channel"
        ),
        '{"type":"hello"}': "Type has to be either subscribe or unsubscribe",
    }
    for raw, reason in cases.items():
        with pytest.raises(ProtocolError) as err:
            parse_client_message(raw, products)
        frame = json.loads(err.value.frame)
        assert frame["reason"] == reason, raw
        assert list(frame) == list(real_errors[1])  # type, message, reason like the 2023 frame
        assert set(frame) == set(real_errors[0])
    assert err.value.frame == error_frame("Failed to subscribe", reason)
    with pytest.raises(ProtocolError) as err:
        parse_client_message("not json", products)
    assert json.loads(err.value.frame)["type"] == "error"


def test_acks_are_cumulative_and_unsubscribe_removes() -> None:
    subs = Subscriptions()
    assert subs.subscribe({"matches": ["BTC-USD"]}) == {"matches": ["BTC-USD"]}
    assert subs.subscribe({"matches": ["BTC-USD", "ETH-USD"], "ticker": ["ETH-USD"]}) == {
        "matches": ["ETH-USD"],
        "ticker": ["ETH-USD"],
    }
    ack = json.loads(subs.ack_frame())
    real = json.loads((COINBASE_DATA / "subscriptions.ndjson").read_text().splitlines()[1])
    assert list(ack) == list(real) and [list(c) for c in ack["channels"]] == [
        list(c) for c in real["channels"]
    ]
    assert ack["channels"] == [
        {"name": "matches", "product_ids": ["BTC-USD", "ETH-USD"]},
        {"name": "ticker", "product_ids": ["ETH-USD"]},
    ]
    subs.unsubscribe({"matches": ["BTC-USD"], "ticker": []})
    assert json.loads(subs.ack_frame())["channels"] == [
        {"name": "matches", "product_ids": ["ETH-USD"]}
    ]
    subs.unsubscribe({"matches": ["ETH-USD"]})
    assert subs.ack_frame() == '{"type":"subscriptions","channels":[]}'


# --------------------------------------------------------------------------- recordings


def read_recording(path: Path) -> list[tuple[float, dict]]:
    out = []
    for line in path.read_text().splitlines():
        wrapper = json.loads(line)
        assert list(wrapper) == ["recv_ts", "raw"]
        assert isinstance(wrapper["recv_ts"], float) and isinstance(wrapper["raw"], str)
        out.append((wrapper["recv_ts"], json.loads(wrapper["raw"])))
    return out


def test_write_recording_replays_like_a_real_session(tmp_path: Path) -> None:
    real_first = json.loads((COINBASE_DATA / "session.recv_ts.ndjson").read_text().splitlines()[0])
    path = tmp_path / "sim.ndjson"
    n = write_recording(path, PRODUCTS, 3000, seed=4, start_trade_id=900, rate=1000.0)
    assert n == 3000
    first_line = json.loads(path.read_text().splitlines()[0])
    assert list(first_line) == list(real_first)
    frames = read_recording(path)
    types = [f["type"] for _, f in frames]
    assert types[0] == "subscriptions"
    assert types.count("match") == 3000 and types.count("ticker") == 3000 + len(PRODUCTS)
    assert types.count("last_match") == len(PRODUCTS)
    # 3 simulated seconds of trades -> heartbeats at +1 s and +2 s for every product
    assert types.count("heartbeat") == 2 * len(PRODUCTS)
    stamps = [ts for ts, _ in frames]
    assert stamps == sorted(stamps)

    last_id: dict[str, int] = {}
    pending_match: dict | None = None
    for _, f in frames:
        if f["type"] in ("match", "last_match"):
            pid = f["product_id"]
            if pid in last_id:
                assert f["trade_id"] == last_id[pid] + 1  # contiguous from last_match on
            last_id[pid] = f["trade_id"]
        if f["type"] == "match":
            pending_match = f
        elif f["type"] == "ticker" and pending_match is not None:
            assert f["trade_id"] == pending_match["trade_id"]
            assert f["side"] != pending_match["side"]
            pending_match = None
        elif f["type"] == "heartbeat":
            assert f["last_trade_id"] == last_id[f["product_id"]]
    assert pending_match is None
    assert sum(last_id[p] - 900 + 1 for p in PRODUCTS) == 3000 + len(PRODUCTS)


def test_write_recording_is_reproducible(tmp_path: Path) -> None:
    a, b = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    write_recording(a, ["BTC-USD", "ETH-USD"], 500, seed=8, start_trade_id=1)
    write_recording(b, ["BTC-USD", "ETH-USD"], 500, seed=8, start_trade_id=1)
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- wire frames


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_prebuilt_websocket_frames_parse_as_single_text_frames(n: int) -> None:
    """The server writes pre-built frames straight to the socket; a standard parser must
    read them back as one final, unmasked text frame with the same payload."""
    payload = bytes(range(48, 58)) * (n // 10) + b"7" * (n % 10)
    reader = StreamReader()
    reader.feed_data(ws_text_frame(payload) + ws_text_frame(b"next"))
    parsed = []
    for _ in range(2):
        parser = Frame.parse(reader.read_exact, mask=False)
        with pytest.raises(StopIteration) as done:
            next(parser)
        parsed.append(done.value.value)
    assert (parsed[0].opcode, parsed[0].fin, parsed[0].data) == (Opcode.TEXT, True, payload)
    assert parsed[1].data == b"next"
