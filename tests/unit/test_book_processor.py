"""The engine's book processor with a fake venue (its own tiny frame format and sync rule):
the rows it writes, when it takes snapshots, what a break leaves, and that books off costs
nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from crypto_sentinel.books.events import BookEvent, Verdict
from crypto_sentinel.books.orderbook import OrderBook
from crypto_sentinel.books.processor import BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.config import load_settings
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake.writer import LakeWriter
from crypto_sentinel.model import RawFrame
from crypto_sentinel.runtime import Pipeline
from crypto_sentinel.sources.codec import FrameError
from crypto_sentinel.sources.venues import BookCodec

T0 = 1_700_000_000_000  # ms


def _is_book(text: str) -> bool:
    return text.startswith('{"book"')


def _decode(frame: RawFrame) -> list[BookEvent]:
    try:
        msg = json.loads(frame.text)
        levels = {side: [(Decimal(p), Decimal(s)) for p, s in msg[side]] for side in "ba"}
        when = None if msg.get("t") is None else datetime.fromtimestamp(msg["t"] / 1000, UTC)
        return [
            BookEvent(
                frame.exchange, msg["book"], msg["kind"], levels["b"], levels["a"],
                msg["u"], msg.get("U"), None, when, frame.conn_id,
            )
        ]  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise FrameError(f"bad fake book frame: {exc}") from None


class _Sync:
    """Snapshot loads; an update applies when U follows the last u, else the book breaks."""

    def __init__(self) -> None:
        self.last: int | None = None

    def accept(self, event: BookEvent, book: OrderBook) -> Verdict:
        if event.kind == "snapshot":
            book.load_snapshot(event.bids, event.asks, event.update_id, event.time)
            self.last = event.update_id
            return Verdict(True)
        if not book.valid or self.last is None or event.update_id is None:
            return Verdict(False)
        if event.first_update_id != self.last + 1:
            book.mark_invalid("sequence break")
            return Verdict(False, "sequence break")
        for p, s in event.bids:
            book.apply("bid", p, s)
        for p, s in event.asks:
            book.apply("ask", p, s)
        book.update_id, book.time = event.update_id, event.time
        self.last = event.update_id
        return Verdict(True)


CODEC = BookCodec("fake", _is_book, _decode, _Sync)


def frame(seq: int, **msg: Any) -> RawFrame:
    text = json.dumps({"book": "BTC-USD", **msg})
    return RawFrame("fake", "c1", seq, (T0 + seq) * 1_000_000, text)


def snapshot(seq: int, u: int, bids: list[list[str]], asks: list[list[str]]) -> RawFrame:
    return frame(seq, kind="snapshot", u=u, b=bids, a=asks)


def update(seq: int, first: int, u: int, t: int, bids: Any = (), asks: Any = ()) -> RawFrame:
    return frame(seq, kind="update", U=first, u=u, t=T0 + t, b=list(bids), a=list(asks))


def processor(registry: BookRegistry | None = None, **settings: Any) -> BookProcessor:
    chosen = BookSettings(**{"snapshot_levels": 1, **settings})
    return BookProcessor(registry or BookRegistry(), chosen, lambda exchange: CODEC)


BIDS = [["100", "1"], ["99", "2"]]
ASKS = [["101", "1.5"], ["102", "3"]]


def test_rows_hold_every_level_change_in_the_engines_order() -> None:
    registry = BookRegistry()
    heard: list[int] = []
    registry.subscribe(lambda book: heard.append(book.version))
    books = processor(registry)
    out = books.process(
        [
            snapshot(1, 10, BIDS, ASKS),
            update(3, 11, 11, 5, bids=[["100", "0"], ["100.5", "0.25"]], asks=[["101", "2"]]),
            RawFrame("fake", "c1", 4, T0 * 1_000_000, '{"type":"trade"}'),  # not a book frame
        ]
    )
    assert out.rejected == []
    assert out.updates is not None
    rows = out.updates.to_pylist()
    got = [(r["side"], r["price"], r["size"], r["snapshot"], r["recv_seq"], r["position"])
           for r in rows]  # fmt: skip
    assert got == [
        ("bid", Decimal("100"), Decimal("1"), True, 1, 0),
        ("bid", Decimal("99"), Decimal("2"), True, 1, 1),
        ("ask", Decimal("101"), Decimal("1.5"), True, 1, 2),
        ("ask", Decimal("102"), Decimal("3"), True, 1, 3),
        ("bid", Decimal("100"), Decimal("0"), False, 3, 0),
        ("bid", Decimal("100.5"), Decimal("0.25"), False, 3, 1),
        ("ask", Decimal("101"), Decimal("2"), False, 3, 2),
    ]
    assert rows[4]["update_id"] == 11 and rows[4]["first_update_id"] == 11
    assert rows[0]["update_id"] == 10 and rows[0]["time"] is None
    assert rows[4]["time"] == datetime.fromtimestamp((T0 + 5) / 1000, UTC)
    book = registry.get("fake", "BTC-USD")
    assert book is not None and book.valid
    assert book.top() == (
        [(Decimal("100.5"), Decimal("0.25")), (Decimal("99"), Decimal("2"))],
        [(Decimal("101"), Decimal("2")), (Decimal("102"), Decimal("3"))],
    )
    assert len(heard) == 1  # once per chunk per changed book


def test_bad_book_frames_are_quarantined_with_the_reason() -> None:
    bad = RawFrame("fake", "c1", 7, T0 * 1_000_000, '{"book":"BTC-USD","kind":"update"}')
    out = processor().process([bad, snapshot(8, 10, BIDS, ASKS)])
    assert [i for i, _ in out.rejected] == [0]
    assert "bad fake book frame" in out.rejected[0][1]
    assert out.updates is not None and set(out.updates["recv_seq"].to_pylist()) == {8}


def test_snapshots_resync_then_interval_then_checkpoint() -> None:
    books = processor(snapshot_seconds=1.0, checkpoint_seconds=10.0)
    frames = [snapshot(1, 10, BIDS, ASKS)]
    frames += [update(2 + i, 11 + i, 11 + i, 400 * (i + 1), bids=[["98", str(i + 1)]])
               for i in range(30)]  # fmt: skip
    out = books.process(frames)
    assert out.snapshots is not None
    snaps = out.snapshots.to_pylist()
    reasons = [(s["reason"], s["depth"]) for s in snaps]
    assert reasons[0] == ("resync", None)
    # book times: the snapshot at its receive time T0+1 ms, updates every 400 ms after T0
    assert [r for r, _ in reasons].count("checkpoint") == 1  # entering the 10 s bucket
    intervals = [s for s in snaps if s["reason"] == "interval"]
    assert len(intervals) == 11  # seconds 1..12 entered, minus the one the checkpoint took
    assert all(s["depth"] == 1 and len(s["bids"]) == 1 and len(s["asks"]) == 1 for s in intervals)
    full = snaps[0]
    assert len(full["bids"]) == 2 and full["valid"] and full["update_id"] == 10
    assert full["bids"][0] == {"price": Decimal("100"), "size": Decimal("1")}
    assert full["position"] == 4  # after the snapshot's four levels


def test_a_break_leaves_a_gap_row_and_an_invalid_snapshot() -> None:
    books = processor()
    out = books.process(
        [
            snapshot(1, 10, BIDS, ASKS),
            update(2, 11, 12, 10, bids=[["99", "5"]]),
            update(3, 20, 21, 20, bids=[["99", "6"]]),  # 13..19 missing
            update(4, 22, 22, 30, bids=[["99", "7"]]),  # dropped: the book is invalid
        ]
    )
    assert len(out.gaps) == 1
    gap = out.gaps[0]
    assert (gap.kind, gap.reason, gap.first_missing_id, gap.last_missing_id, gap.missing) == (
        "book", "sequence break", 13, 19, 7,
    )  # fmt: skip
    assert out.dropped == 1
    assert out.snapshots is not None
    resync = [s for s in out.snapshots.to_pylist() if s["recv_seq"] == 3]
    assert len(resync) == 1
    assert resync[0]["reason"] == "resync" and not resync[0]["valid"]
    assert resync[0]["invalid_reason"] == "sequence break"
    assert out.updates is not None and out.updates.num_rows == 5  # 4 snapshot levels + 1


def test_books_off_means_no_book_work(tmp_path: Path) -> None:
    engine = Engine(LakeWriter(tmp_path / "lake", "test"), 1.0, 1000)
    assert engine.books is None
    engine.process_frames([snapshot(1, 10, BIDS, ASKS), update(2, 11, 11, 5)])
    batch = engine.cut()
    assert batch is not None
    assert batch.book_update_tables == [] and batch.book_snapshot_tables == []
    assert engine.stats.book_changes == 0


def test_pipeline_keeps_books_only_when_on(tmp_path: Path) -> None:
    registry = BookRegistry()
    on = Pipeline(load_settings(lake_dir=tmp_path / "on", books=True), ingest=False,
                  books=registry)  # fmt: skip
    off = Pipeline(load_settings(lake_dir=tmp_path / "off"), ingest=False, books=registry)
    try:
        assert on.books is registry and on.engine.books is not None
        assert on.engine.books.registry is registry
        assert off.books is None and off.engine.books is None
    finally:
        for pipeline in (on, off):
            pipeline.engine.close()
            pipeline.lock.release()


def test_books_on_in_the_engine_adds_rows_and_quarantines_once(tmp_path: Path) -> None:
    books = processor()
    engine = Engine(LakeWriter(tmp_path / "lake", "test"), 1.0, 1000, books=books)
    bad = RawFrame("fake", "c1", 3, T0 * 1_000_000, '{"book":"BTC-USD"}')
    engine.process_frames([snapshot(1, 10, BIDS, ASKS), update(2, 11, 11, 5), bad])
    batch = engine.cut()
    assert batch is not None
    assert sum(t.num_rows for t in batch.book_update_tables) == 4
    assert sum(t.num_rows for t in batch.book_snapshot_tables) == 1
    # "fake" has no trade codec: that quarantine names the exchange, the book one is skipped
    assert [r.frame.recv_seq for r in batch.rejected] == [1, 2, 3]


def _advanced(seq: int, channel: str, events: str) -> RawFrame:
    text = (f'{{"channel":"{channel}","client_id":"","timestamp":"2026-01-01T00:00:0{seq}Z",'
            f'"sequence_num":{seq},"events":{events}}}')  # fmt: skip
    return RawFrame("coinbase-advanced", "a1", seq, 1_767_225_600 * 10**9 + seq, text)


def _l2(seq: int, kind: str, side: str, price: str, size: str) -> RawFrame:
    update = f'{{"side":"{side}","price_level":"{price}","new_quantity":"{size}"}}'
    return _advanced(seq, "l2_data", f'[{{"type":"{kind}","product_id":"BTC-USD",'
                                      f'"updates":[{update}]}}]')  # fmt: skip


def test_advanced_books_count_the_other_channels_messages() -> None:
    """Coinbase Advanced numbers every message of a connection: a trade between two book
    messages is not a loss (the processor notes it), a number that never came is."""
    trade = _advanced(2, "market_trades", '[{"type":"update","trades":[]}]')
    books = BookRegistry()
    real = BookProcessor(books, BookSettings())  # the venue's own codec and sync rule
    real.process([_l2(1, "snapshot", "bid", "100", "1"), trade,
                  _l2(3, "update", "bid", "100", "2")])  # fmt: skip
    book = books.get("coinbase-advanced", "BTC-USD")
    assert book is not None and book.valid and book.bids == {Decimal(100): Decimal(2)}
    out = real.process([_l2(5, "update", "offer", "101", "1")])  # 4 never came
    assert not book.valid and book.invalid_reason == "sequence break"
    assert [g.reason for g in out.gaps] == ["sequence break"]
