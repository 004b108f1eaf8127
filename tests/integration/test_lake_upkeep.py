"""The writer's tables are kept up off the commit path (`lake/handles.py`): checkpoints are
made in a background thread, not by the commit that lands on the interval, and the writer goes
on with the handle opened for them; a failed upkeep keeps the old handle."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.maintenance import last_checkpoint_version
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.writer import Batch, LakeWriter
from tests.integration.test_maintenance import MIDNIGHT, trade


def test_a_checkpoint_is_made_beside_the_commits_not_inside_them(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    opened = writer.tables[T.TRADES.name]
    opened.alter.set_table_properties(
        {"delta.checkpointInterval": "5", "delta.logRetentionDuration": "interval 0 seconds"}
    )  # version 1
    table = T.TRADES.uri(lake)
    busy = threading.Event()
    writer.handles._executor.submit(busy.wait)  # the upkeep thread cannot start yet
    for i in range(4):  # versions 2 to 5
        writer.commit(Batch(version=i + 1, trades=[trade(i, "coinbase", MIDNIGHT)]))
    assert last_checkpoint_version(table) is None  # the commit of version 5 made none

    busy.set()
    writer.handles.adopt(wait=True)
    assert last_checkpoint_version(table) == 5
    assert not (Path(table) / "_delta_log" / f"{0:020d}.json").exists()  # expired log dropped
    assert writer.tables[T.TRADES.name] is not opened  # the handle opened for the checkpoint

    writer.commit(Batch(version=5, trades=[trade(9, "coinbase", MIDNIGHT)]))
    writer.commit(Batch(version=1, trades=[trade(8, "coinbase", MIDNIGHT)]))  # held already
    writer.close()
    assert trade_ids(lake) == [1000, 1001, 1002, 1003, 1009]


def test_a_failed_upkeep_keeps_the_handle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    handle = writer.tables[T.TRADES.name]
    writer.handles._start(T.TRADES.name, str(tmp_path / "no-table-here"), None)
    assert writer.handles._opening[T.TRADES.name].exception(timeout=30) is not None
    with caplog.at_level(logging.WARNING):
        writer.commit(Batch(version=1, trades=[trade(0, "coinbase", MIDNIGHT)]))
    assert writer.tables[T.TRADES.name] is handle
    assert "upkeep of silver.trades failed" in caplog.text
    writer.close()
    assert trade_ids(lake) == [1000]


def trade_ids(lake: Path) -> list[int]:
    rows = LakeReader(lake).query(T.TRADES, "SELECT trade_id FROM t ORDER BY trade_id")
    return [row["trade_id"] for row in rows]
