"""Binance book frames (depth updates and our `depthSnapshot` frame) through the real engine
into a real Delta lake: silver.book_updates holds every level change the venue's rule
applies, exactly; snapshots come at the interval and after every (re)sync; `book_at` equals
the live book at 100 random moments; a sequence break leaves a gaps row; `sentinel rebuild`
gives the same book tables; a kill between bronze and derived commits is derived again.

The reference is independent of the engine: the generator keeps the venue's true book and
knows, by construction, which updates Binance's documented rule applies."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from crypto_sentinel.books.history import BookHistory, book_at
from crypto_sentinel.books.orderbook import BookView
from crypto_sentinel.books.processor import BookProcessor, BookSettings, datetime_of
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.cli import main as cli_main
from crypto_sentinel.config import load_settings
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import CRASH_AT_ENV, LakeWriter
from crypto_sentinel.model import RawFrame
from crypto_sentinel.runtime import Pipeline
from tests.conftest import free_port, read_table
from tests.unit.test_book_recordings import DATA, v2_frame

EXCHANGE, SYMBOL, PRODUCT = "binance", "BTCUSDT", "BTC-USDT"
SETTINGS = BookSettings(depth=1000, snapshot_seconds=0.5, snapshot_levels=5, checkpoint_seconds=5)
ENV = {
    "SENTINEL_BOOK_SNAPSHOT_SECONDS": "0.5",
    "SENTINEL_BOOK_SNAPSHOT_LEVELS": "5",
    "SENTINEL_BOOK_CHECKPOINT_SECONDS": "5",
}
E0 = 1_764_000_000_000  # ms
CHUNK, BATCH = 3, 30  # frames per engine chunk, per committed batch
BAD = '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","s":"BTCUSDT","U":"x"}}'

Row = tuple[str, Decimal, Decimal, int, bool]  # side, price, size, update_id, snapshot


@dataclasses.dataclass
class Stream:
    frames: list[RawFrame]
    expected: list[Row]  # every level change the rule applies, in order
    breaks: list[tuple[int, int]]  # (first, last) missing update id of each break


class Venue:
    """The exchange's true book and its depth events (never crossed: bids < 100 < asks)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.next_id = 1000
        self.ms = E0

    def event(self) -> dict[str, Any]:
        rng = self.rng
        first = self.next_id
        last = first + rng.randint(0, 2)
        self.next_id = last + 1
        self.ms += 100
        sides: dict[str, list[list[str]]] = {"b": [], "a": []}
        for _ in range(rng.randint(1, 6)):
            side = rng.choice("ba")
            cents = rng.randint(9000, 9990) if side == "b" else rng.randint(10010, 11000)
            price = f"{cents / 100:.2f}"
            size = "0" if rng.random() < 0.3 else f"{rng.randint(1, 5000) / 1000:.3f}"
            sides[side].append([price, size])
            book = self.bids if side == "b" else self.asks
            if Decimal(size) == 0:
                book.pop(Decimal(price), None)
            else:
                book[Decimal(price)] = Decimal(size)
        return {"e": "depthUpdate", "E": self.ms, "s": SYMBOL, "U": first, "u": last,
                "b": sides["b"], "a": sides["a"]}  # fmt: skip

    def snapshot(self, last_id: int) -> dict[str, Any]:
        bids = [[str(p), str(s)] for p, s in sorted(self.bids.items(), reverse=True)]
        asks = [[str(p), str(s)] for p, s in sorted(self.asks.items())]
        return {"e": "depthSnapshot", "s": SYMBOL, "lastUpdateId": last_id, "bids": bids,
                "asks": asks}  # fmt: skip


def levels(msg: dict[str, Any], snapshot: bool) -> list[Row]:
    b, a, uid = ("bids", "asks", msg["lastUpdateId"]) if snapshot else ("b", "a", msg["u"])
    return [("bid", Decimal(p), Decimal(s), uid, snapshot) for p, s in msg[b]] + [
        ("ask", Decimal(p), Decimal(s), uid, snapshot) for p, s in msg[a]
    ]


def generate(seed: int = 11, steady: int = 250, reconnect: bool = True) -> Stream:
    """A first sync (updates buffered, the old ones dropped, the newer replayed), a
    sequence break and its resync, a reconnect and its resync, steady updates between."""
    venue = Venue(seed)
    frames: list[RawFrame] = []
    expected: list[Row] = []
    breaks = []
    seqs: dict[str, int] = {}
    conn = "c1"

    def emit(data: dict[str, Any], recv_ms: int, text: str = "") -> None:
        stream = "btcusdt@depthSnapshot" if data["e"] == "depthSnapshot" else "btcusdt@depth@100ms"
        text = text or json.dumps({"stream": stream, "data": data}, separators=(",", ":"))
        seqs[conn] = seqs.get(conn, 0) + 1
        frames.append(RawFrame(EXCHANGE, conn, seqs[conn], recv_ms * 1_000_000, text))

    def buffered_then_snapshot(count: int, snap_after: int) -> None:
        """`count` updates arrive first; the snapshot is the true book after update
        `snap_after`: those before it are dropped, the later ones replay behind it."""
        waiting = []
        for i in range(count):
            event = venue.event()
            waiting.append(event)
            emit(event, event["E"] + 5)
            if i == snap_after:
                snap = venue.snapshot(event["u"])
        emit(snap, waiting[-1]["E"] + 50)
        expected.extend(levels(snap, True))
        for event in waiting[snap_after + 1 :]:
            expected.extend(levels(event, False))

    def steady_run(count: int) -> None:
        for n in range(count):
            event = venue.event()
            emit(event, event["E"] + 5)
            expected.extend(levels(event, False))
            if n == count // 2:
                emit({"e": "bad"}, event["E"] + 7, BAD)

    buffered_then_snapshot(4, 1)
    steady_run(steady)
    missed = venue.event()  # never arrives: the next update breaks the sequence
    breaks.append((missed["U"], missed["u"]))
    buffered_then_snapshot(4, 1)
    steady_run(steady // 2)
    if reconnect:
        conn = "c2"  # the new connection's first update breaks the old book
        buffered_then_snapshot(5, 2)
        steady_run(steady // 2)
    return Stream(frames, expected, breaks)


@dataclasses.dataclass
class Built:
    lake: Path
    stream: Stream
    seen: list[tuple[Any, BookView]]  # (book time, live view) after each chunk


def build(
    lake: Path,
    stream: Stream,
    frames: list[RawFrame] | None = None,
    settings: BookSettings = SETTINGS,
) -> Built:
    """Frames through the engine, a chunk at a time, a commit every BATCH frames."""
    registry = BookRegistry()
    books = BookProcessor(registry, settings)
    seen: list[tuple[Any, BookView]] = []
    registry.subscribe(
        lambda book: seen.append((books.moment(book.exchange, book.product_id), book.view()))
    )
    writer = LakeWriter(lake, "books-test")
    engine = Engine(writer, 1.0, 1_000_000, books=books)
    engine.load_state(LakeReader(lake))
    todo = stream.frames if frames is None else frames
    try:
        for start in range(0, len(todo), BATCH):
            part = todo[start : start + BATCH]
            for at in range(0, len(part), CHUNK):
                engine.process_frames(part[at : at + CHUNK])
            batch = engine.cut()
            assert batch is not None
            engine.committed(batch, writer.commit(batch))
    finally:
        engine.close()
    return Built(lake, stream, seen)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("books") / "lake", generate())


def ordered(table: Any) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: (r["recv_time"], r["conn_id"], r["recv_seq"], r["position"]))


def test_book_updates_hold_every_level_change_exactly(built: Built) -> None:
    rows = ordered(read_table(built.lake, T.BOOK_UPDATES))
    got = [(r["side"], r["price"], r["size"], r["update_id"], r["snapshot"]) for r in rows]
    assert len(got) > 1000
    assert got == built.stream.expected
    assert {r["product_id"] for r in rows} == {PRODUCT}
    quarantined = read_table(built.lake, T.QUARANTINE).to_pylist()
    assert [q["frame"] for q in quarantined] == [BAD] * 3  # one row per bad frame


def test_snapshots_at_the_interval_and_after_each_sync(built: Built) -> None:
    snaps = ordered(read_table(built.lake, T.BOOK_SNAPSHOTS))
    reasons = [s["reason"] for s in snaps]
    resyncs = [s for s in snaps if s["reason"] == "resync"]
    # sync, break, resync, reconnect, resync
    assert [s["valid"] for s in resyncs] == [True, False, True, False, True]
    assert [s["invalid_reason"] for s in resyncs[1::2]] == ["sequence break", "reconnect"]
    assert all(s["depth"] is None for s in resyncs)
    # every half second of book time entered has a snapshot (top 5, or a full checkpoint)
    times = [s["time"] for s in snaps]
    halves = {(t.timestamp() * 1000) // 500 for t in times}
    first, last = min(halves), max(halves)
    covered = set(range(int(first), int(last) + 1))
    updates = read_table(built.lake, T.BOOK_UPDATES)["book_time"].to_pylist()
    entered = {(t.timestamp() * 1000) // 500 for t in updates}
    assert entered <= halves and len(covered) > 50
    assert reasons.count("checkpoint") >= 10  # 5 s of 50 s
    intervals = [s for s in snaps if s["reason"] == "interval"]
    assert intervals and all(len(s["bids"]) <= 5 and s["depth"] == 5 for s in intervals)
    assert all(s["max_depth"] == 1000 for s in snaps)


def test_book_at_equals_the_live_book_at_100_random_moments(built: Built) -> None:
    seen = [(t, v) for t, v in built.seen if t is not None and v.product_id == PRODUCT]
    assert len(seen) > 150
    for when, view in random.Random(5).sample(seen, 100):
        assert book_at(built.lake, EXCHANGE, PRODUCT, when, None) == view, when
        top = dataclasses.replace(view, bids=view.bids[:3], asks=view.asks[:3])
        assert book_at(built.lake, EXCHANGE, PRODUCT, when, 3) == top
    first = seen[0][0]
    assert book_at(built.lake, EXCHANGE, PRODUCT, first.replace(year=2020), None) is None


def test_a_sequence_break_leaves_a_gaps_row(built: Built) -> None:
    gaps = [g for g in read_table(built.lake, T.GAPS).to_pylist() if g["kind"] == "book"]
    gaps.sort(key=lambda g: g["detected_at"])
    assert [(g["exchange"], g["product_id"], g["reason"]) for g in gaps] == [
        (EXCHANGE, PRODUCT, "sequence break"),
        (EXCHANGE, PRODUCT, "reconnect"),
    ]
    (first, last) = built.stream.breaks[0]
    assert (gaps[0]["first_missing_id"], gaps[0]["last_missing_id"]) == (first, last)
    assert gaps[0]["missing"] == last - first + 1
    assert gaps[1]["missing"] == 0 and gaps[1]["conn_id"] == "c2"  # no update id skipped


def book_tables(lake: Path) -> dict[str, list[dict[str, Any]]]:
    specs = (T.BOOK_UPDATES, T.BOOK_SNAPSHOTS)
    return {spec.name: ordered(read_table(lake, spec)) for spec in specs}


def test_sentinel_rebuild_reproduces_the_book_tables(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = build(tmp_path / "lake", built.stream).lake
    before = book_tables(lake)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert cli_main(["rebuild", "--lake", str(lake), "--quiet"]) == 0
    after = book_tables(lake)
    assert after == before
    assert len(after[T.BOOK_UPDATES.name]) == len(built.stream.expected)


KILLED = """
import json, sys
from pathlib import Path
from crypto_sentinel.model import RawFrame
from tests.integration.test_books_lake import build, Stream
frames = [RawFrame(*f) for f in json.loads(Path(sys.argv[2]).read_text())]
build(Path(sys.argv[1]), Stream(frames, [], []))
"""


@pytest.mark.parametrize("point", [T.BRONZE.name, T.BOOK_UPDATES.name, T.BOOK_SNAPSHOTS.name])
def test_a_kill_between_commits_is_derived_again(built: Built, tmp_path: Path, point: str) -> None:
    lake = tmp_path / "lake"
    frames_file = tmp_path / "frames.json"
    frames = built.stream.frames
    frames_file.write_text(
        json.dumps([[f.exchange, f.conn_id, f.recv_seq, f.recv_ns, f.text] for f in frames])
    )
    env = {**os.environ, CRASH_AT_ENV: f"{point}:3"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", KILLED, str(lake), str(frames_file)],
        env=env, cwd=root, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 70, done.stderr[-2000:]
    bronze = read_table(lake, T.BRONZE)
    held = set(zip(bronze["conn_id"].to_pylist(), bronze["recv_seq"].to_pylist(), strict=True))
    assert 0 < len(held) < len(frames)
    rest = [f for f in frames if (f.conn_id, f.recv_seq) not in held]
    build(lake, built.stream, rest)  # start (derive again), then the frames bronze lacks
    assert book_tables(lake) == book_tables(built.lake)
    history = BookHistory(lake)
    restored = history.book_before(EXCHANGE, PRODUCT, None)
    assert restored is not None
    book, moment, _ = restored
    assert book.view() == built.seen[-1][1]
    assert datetime_of(moment) == built.seen[-1][0]


@pytest.mark.parametrize("depth", [1000, 100])
def test_kraken_recording_book_at_equals_the_live_books(tmp_path: Path, depth: int) -> None:
    """The real Kraken book recording (v1 frames as v2; subscribed 1,000 deep, every checksum
    verified). Kept 1,000 deep every message applies; kept 100 deep, levels fall off without a
    delete row: `book_at` must truncate as the engine did."""
    texts = (DATA / "kraken_v1" / "v1_book.ndjson").read_text().splitlines()
    frames = [
        RawFrame("kraken", "k1", i + 1, (E0 + 10 * i) * 1_000_000, v2_frame(text))
        for i, text in enumerate(texts)
    ]
    settings = dataclasses.replace(SETTINGS, depth=depth)
    built = build(tmp_path / "lake", Stream(frames, [], []), settings=settings)
    gaps = [g for g in read_table(built.lake, T.GAPS).to_pylist() if g["kind"] == "book"]
    seen = [(t, v) for t, v in built.seen if t is not None]
    assert len(seen) > 500
    if depth == 1000:
        levels = [json.loads(f.text)["data"][0] for f in frames]  # every message applies
        assert len(read_table(built.lake, T.BOOK_UPDATES)) == sum(
            len(m["bids"]) + len(m["asks"]) for m in levels
        )
        assert not gaps and all(v.valid for _, v in seen)
    else:  # snapshots 150 to 850 levels a side deep: truncated at every message
        assert max(len(v.bids) for _, v in seen) == depth == max(len(v.asks) for _, v in seen)
        assert all(g["reason"] == "checksum mismatch" for g in gaps)
    for when, view in random.Random(8).sample(seen, 100):
        assert book_at(built.lake, "kraken", view.product_id, when, None) == view


def test_book_at_says_none_once_retention_removed_the_updates(built: Built, tmp_path: Path) -> None:
    """Gold outlives silver by default: a snapshot whose updates are gone cannot give an
    exact book, so `book_at` answers None rather than a stale one."""
    lake = tmp_path / "lake"
    shutil.copytree(built.lake, lake)
    when, view = built.seen[-1]
    assert book_at(lake, EXCHANGE, PRODUCT, when, None) == view
    DeltaTable(str(T.BOOK_UPDATES.path(lake))).delete()  # what retention does to old dates
    assert BookHistory(lake).book_at(EXCHANGE, PRODUCT, when) is None


async def test_sentinel_replay_with_books_on_stores_the_books(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime's wiring: a Binance recording replayed by a pipeline with books on (one
    connection, so no reconnect) stores exactly the level changes, and the pipeline's
    registry holds the book `book_at` gives for its last change."""
    stream = generate(steady=120, reconnect=False)
    path = tmp_path / "depth.ndjson"
    path.write_text("".join(f.text + "\n" for f in stream.frames))
    lake = tmp_path / "lake"
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(
        source=f"replay:{path}", replay_exchange=EXCHANGE, lake_dir=lake, port=free_port(),
        batch_interval_ms=50, books=True,
    )  # fmt: skip
    registry = BookRegistry()
    await Pipeline(settings, books=registry).run(with_api=False, install_signals=False)
    rows = ordered(read_table(lake, T.BOOK_UPDATES))
    got = [(r["side"], r["price"], r["size"], r["update_id"], r["snapshot"]) for r in rows]
    assert got == stream.expected
    live = registry.get(EXCHANGE, PRODUCT)
    assert live is not None and live.valid
    last = max(r["book_time"] for r in rows)
    assert book_at(lake, EXCHANGE, PRODUCT, last, None) == live.view()
