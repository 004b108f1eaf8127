"""Bronze rows: the compiled extension's columns (`native/src/bronze.rs`) equal the ones
`rows.python_bronze_table` builds, on real recordings and on generated frames."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_sentinel.extension import NATIVE
from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.rows import bronze_table, python_bronze_table
from crypto_sentinel.model import RawFrame
from tests.conftest import SHARED

RECORDINGS = sorted((SHARED / "data").glob("*/*.ndjson"))
NOW_NS = 1_733_000_000_123_456_789


def both(frames: list[RawFrame]) -> tuple[pa.Table, pa.Table]:
    if NATIVE is None:
        pytest.fail("the compiled extension is not installed: run `make install` with cargo")
    return bronze_table(frames), python_bronze_table(frames)


def test_the_recordings_are_there() -> None:
    assert len(RECORDINGS) >= 15, RECORDINGS


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recorded_frame_gives_the_same_row(path: Path) -> None:
    lines = path.read_text().splitlines()
    frames = [
        RawFrame(path.parent.name, f"conn-{i // 7}", i, NOW_NS + i * 1_000_003, line)
        for i, line in enumerate(lines)
    ]
    compiled, python = both(frames)
    assert compiled.schema == T.BRONZE.schema
    assert compiled.num_rows == len(lines)
    assert compiled.equals(python)


def test_times_and_days_at_their_edges() -> None:
    """Nanoseconds cut to microseconds towards zero (as Arrow divides), the day the UTC day of
    that microsecond, before 1970 as well."""
    day_ns = 86_400 * 10**9
    stamps = [0, 999, 1_000, day_ns - 1, day_ns, -1, -1_001, -day_ns - 1, 2**63 - 1, -(2**63)]
    frames = [RawFrame("coinbase", "c", i, ns, "{}") for i, ns in enumerate(stamps)]
    compiled, python = both(frames)
    assert compiled.equals(python)
    micros = compiled.column("recv_time").cast(pa.int64()).to_pylist()
    assert micros[:8] == [0, 0, 1, day_ns // 1000 - 1, day_ns // 1000, 0, -1, -day_ns // 1000]
    days = compiled.column("date").cast(pa.int32()).to_pylist()
    assert days[:8] == [0, 0, 0, 0, 1, 0, -1, -1]


def test_a_value_that_is_not_a_string_fails_as_in_python() -> None:
    both([])
    bad = [RawFrame("coinbase", "c", 1, NOW_NS, 42)]  # type: ignore[arg-type]
    with pytest.raises((TypeError, pa.ArrowException)):
        python_bronze_table(bad)
    with pytest.raises(TypeError):
        bronze_table(bad)


def test_a_lone_surrogate_fails_as_in_python() -> None:
    both([])
    bad = [RawFrame("coinbase", "c", 1, NOW_NS, "\ud800")]
    with pytest.raises((UnicodeEncodeError, pa.ArrowException)):
        python_bronze_table(bad)
    with pytest.raises(UnicodeEncodeError):
        bronze_table(bad)


frame_st = st.builds(
    RawFrame,
    exchange=st.sampled_from(["coinbase", "binance", "kraken", "simulator", "ünïcode"]),
    conn_id=st.text(max_size=12),
    recv_seq=st.integers(-(2**63), 2**63 - 1),
    recv_ns=st.integers(-(2**62), 2**62),
    text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=200),
    partition=st.integers(-1, 8),
    offset=st.integers(-1, 2**40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_st, min_size=1, max_size=40))
def test_generated_frames_give_the_same_rows(frames: list[RawFrame]) -> None:
    compiled, python = both(frames)
    assert compiled.equals(python)
    assert compiled.to_pylist() == python.to_pylist()
