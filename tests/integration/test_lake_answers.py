"""Kept answers of the newest trades (`LakeReader.newest_trades`, what `/latest` of a
`sentinel serve` replica reads): computed once per table version even when many requests ask
at once; while one computes a new version's answer, the others get the previous version's
instead of decoding the same row groups again, and none waits when an answer exists."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.recent import TRADES_MAX_AGE
from crypto_sentinel.lake.writer import Batch, LakeWriter
from tests.integration.test_maintenance import MIDNIGHT, trade


def test_a_new_version_is_computed_once_and_others_take_the_previous_answer(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    writer.commit(Batch(version=1, trades=[trade(i, "coinbase", MIDNIGHT) for i in range(4)]))
    reader = LakeReader(lake)
    first = reader.newest_trades("coinbase", None, 10)
    assert [r["trade_id"] for r in first] == [1003, 1002, 1001, 1000]

    writer.commit(Batch(version=2, trades=[trade(9, "coinbase", MIDNIGHT)]))
    time.sleep(TRADES_MAX_AGE + 0.05)  # the reader looks at the Delta log again
    key = ("newest", "coinbase", None, 10)
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> list[dict[str, Any]]:
        calls.append("slow")
        inside.set()
        assert release.wait(10)
        return [{"trade_id": "new"}]

    def counted() -> list[dict[str, Any]]:
        calls.append("second")
        return [{"trade_id": "second"}]

    computing = threading.Thread(target=lambda: reader._kept(key, slow))
    computing.start()
    assert inside.wait(10)
    # meanwhile: the previous version's answer, at once, and no second computation
    assert [r["trade_id"] for r in reader._kept(key, counted)] == [1003, 1002, 1001, 1000]
    release.set()
    computing.join(10)
    assert calls == ["slow"]
    # once computed, the new version's answer is the one kept
    assert reader._kept(key, counted) == [{"trade_id": "new"}]
    assert calls == ["slow"]
