"""The writer's tables are opened afresh off the commit path (`lake/handles.py`): commits go
on while a table is being opened, the new handle is swapped in before the table's next write,
and a failed open keeps the old handle."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import Batch, LakeWriter
from tests.integration.test_maintenance import MIDNIGHT, trade


def test_commits_go_on_while_a_table_is_opened_afresh(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    opened = writer.tables[T.TRADES.name]
    busy = threading.Event()
    writer.handles._executor.submit(busy.wait)  # the reopening thread cannot start yet
    batches = T.REOPEN_AFTER_VERSIONS + 3
    for i in range(batches):
        writer.commit(Batch(version=i + 1, trades=[trade(i, "coinbase", MIDNIGHT)]))
    assert writer.tables[T.TRADES.name] is opened  # no commit waited for the new handle
    assert T.TRADES.name in writer.handles._opening

    busy.set()
    writer.handles._opening[T.TRADES.name].result(timeout=30)
    writer.commit(Batch(version=batches + 1, trades=[trade(batches, "coinbase", MIDNIGHT)]))
    assert writer.tables[T.TRADES.name] is not opened  # swapped in before the table's write
    assert writer.tables[T.TRADES.name].version() == batches + 1
    writer.commit(Batch(version=1, trades=[trade(99, "coinbase", MIDNIGHT)]))  # held already
    writer.close()
    assert trade_ids(lake) == [1000 + i for i in range(batches + 1)]


def test_a_failed_reopen_keeps_the_handle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    handle = writer.tables[T.TRADES.name]
    writer.handles._start(T.TRADES.name, str(tmp_path / "no-table-here"))
    assert writer.handles._opening[T.TRADES.name].exception(timeout=30) is not None
    with caplog.at_level(logging.WARNING):
        writer.commit(Batch(version=1, trades=[trade(0, "coinbase", MIDNIGHT)]))
    assert writer.tables[T.TRADES.name] is handle
    assert "reopening silver.trades failed" in caplog.text
    writer.close()
    assert trade_ids(lake) == [1000]


def trade_ids(lake: Path) -> list[int]:
    rows = LakeReader(lake).query(T.TRADES, "SELECT trade_id FROM t ORDER BY trade_id")
    return [row["trade_id"] for row in rows]
