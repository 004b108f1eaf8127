"""Exact duplicate detection for ids that are contiguous per product (exchange trade ids).

Stores committed ids as sorted, disjoint, inclusive ranges, so a day of contiguous trades
costs one range, not one set entry per trade.
"""

from __future__ import annotations

import bisect


class IdRanges:
    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __len__(self) -> int:
        return sum(e - s + 1 for s, e in zip(self._starts, self._ends, strict=True))

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self._ends[i]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def max(self) -> int | None:
        return self._ends[-1] if self._ends else None

    def add(self, value: int) -> bool:
        """Insert `value`; False if it was already present."""
        return self.add_range(value, value) > 0

    def add_range(self, lo: int, hi: int) -> int:
        """Insert [lo, hi]; returns how many ids were new."""
        starts, ends = self._starts, self._ends
        if ends and lo == ends[-1] + 1:  # the common case: the next id in order
            ends[-1] = hi
            return hi - lo + 1
        if ends and lo > ends[-1] + 1:
            starts.append(lo)
            ends.append(hi)
            return hi - lo + 1
        i = bisect.bisect_left(ends, lo - 1)  # first range that could touch [lo, hi]
        j = i
        covered = 0
        new_lo, new_hi = lo, hi
        while j < len(starts) and starts[j] <= hi + 1:
            covered += max(0, min(ends[j], hi) - max(starts[j], lo) + 1)
            new_lo = min(new_lo, starts[j])
            new_hi = max(new_hi, ends[j])
            j += 1
        starts[i:j] = [new_lo]
        ends[i:j] = [new_hi]
        return (hi - lo + 1) - covered
