"""`sentinel bench commits` at a tiny scale: the tables are built to the log lengths asked for,
every append is timed, and the lakes are discarded. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import commits

pytestmark = pytest.mark.e2e


def test_commits_bench_builds_each_log_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commits, "ROUNDS", 2)
    monkeypatch.setattr(commits, "WRITES", 2)
    result = commits.main(200, tmp_path, 0, phases="10,40")
    assert result["rows_per_append"] == 200 and result["appends_per_length"] == 4
    short, long = result["lengths"]
    assert 10 <= short["log_entries_start"] < 15 and 40 <= long["log_entries_start"] < 45
    for length in (short, long):  # each append added its commit file, none was cleaned up
        assert length["log_entries_end"] >= length["log_entries_start"] + 4
        for measure in (length["wall"], length["cpu"]):
            assert 0 < measure["median_ms"] <= measure["p90_ms"]
    assert not list(tmp_path.rglob("_delta_log"))  # the tables are gone
    text = commits.markdown(result)
    assert "| baseline: " in text and "1.00x" in text
