"""Books rebuilt from REAL recorded book messages (Binance depth diffs, Coinbase Exchange
l2update, Kraken v1 book converted to v2 frames) through each venue's codec and sync rule,
compared level by level with an independent plain-Python reading (dicts of the exact texts);
decoding of documented v2 / Advanced / Exchange shapes, and bad frames -> FrameError."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from itertools import pairwise

import pytest

from crypto_sentinel.books.events import BookEvent, BookSync, Verdict
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.coinbase_advanced.book import Sequences, note_frame, sequence_of
from crypto_sentinel.sources.kraken.book import BookSync as KrakenSync
from crypto_sentinel.sources.venues import BookCodec, book_codec_for, decode_frames
from tests.conftest import SHARED

DATA = SHARED / "data"
NOW_NS = time.time_ns()
RefBook = dict[str, dict[Decimal, tuple[str, str]]]  # side -> price -> (price, size) texts


def lines(path: str) -> list[str]:
    return [line for line in (DATA / path).read_text().splitlines() if line.strip()]


def frame(exchange: str, text: str, conn: str = "conn") -> RawFrame:
    return RawFrame(exchange, conn, 0, NOW_NS, text)


def compact(value: object) -> str:
    """JSON as the venues send it: no spaces."""
    return json.dumps(value, separators=(",", ":"))


def codec(exchange: str) -> BookCodec:
    found = book_codec_for(exchange)
    assert found is not None
    return found


def ref_set(book: RefBook, side: str, price: str, size: str) -> None:
    if Decimal(size) == 0:
        book[side].pop(Decimal(price), None)
    else:
        book[side][Decimal(price)] = (price, size)


def ref_levels(book: RefBook) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    bids = [book["bid"][p] for p in sorted(book["bid"], reverse=True)]
    asks = [book["ask"][p] for p in sorted(book["ask"])]
    return bids, asks


def book_levels(book: OrderBook) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The book's levels as texts: sizes keep the venue's exact text, prices compare by value
    (the reference keeps the first text of a price, the book the first Decimal)."""
    bids, asks = book.top()

    def texts(levels: list[tuple[Decimal, Decimal]]) -> list[tuple[str, str]]:
        return [(format(p, "f"), format(s, "f")) for p, s in levels]

    return texts(bids), texts(asks)


def same(book: OrderBook, ref: RefBook) -> None:
    got_bids, got_asks = book_levels(book)
    want_bids, want_asks = ref_levels(ref)
    for got, want in ((got_bids, want_bids), (got_asks, want_asks)):
        assert [(Decimal(p), s) for p, s in got] == [(Decimal(p), s) for p, s in want]


def run(
    exchange: str, events: list[BookEvent], syncs: dict[str, BookSync], books: dict[str, OrderBook]
) -> list[Verdict]:
    verdicts = []
    for event in events:
        product = event.product_id
        if product not in books:
            books[product] = OrderBook(exchange, product)
            syncs[product] = codec(exchange).new_sync()
        verdicts.append(syncs[product].accept(event, books[product]))
    return verdicts


# --- Binance depthUpdate ---------------------------------------------------------------------


def test_binance_recorded_depth_diffs_rebuild_the_reference_books() -> None:
    texts = lines("binance/depthUpdate_combined_stream.ndjson")
    ref: dict[str, RefBook] = {}
    last_u: dict[str, int] = {}
    first_u: dict[str, int] = {}
    for text in texts:
        d = json.loads(text)["data"]
        product = d["s"]
        if product in last_u:  # continuity as recorded: each U follows the previous u
            assert d["U"] == last_u[product] + 1
        first_u.setdefault(product, d["U"])
        last_u[product] = d["u"]
        want = ref.setdefault(product, {"bid": {}, "ask": {}})
        for price, size in d["b"]:
            ref_set(want, "bid", price, size)
        for price, size in d["a"]:
            ref_set(want, "ask", price, size)
    bc = codec("binance")
    events = [e for t in texts for e in bc.decode(frame("binance", t))]
    assert all(bc.is_book(t) for t in texts) and len(events) == len(texts) == 300
    # no snapshot was recorded: each symbol starts from an empty one just before its first U
    symbols = {e.product_id: e for e in events}
    starts = [
        BookEvent("binance", p, "snapshot", update_id=first_u[p.replace("-", "")] - 1,
                  conn_id="conn")
        for p in symbols
    ]  # fmt: skip
    syncs: dict[str, BookSync] = {}
    books: dict[str, OrderBook] = {}
    verdicts = run("binance", starts + events, syncs, books)
    assert verdicts == [Verdict(True)] * len(verdicts)
    assert len(books) == len(ref) == 9
    for product, book in books.items():
        symbol = product.replace("-", "")
        assert book.valid and book.update_id == last_u[symbol]
        same(book, ref[symbol])


# --- Coinbase Exchange l2update ---------------------------------------------------------------


def test_coinbase_recorded_l2updates_rebuild_the_reference_books() -> None:
    texts = lines("coinbase_exchange/l2update.ndjson")
    ref: dict[str, RefBook] = {}
    last_time: dict[str, str] = {}
    for text in texts:
        d = json.loads(text)
        last_time[d["product_id"]] = d["time"]
        want = ref.setdefault(d["product_id"], {"bid": {}, "ask": {}})
        for side, price, size in d["changes"]:
            ref_set(want, {"buy": "bid", "sell": "ask"}[side], price, size)
    bc = codec("coinbase")
    events = [e for t in texts for e in bc.decode(frame("coinbase", t))]
    assert all(bc.is_book(t) for t in texts) and len(events) == 300
    starts = [BookEvent("coinbase", p, "snapshot", conn_id="conn") for p in ref]
    syncs: dict[str, BookSync] = {}
    books: dict[str, OrderBook] = {}
    verdicts = run("coinbase", starts + events, syncs, books)
    assert verdicts == [Verdict(True)] * len(verdicts)
    assert books.keys() == ref.keys()
    for product, book in books.items():
        assert book.valid
        same(book, ref[product])
        assert book.time is not None
        assert book.time.isoformat().replace("+00:00", "Z") == last_time[product]


# --- Kraken v1 book, as v2 frames ------------------------------------------------------------


def v2_levels(rows: list[list[str]]) -> str:
    """v1 [price, volume, time] rows as v2 level objects with JSON numbers (the exact text)."""
    return ",".join(f'{{"price":{row[0]},"qty":{row[1]}}}' for row in rows)


def v2_frame(line: str) -> str:
    msg = json.loads(line)
    pair, parts = msg[-1], [p for p in msg[1:-2] if isinstance(p, dict)]
    if "as" in parts[0]:
        bids, asks = v2_levels(parts[0]["bs"]), v2_levels(parts[0]["as"])
        return (
            f'{{"channel":"book","type":"snapshot","data":[{{"symbol":"{pair}","bids":[{bids}],'
            f'"asks":[{asks}]}}]}}'
        )
    bids = v2_levels([row for p in parts for row in p.get("b", [])])
    asks = v2_levels([row for p in parts for row in p.get("a", [])])
    checksum = next(p["c"] for p in parts if "c" in p)
    return (
        f'{{"channel":"book","type":"update","data":[{{"symbol":"{pair}","bids":[{bids}],'
        f'"asks":[{asks}],"checksum":{checksum}}}]}}'
    )


def kraken_reference(texts: list[str], depth: int) -> dict[str, RefBook]:
    ref: dict[str, RefBook] = {}
    for text in texts:
        msg = json.loads(text)
        pair, parts = msg[-1].replace("/", "-"), [p for p in msg[1:-2] if isinstance(p, dict)]
        if "as" in parts[0]:
            ref[pair] = {"bid": {}, "ask": {}}
        book = ref[pair]
        for part in parts:
            for key, side in (("as", "ask"), ("bs", "bid"), ("a", "ask"), ("b", "bid")):
                for row in part.get(key, []):
                    ref_set(book, side, row[0], row[1])
        for side, keep in (
            ("bid", sorted(book["bid"], reverse=True)),
            ("ask", sorted(book["ask"])),
        ):
            for price in keep[depth:]:
                del book[side][price]
    return ref


def test_kraken_recorded_book_verifies_every_checksum_through_the_v2_path() -> None:
    texts = lines("kraken_v1/v1_book.ndjson")
    bc = codec("kraken")
    frames = [v2_frame(t) for t in texts]
    assert all(bc.is_book(f) for f in frames)
    events = [e for f in frames for e in bc.decode(frame("kraken", f))]
    assert len(events) == 2000 and sum(e.checksum is not None for e in events) == 1990
    syncs: dict[str, BookSync] = {}
    kraken: list[KrakenSync] = []
    books: dict[str, OrderBook] = {}
    for event in events:
        if event.product_id not in books:
            books[event.product_id] = OrderBook("kraken", event.product_id)
            kraken.append(KrakenSync(depth=1000))
            syncs[event.product_id] = kraken[-1]
    verdicts = run("kraken", events, syncs, books)
    assert verdicts == [Verdict(True)] * 2000
    assert sum(s.verified for s in kraken) == 1990
    ref = kraken_reference(texts, 1000)
    assert books.keys() == ref.keys() and len(books) == 10
    for product, book in books.items():
        assert book.valid
        got_bids, got_asks = book_levels(book)
        assert (got_bids, got_asks) == ref_levels(ref[product])  # exact texts, both sides


def test_kraken_a_changed_size_fails_its_recorded_checksum() -> None:
    texts = [t for t in lines("kraken_v1/v1_book.ndjson") if '"ADA/XBT"' in t]
    frames = [v2_frame(t) for t in texts]
    update = 3  # the snapshot, two updates that verify, then the changed one
    msg = json.loads(texts[update])
    row = next(p for p in msg[1:-2] if isinstance(p, dict) and ("a" in p or "b" in p))
    old = (row["a"] if "a" in row else row["b"])[0][1]
    frames[update] = frames[update].replace(f'"qty":{old}', f'"qty":{Decimal(old) + 1}', 1)
    sync, book = KrakenSync(depth=1000), OrderBook("kraken", "ADA-XBT")
    bc = codec("kraken")
    verdicts = [
        sync.accept(e, book) for f in frames[: update + 1] for e in bc.decode(frame("kraken", f))
    ]
    assert verdicts == [Verdict(True)] * 3 + [Verdict(True, "checksum mismatch")]
    assert not book.valid and book.invalid_reason == "checksum mismatch"


# --- decoding documented shapes ----------------------------------------------------------------


def test_decode_kraken_v2_keeps_the_exact_number_text() -> None:
    text = (
        '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":'
        '65000.10,"qty":0.00000000}],"asks":[{"price":65000.2,"qty":1.50}],"checksum":2937483923,'
        '"timestamp":"2026-01-01T00:00:00.123456Z"}]}'
    )
    [e] = codec("kraken").decode(frame("kraken", text, conn="k1"))
    assert (e.exchange, e.product_id, e.kind, e.checksum, e.conn_id) == (
        "kraken", "BTC-USD", "update", 2937483923, "k1",
    )  # fmt: skip
    assert [(str(p), str(s)) for p, s in e.bids] == [("65000.10", "0E-8")]
    assert [(str(p), str(s)) for p, s in e.asks] == [("65000.2", "1.50")]
    assert e.time is not None and e.time.isoformat() == "2026-01-01T00:00:00.123456+00:00"


def test_decode_advanced_level2() -> None:
    text = compact(
        {"channel": "l2_data", "client_id": "", "timestamp": "2026-01-01T00:00:00.5Z",
         "sequence_num": 7, "events": [
             {"type": "snapshot", "product_id": "BTC-USD", "updates": [
                 {"side": "bid", "event_time": "2026-01-01T00:00:00Z",
                  "price_level": "65000.01", "new_quantity": "0.25"},
                 {"side": "offer", "event_time": "2026-01-01T00:00:00Z",
                  "price_level": "65000.02", "new_quantity": "1.0"}]},
             {"type": "update", "product_id": "ETH-USD", "updates": [
                 {"side": "offer", "event_time": "2026-01-01T00:00:00Z",
                  "price_level": "3000.5", "new_quantity": "0"}]}]}
    )  # fmt: skip
    bc = codec("coinbase-advanced")
    assert bc.is_book(text) and not bc.is_book(text.replace("l2_data", "market_trades"))
    snap, up = bc.decode(frame("coinbase-advanced", text))
    assert (snap.product_id, snap.kind, snap.update_id, snap.conn_id) == (
        "BTC-USD",
        "snapshot",
        7,
        "conn",
    )
    assert snap.bids == [(Decimal("65000.01"), Decimal("0.25"))]
    assert snap.asks == [(Decimal("65000.02"), Decimal("1.0"))]
    assert (up.product_id, up.kind, up.bids, up.asks) == (
        "ETH-USD", "update", [], [(Decimal("3000.5"), Decimal("0"))],
    )  # fmt: skip


def test_decode_exchange_level2_snapshot_and_update() -> None:
    bc = codec("coinbase")
    snap_text = (
        '{"type":"snapshot","product_id":"BTC-USD","bids":[["10101.10","0.45054140"]],'
        '"asks":[["10102.55","0.57753524"]]}'
    )
    [snap] = bc.decode(frame("coinbase", snap_text))
    assert (snap.kind, snap.bids, snap.asks) == (
        "snapshot", [(Decimal("10101.10"), Decimal("0.45054140"))],
        [(Decimal("10102.55"), Decimal("0.57753524"))],
    )  # fmt: skip
    upd_text = (
        '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","10101.80000000",'
        '"0.162567"],["sell","10102.6","0.0"]],"time":"2019-08-14T20:42:27.265Z"}'
    )
    [up] = bc.decode(frame("coinbase", upd_text))
    assert up.bids == [(Decimal("10101.80000000"), Decimal("0.162567"))]
    assert up.asks == [(Decimal("10102.6"), Decimal("0.0"))] and up.time is not None
    assert bc.is_book(snap_text) and bc.is_book(upd_text)
    assert not bc.is_book('{"type":"match","product_id":"BTC-USD"}')


def test_is_book_tells_book_frames_from_acks_and_trades() -> None:
    kraken = codec("kraken").is_book
    assert kraken(KRAKEN_UPDATE)
    assert not kraken(
        '{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,'
        '"symbol":"BTC/USD"},"success":true,"time_in":"x","time_out":"y"}'
    )
    assert not kraken('{"channel":"trade","type":"update","data":[]}')
    binance = codec("binance").is_book
    assert binance(BINANCE_UPDATE) and not binance('{"result":null,"id":1}')
    assert not binance(BINANCE_UPDATE.replace("depthUpdate", "aggTrade"))


BINANCE_UPDATE = (
    '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1618677372122,'
    '"s":"BTCUSDT","U":5,"u":7,"b":[["65000.10","1.5"]],"a":[["65000.20","0.00000000"]]}}'
)
KRAKEN_UPDATE = (
    '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":65000.1,'
    '"qty":1.5}],"asks":[],"checksum":1}]}'
)
ADVANCED_UPDATE = (
    '{"channel":"l2_data","timestamp":"2026-01-01T00:00:00Z","sequence_num":3,"events":[{"type":'
    '"update","product_id":"BTC-USD","updates":[{"side":"bid","price_level":"65000.1",'
    '"new_quantity":"1.5"}]}]}'
)
EXCHANGE_UPDATE = '{"type":"l2update","product_id":"BTC-USD","changes":[["buy","65000.1","1.5"]]}'


@pytest.mark.parametrize(
    ("exchange", "text", "reason"),
    [
        ("binance", BINANCE_UPDATE.replace('"U":5', '"U":9'), "U <= u"),
        ("binance", BINANCE_UPDATE.replace('"65000.10"', '"-1"'), "price must be > 0"),
        ("binance", BINANCE_UPDATE.replace('"1.5"', '"1.0000000000001"'), "decimal places"),
        ("binance", BINANCE_UPDATE.replace("BTCUSDT", "BTCXYZ"), "known quote asset"),
        ("binance", BINANCE_UPDATE.replace('"u":7,', ""), "bad depth message"),
        ("binance", BINANCE_UPDATE[:40], "bad depth message"),
        ("binance", '{"stream":"x@depthSnapshot","data":{"e":"depthSnapshot","s":"BTCUSDT",'
         '"lastUpdateId":-1,"bids":[],"asks":[]}}', "lastUpdateId must be >= 0"),
        ("kraken", KRAKEN_UPDATE.replace("65000.1", "0"), "price must be > 0"),
        ("kraken", KRAKEN_UPDATE.replace("1.5", "-1.5"), "size is not a plain non-negative"),
        ("kraken", KRAKEN_UPDATE.replace("1.5", "1e400"), "size is absurdly large"),
        ("kraken", KRAKEN_UPDATE.replace("1.5", "1.0000000000001"), "more than 12 decimal"),
        ("kraken", KRAKEN_UPDATE.replace('"checksum":1', '"checksum":4294967296'), "32-bit"),
        ("kraken", KRAKEN_UPDATE.replace('"update"', '"delta"'), "snapshot or update"),
        ("kraken", KRAKEN_UPDATE.replace("BTC/USD", "BTCUSD"), "not BASE/QUOTE"),
        ("kraken", KRAKEN_UPDATE.replace('"price":65000.1,', ""), "bad book message"),
        ("coinbase-advanced", ADVANCED_UPDATE.replace('"bid"', '"buy"'), "'bid' or 'offer'"),
        ("coinbase-advanced", ADVANCED_UPDATE.replace('"1.5"', '"1e5"'), "plain non-negative"),
        ("coinbase-advanced", ADVANCED_UPDATE.replace('"BTC-USD"', '"btc usd"'), "product_id"),
        ("coinbase-advanced", ADVANCED_UPDATE.replace('"sequence_num":3', '"sequence_num":-3'),
         "sequence_num must be >= 0"),
        ("coinbase-advanced", ADVANCED_UPDATE.replace('"type":"update"', '"type":"x"'),
         "snapshot or update"),
        ("coinbase-advanced", ADVANCED_UPDATE.replace("2026-01-01", "2999-01-01"), "future"),
        ("coinbase", EXCHANGE_UPDATE.replace('"buy"', '"bid"'), "'buy' or 'sell'"),
        ("coinbase", EXCHANGE_UPDATE.replace('"65000.1"', '"65000.1.2"'), "plain non-negative"),
        ("coinbase", EXCHANGE_UPDATE.replace(',"1.5"]', "]"), "bad level2 message"),
        ("coinbase", "not json", "bad level2 message"),
    ],
)  # fmt: skip
def test_bad_book_frames_raise_frame_error_with_a_reason(
    exchange: str, text: str, reason: str
) -> None:
    with pytest.raises(FrameError, match=reason):
        codec(exchange).decode(frame(exchange, text))


def test_good_frames_of_the_bad_cases_decode() -> None:
    for exchange, text in (
        ("binance", BINANCE_UPDATE), ("kraken", KRAKEN_UPDATE),
        ("coinbase-advanced", ADVANCED_UPDATE), ("coinbase", EXCHANGE_UPDATE),
    ):  # fmt: skip
        [event] = codec(exchange).decode(frame(exchange, text))
        assert event.bids and event.bids[0][0] in (Decimal("65000.1"), Decimal("65000.10"))


def test_trade_codecs_take_book_frames_as_control_frames_not_quarantine() -> None:
    snapshot = (
        '{"stream":"btcusdt@depthSnapshot","data":{"e":"depthSnapshot","s":"BTCUSDT",'
        '"lastUpdateId":7,"bids":[["65000.10","1.5"]],"asks":[["65000.20","2"]]}}'
    )
    frames = [
        frame("binance", snapshot), frame("binance", BINANCE_UPDATE),
        frame("kraken", KRAKEN_UPDATE),
        frame("kraken", KRAKEN_UPDATE.replace("update", "snapshot")),
        frame("coinbase-advanced", ADVANCED_UPDATE), frame("coinbase", EXCHANGE_UPDATE),
        frame("coinbase", '{"type":"snapshot","product_id":"BTC-USD","bids":[],"asks":[]}'),
        frame("simulator-binance", snapshot),
    ]  # fmt: skip
    batch = decode_frames(frames)
    assert batch.rejected == [] and batch.control == len(frames)
    assert batch.trades.num_rows == 0 and batch.tickers.num_rows == 0
    [snap] = codec("simulator-binance").decode(frames[-1])
    assert (snap.exchange, snap.kind, snap.update_id) == ("simulator-binance", "snapshot", 7)


def test_advanced_sequences_over_a_real_session_find_exactly_the_missing_numbers() -> None:
    """The recording keeps some channels only: the numbers of the others are missing."""
    texts = [json.loads(line)["raw"] for line in lines("coinbase_advanced/session.recv_ts.ndjson")]
    seqs = Sequences()
    for text in texts:
        note_frame(frame("coinbase-advanced", text), seqs)
    numbers = [json.loads(text)["sequence_num"] for text in texts]
    assert numbers == sorted(numbers) and len(numbers) == len(texts) == 146
    pairs = list(pairwise(numbers))
    assert any(b == a + 1 for a, b in pairs) and any(b > a + 1 for a, b in pairs)
    for a, b in pairs:
        assert seqs.lost_between("conn", a, b) is (b > a + 1)
    assert seqs.lost_between("conn", numbers[0], numbers[-1])
    assert [sequence_of(t) for t in texts] == numbers
