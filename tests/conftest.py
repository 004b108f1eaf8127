"""Shared test helpers: free ports, lake readers and the recorded exchange data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from crypto_sentinel.lake.tables import TableSpec

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SENTINEL_SHARED", ROOT.parent / "shared"))
COINBASE_DATA = SHARED / "data" / "coinbase_exchange"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_table(lake: Path, spec: TableSpec) -> pa.Table:
    return DeltaTable(str(spec.path(lake))).to_pyarrow_table()


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read the developer's sentinel.toml or SENTINEL_* variables."""
    for name in list(os.environ):
        if name.startswith("SENTINEL_") and name != "SENTINEL_SHARED":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
