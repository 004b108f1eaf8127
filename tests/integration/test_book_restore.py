"""The Spark driver's book restart (`SparkBooks.restored`) over a real Delta lake, without a
JVM: the recorded Binance `depthUpdate` and Coinbase `l2update` frames are cut at many
places; the rows of the frames before the cut are stored as the embedded engine's writer
stores them, and a fresh driver continues from the lake. The rows it makes after the cut
equal those of one processor that never stopped, also when the lake already holds part of
the batch being run again (a kill between the book tables' commits). A restored Kraken book
verifies the next checksums although the lake keeps its levels at its own scale, not in
Kraken's text (the real Kraken recording, cut at many places)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from crypto_sentinel.books.processor import BookOutput, BookProcessor, BookSettings
from crypto_sentinel.books.registry import BookRegistry
from crypto_sentinel.engine.processor import Engine
from crypto_sentinel.lake.location import LakeRoot
from crypto_sentinel.lake.writer import Batch, LakeWriter
from crypto_sentinel.model import RawFrame
from tests.conftest import SHARED
from tests.integration.test_spark_books import _recorded
from tests.unit.test_book_recordings import DATA, v2_frame

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


def _restored(lake: Path, in_doubt: list[RawFrame]) -> BookProcessor:
    """The books of a fresh engine over `lake` about to derive `in_doubt` again."""
    processor = BookProcessor(BookRegistry(), SETTINGS)
    engine = Engine(LakeWriter(lake, "engine"), 0.1, 10_000, books=processor)
    engine._restore_books(in_doubt)
    return processor


#: Not 1: a lake whose only book row of an exchange is an empty snapshot (no level rows) is
#: taken for one whose updates retention removed (`BookHistory._expired`), as by the engine.
@pytest.mark.parametrize("cut", [12, 37, 120, 333, 500])
def test_a_restarted_engine_continues_the_books_from_the_lake(tmp_path: Path, cut: int) -> None:
    frames = _frames()
    assert len(frames) > 600
    reference = BookProcessor(BookRegistry(), SETTINGS)
    before = reference.process(frames[:cut])
    after = reference.process(frames[cut:])
    lake = tmp_path / "lake"
    _store(lake, 1, before)
    out = _restored(lake, frames[cut:]).process(frames[cut:])
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
    processor = _restored(lake, frames[200:260])
    _same(processor.process(frames[200:260]).snapshots, again.snapshots)
    _same(processor.process(frames[260:]).updates, rest.updates)


def test_partitions_cut_at_different_times_each_continue_from_their_own_cut(
    tmp_path: Path,
) -> None:
    """Two partitions' batches end at different times: the lake holds Binance's frames up to
    a later moment than Coinbase's. Each product continues from before its own first frame
    to derive again, so Binance's stored rows after Coinbase's cut are not lost."""
    frames = _frames()
    binance = [f for f in frames if f.exchange == "binance"]
    coinbase = [f for f in frames if f.exchange == "coinbase"]
    stored = binance[:300] + coinbase[:60]  # Coinbase's partition committed less
    again = binance[300:] + coinbase[60:]
    assert min(f.recv_ns for f in coinbase[60:]) < max(f.recv_ns for f in binance[:300])
    reference = BookProcessor(BookRegistry(), SETTINGS)
    before = reference.process(stored)
    after = reference.process(again)
    lake = tmp_path / "lake"
    _store(lake, 1, before)
    out = _restored(lake, again).process(again)
    _same(out.updates, after.updates)
    _same(out.snapshots, after.snapshots)


@pytest.mark.parametrize("cut", [3, 40, 250, 900])
def test_a_restored_kraken_book_verifies_the_next_checksums(tmp_path: Path, cut: int) -> None:
    """Kraken's checksum is over its text (trailing zeros count) and the lake keeps decimals
    at its scale: a book continued from the lake must still verify every later message."""
    texts = (DATA / "kraken_v1" / "v1_book.ndjson").read_text().splitlines()
    start = time.time_ns()
    frames = [
        RawFrame("kraken", "k1", i + 1, start + i * 1_000_000, v2_frame(text))
        for i, text in enumerate(texts)
    ]
    assert len(frames) > cut + 500
    reference = BookProcessor(BookRegistry(), SETTINGS)
    before = reference.process(frames[:cut])
    after = reference.process(frames[cut:])
    assert not before.gaps and not after.gaps  # every recorded checksum verifies
    lake = tmp_path / "lake"
    _store(lake, 1, before)
    restored = _restored(lake, frames[cut:])
    out = restored.process(frames[cut:])
    assert [g.reason for g in out.gaps] == []
    # the same level rows; not the same moments: these frames carry no exchange time, so a
    # book's moment comes from when the lake last saw it
    assert out.updates is not None and after.updates is not None
    moments = ["book_time", "date"]
    assert out.updates.drop(moments).to_pylist() == after.updates.drop(moments).to_pylist()
    for key, kept in restored._products.items():
        assert kept.book.valid and kept.book.view() == reference._products[key].book.view()
