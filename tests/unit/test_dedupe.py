from __future__ import annotations

import random

from crypto_sentinel.engine.dedupe import IdRanges


def test_add_reports_duplicates_exactly() -> None:
    ids = IdRanges()
    rng = random.Random(3)
    values = [rng.randrange(1, 500) for _ in range(3000)]
    seen: set[int] = set()
    for v in values:
        assert ids.add(v) == (v not in seen)
        seen.add(v)
    assert len(ids) == len(seen)
    assert all((v in ids) == (v in seen) for v in range(0, 502))


def test_contiguous_ids_stay_one_range() -> None:
    ids = IdRanges()
    for v in range(1000, 101_000):
        ids.add(v)
    assert ids.ranges == [(1000, 100_999)]


def test_add_range_counts_new_ids_and_fills_gaps() -> None:
    ids = IdRanges()
    assert ids.add_range(10, 20) == 11
    assert ids.add_range(30, 40) == 11
    assert ids.add_range(15, 35) == 9  # 21..29
    assert ids.ranges == [(10, 40)]
    assert ids.add_range(1, 5) == 5
    assert ids.ranges == [(1, 5), (10, 40)]
    assert ids.max == 40
