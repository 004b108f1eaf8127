"""books/levels.py: amounts checked once per distinct text, exact, and bad text refused every
time it is seen (never cached)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from crypto_sentinel.books import levels as L
from crypto_sentinel.sources.codec import FrameError


def test_levels_keep_the_exact_text() -> None:
    got = L.levels([("2.27000000", "0.50"), ("2.27", "0")])
    assert got == [(Decimal("2.27000000"), Decimal("0.50")), (Decimal("2.27"), Decimal(0))]
    assert str(got[0][0]) == "2.27000000" and str(got[0][1]) == "0.50"  # Kraken's checksum text


def test_repeated_text_is_one_object() -> None:
    first = L.levels([("9001.5", "1.25")])[0]
    again = L.level("9001.5", "1.25")
    assert first[0] is again[0] and first[1] is again[1]


@pytest.mark.parametrize(
    ("price", "size", "reason"),
    [("0", "1", "price must be > 0"), ("-1", "1", "price must be > 0"),
     ("1e5", "1", "not a plain"), ("1", "-0.5", "not a plain"), ("٣", "1", "not a plain")],
)  # fmt: skip
def test_bad_amounts_are_refused_every_time(price: str, size: str, reason: str) -> None:
    for _ in range(2):  # the second time too: nothing bad is cached
        with pytest.raises(FrameError, match=reason):
            L.levels([("1.5", "1"), (price, size)])


def test_zero_is_a_size_but_not_a_price() -> None:
    assert L.size("0") == 0
    with pytest.raises(FrameError):
        L.price("0")


def test_the_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "CACHE_LIMIT", 10)
    for n in range(1, 50):
        assert L.price(f"{n}.5") == Decimal(f"{n}.5")
    assert len(L._prices) <= 10
