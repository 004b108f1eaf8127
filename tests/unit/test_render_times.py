"""API times: `iso` and `iso_ns` keep formatted seconds, so check them against the standard
library's own formatting over the whole range, in any order, across the cache's refill."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_sentinel.api import render
from crypto_sentinel.api.render import iso, iso_ns

#: Nanoseconds that `datetime.fromtimestamp` can turn into a time on this platform.
NS = st.integers(min_value=-(10**18), max_value=250_000_000_000 * 10**9)
TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
OFFSETS = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


def expected(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").rjust(27, "0")


@settings(max_examples=3000)
@given(TIMES, OFFSETS)
def test_iso_matches_strftime_in_utc(value: datetime, offset: timezone) -> None:
    assert iso(value) == expected(value)
    assert iso(value.astimezone(offset)) == expected(value)


@settings(max_examples=3000)
@given(NS)
def test_iso_ns_is_exact_to_the_microsecond(ns: int) -> None:
    whole = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    value = whole + timedelta(microseconds=ns // 1000 % 1_000_000)
    assert iso_ns(ns) == expected(value)


def test_times_stay_right_when_the_kept_seconds_are_refilled() -> None:
    start = 1_765_000_000 * 10**9 + 123_456_789
    seconds = [start + i * 10**9 for i in range(render._SECONDS_KEPT + 10)]
    first = [iso_ns(ns) for ns in seconds]
    assert len(render._SECONDS) <= render._SECONDS_KEPT
    assert [iso_ns(ns) for ns in seconds] == first
    assert first[0] == "2025-12-06T05:46:40.123456Z"
    assert first[-1] == iso(
        datetime.fromtimestamp(seconds[-1] // 10**9, UTC).replace(microsecond=123456)
    )
