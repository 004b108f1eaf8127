"""`sentinel bench books` at a tiny scale: ours and the baseline store every level change of
the same frames, and the report holds sane numbers. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import books

from crypto_sentinel.cli import main as cli_main

pytestmark = pytest.mark.e2e


def test_books_bench_small(tmp_path: Path) -> None:
    result = books.main(4000, tmp_path, 0, phases="lake")
    ours, base = result["ours"], result["baseline"]
    expected = 2000 + 4000  # the snapshot's 1,000 levels a side, then 200 updates of 20
    assert ours["level_changes"] == base["level_changes"] == expected
    assert ours["snapshots"] >= 20  # one a second of book time (20 s), and the first one
    assert 0 < ours["bytes_per_change"] <= ours["bytes_per_change_with_snapshots"]
    assert base["bytes_per_change"] > 0
    for at in (ours["at"], base["at"]):
        assert at["n"] > 0 and 0 <= at["p50_ms"] <= at["p99_ms"] <= at["max_ms"]
    text = books.markdown(result)
    assert "### Books" in text and "6,000" in text
    assert not (tmp_path / "books-lake").exists()  # the run cleans up its lake


def test_books_bench_route(tmp_path: Path) -> None:
    """The route phase runs a real simulator and pipeline and loads the live book route."""
    result = books.main(0, tmp_path, 0, phases="route", live_seconds=2.0)
    route = result["route"]
    assert route["requests"] == 1000  # 500/s for 2 s
    assert route["statuses"] == {"200": 1000} and route["errors"] == route["timeouts"] == 0
    assert route["levels"] == [50, 50]  # a valid book of the default depth
    assert 0 <= route["p50_ms"] <= route["p99_ms"] <= route["max_ms"]
    assert "ours" not in result  # the lake phase was not asked for
    text = books.markdown(result)
    assert "Book route from memory" in text and "500 requests/s" in text


def test_bench_cli_knows_books(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["bench", "books", "--help"])
    assert "books" in capsys.readouterr().out
