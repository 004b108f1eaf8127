"""Shared test helpers: free ports, lake readers and the recorded exchange data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from crypto_sentinel.lake.tables import TableSpec
from crypto_sentinel.ops import kafka
from crypto_sentinel.ops.ports import free_port as free_port
from crypto_sentinel.ops.ports import free_port_run as free_port_run

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SENTINEL_SHARED", ROOT.parent / "shared"))
COINBASE_DATA = SHARED / "data" / "coinbase_exchange"


def read_table(lake: Path, spec: TableSpec) -> pa.Table:
    return DeltaTable(str(spec.path(lake))).to_pyarrow_table()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    data = tmp_path_factory.mktemp("kafka")
    kafka.start(data, nodes=1, port=free_port_run(2), timeout=90)
    try:
        yield data, kafka.bootstrap_servers(data)
    finally:
        kafka.stop(data)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read the developer's sentinel.toml or SENTINEL_* variables."""
    for name in list(os.environ):
        if name.startswith("SENTINEL_") and name not in (
            "SENTINEL_SHARED",
            "SENTINEL_UPDATE_SCREENSHOT",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
