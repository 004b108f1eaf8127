"""Receive times of a batch whose first frames were turned into bronze rows and whose last
ones are still frames: the tables came first, and times are read to the microsecond."""

from __future__ import annotations

from crypto_sentinel.engine.processor import _first_receipt, _receipts
from crypto_sentinel.lake.rows import bronze_table
from crypto_sentinel.lake.writer import Batch
from crypto_sentinel.model import RawFrame

START_NS = 1_764_800_000_000_000_000


def frame(seq: int) -> RawFrame:
    return RawFrame("coinbase", "c", seq, START_NS + seq * 1_000_000 + 7, "{}")


def test_the_tables_hold_the_first_receipts() -> None:
    frames = [frame(n) for n in range(5)]
    batch = Batch(version=1, frames=frames[3:], bronze_tables=[bronze_table(frames[:3])])
    as_stored = [f.recv_ns // 1000 * 1000 for f in frames[:3]] + [f.recv_ns for f in frames[3:]]
    assert list(_receipts(batch)) == as_stored
    assert _first_receipt(batch) == as_stored[0]


def test_a_batch_of_frames_or_of_nothing() -> None:
    frames = [frame(n) for n in range(2)]
    assert _first_receipt(Batch(version=1, frames=frames)) == frames[0].recv_ns
    assert list(_receipts(Batch(version=1, frames=frames))) == [f.recv_ns for f in frames]
    assert _first_receipt(Batch(version=1)) is None
