"""The Spark driver's book restart (`SparkBooks.restored`) over a real Delta lake, without a
JVM: the recorded Binance `depthUpdate` and Coinbase `l2update` frames are cut at many
places; the rows of the frames before the cut are stored as the embedded engine's writer
stores them, and a fresh driver continues from the lake. The rows it makes after the cut
equal those of one processor that never stopped, also when the lake already holds part of
the batch being run again (a kill between the book tables' commits). A restored Kraken book
breaks visibly at its next checksum (a known limit, shared with the engine's restart)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from crypto_sentinel.books.processor import BookOutput, BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.lake.location import LakeRoot
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.venues import book_codec_for
from crypto_sentinel.spark.books import SparkBooks, first_frames, raw_frames
from tests.conftest import SHARED
from tests.integration.test_spark_books import _recorded
from tests.unit.test_book_recordings import v2_frame

pytestmark = pytest.mark.integration
RECORDED = SHARED / "data"
SETTINGS = BookSettings(depth=1000, snapshot_seconds=0.5, snapshot_levels=5, checkpoint_seconds=60)


def _frames() -> list[RawFrame]:
    """Both recordings, each on its connection, interleaved as two partitions might be."""
    start = time.time_ns()
    streams = [
        [
            RawFrame(ex, f"rec-{ex}", seq, start + seq * 1_000_000 + i, text)
            for seq, text in enumerate(_recorded(ex), 1)
        ]
        for i, ex in enumerate(("binance", "coinbase"))
    ]
    merged = [f for pair in zip(*streams, strict=False) for f in pair]
    return merged + [f for s in streams for f in s[len(merged) // 2 :]]


def _store(lake: LakeRoot, version: int, out: BookOutput, snapshots: bool = True) -> None:
    writer = LakeWriter(lake, "engine")
    batch = Batch(version=version, gaps=list(out.gaps))
    if out.updates is not None:
        batch.book_update_tables.append(out.updates)
    if out.snapshots is not None and snapshots:
        batch.book_snapshot_tables.append(out.snapshots)
    writer.commit(batch)


def _same(a: pa.Table | None, b: pa.Table | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.num_rows > 0
        assert a.to_pylist() == b.to_pylist()


#: Not 1: a lake whose only book row of an exchange is an empty snapshot (no level rows) is
#: taken for one whose updates retention removed (`BookHistory._expired`), as by the engine.
@pytest.mark.parametrize("cut", [12, 37, 120, 333, 500])
def test_a_restarted_driver_continues_the_books_from_the_lake(tmp_path: Path, cut: int) -> None:
    frames = _frames()
    assert len(frames) > 600
    reference = BookProcessor(BookRegistry(), SETTINGS)
    before = reference.process(frames[:cut])
    after = reference.process(frames[cut:])
    lake = tmp_path / "lake"
    _store(lake, 1, before)
    books = SparkBooks(lake, "spark", SETTINGS)
    out = books.restored(frames[cut:]).process(frames[cut:])
    _same(out.updates, after.updates)
    _same(out.snapshots, after.snapshots)
    assert [g.reason for g in out.gaps] == [g.reason for g in after.gaps]


def test_a_batch_run_again_whose_updates_are_stored_continues_from_before_it(
    tmp_path: Path,
) -> None:
    frames = _frames()
    reference = BookProcessor(BookRegistry(), SETTINGS)
    first = reference.process(frames[:200])
    again = reference.process(frames[200:260])
    rest = reference.process(frames[260:])
    lake = tmp_path / "lake"
    _store(lake, 1, first)
    _store(lake, 2, again, snapshots=False)  # killed before the snapshots' commit
    books = SparkBooks(lake, "spark", SETTINGS)
    processor = books.restored(frames[200:260])
    _same(processor.process(frames[200:260]).snapshots, again.snapshots)
    _same(processor.process(frames[260:]).updates, rest.updates)


def test_first_frames_and_the_sinks_refusals() -> None:
    frames = _frames()[:6]
    table = pa.table(
        {
            "exchange": [f.exchange for f in frames],
            "conn_id": [f.conn_id for f in frames],
            "recv_seq": [f.recv_seq for f in frames],
            "recv_ns": [f.recv_ns for f in frames],
            "text": [f.text for f in frames],
            "partition": [0] * 6,
            "offset": list(range(6)),
            "reason": [None, "bad", None, None, None, None],
        }
    )
    got, refused = raw_frames(table)
    assert [(f.text, f.offset) for f in got] == [(f.text, i) for i, f in enumerate(frames)]
    assert refused == {1}
    first = first_frames(frames)
    for frame in frames:  # each product's first frame, in the engine's order of frames
        codec = book_codec_for(frame.exchange)
        assert codec is not None
        key = (frame.recv_ns // 1000, frame.conn_id, frame.recv_seq)
        for event in codec.decode(frame):
            assert first[(event.exchange, event.product_id)] <= key
    assert (frames[0].recv_ns // 1000, "rec-binance", 1) in first.values()


def test_a_kraken_book_continued_from_the_lake_breaks_visibly_at_its_next_checksum(
    tmp_path: Path,
) -> None:
    """A known limit, shared with the embedded engine's restart: the lake keeps levels as
    decimal(28,12), Kraken's checksum is over the venue's text (trailing zeros count), so a
    restored Kraken book fails its next checksum. It must break (a gap row, not valid), never
    go on silently with levels it cannot verify."""
    start = time.time_ns()
    texts = (RECORDED / "kraken_v1" / "v1_book.ndjson").read_text().splitlines()[:400]
    frames = [
        RawFrame("kraken", "rec-kraken", seq, start + seq * 1_000_000, v2_frame(text))
        for seq, text in enumerate(texts, 1)
    ]
    reference = BookProcessor(BookRegistry(), SETTINGS)
    before = reference.process(frames[:200])
    after = reference.process(frames[200:])
    assert not before.gaps and not after.gaps  # every recorded checksum verifies
    lake = tmp_path / "lake"
    _store(lake, 1, before)
    processor = SparkBooks(lake, "spark", SETTINGS).restored(frames[200:])
    out = processor.process(frames[200:])
    broken = {g.product_id for g in out.gaps}
    assert broken and {g.reason for g in out.gaps} == {"checksum mismatch"}
    for product in broken:
        book = processor.registry.get("kraken", product)
        assert book is not None and not book.valid
