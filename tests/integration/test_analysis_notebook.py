"""docs/analysis.ipynb runs top to bottom against a small lake the test writes (through the
real engine), and shows what the lake holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT
from tests.lakebuild import LakeBuilder, simulated


def test_analysis_notebook_runs(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trades = simulated(["BTC-USD", "ETH-USD"], 1200, datetime(2026, 11, 30, 12, tzinfo=UTC),
                       timedelta(seconds=1))  # fmt: skip
    builder = LakeBuilder(lake)
    builder.matches(trades)
    builder.engine.close()
    btc = sum(1 for t in trades if t.product_id == "BTC-USD")

    monkeypatch.setenv("SENTINEL_LAKE", str(lake))
    nb = nbformat.read(ROOT / "docs" / "analysis.ipynb", as_version=4)
    # execute() raises CellExecutionError on the first cell that fails
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(lake.parent)}}).execute()  # fmt: skip
    text = [
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    ]  # fmt: skip
    joined = "\n".join(text)
    assert f"{btc} trades; price type in Arrow: decimal128(28, 12)" in joined
    assert f"five-minute candles, {btc} trades" in joined
