"""Kept answers of the newest trades (`LakeReader.newest_trades`, what `/latest` of a
`sentinel serve` replica reads): computed once per table version even when many requests ask
at once; while one computes a new version's answer, the others get the previous version's
instead of decoding the same row groups again, and none waits when an answer exists."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from crypto_sentinel.api.app import create_app
from crypto_sentinel.api.render import latest_row_item
from crypto_sentinel.api.routes import latest as latest_route
from crypto_sentinel.api.state import HotState
from crypto_sentinel.lake.query import LakeReader
from crypto_sentinel.lake.recent import TRADES_MAX_AGE
from crypto_sentinel.lake.writer import Batch, LakeWriter
from tests.integration.test_maintenance import MIDNIGHT, trade

PRODUCTS = ["BTC-USD", "ETH-USD"]


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


async def test_latest_of_a_lake_replica_is_rendered_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/latest` with memory empty (`sentinel serve`): the fast path reads the lake (in a
    thread) and answers from the kept answer with the same bytes, rendering them once per
    table version; a new commit is answered once the reader has looked at the log again."""
    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    writer.commit(Batch(version=1, trades=[trade(i, "coinbase", MIDNIGHT) for i in range(4)]))
    rendered: list[int] = []

    def counted(row: dict[str, Any]) -> dict[str, Any]:
        rendered.append(row["trade_id"])
        return latest_row_item(row)

    monkeypatch.setattr(latest_route, "latest_row_item", counted)
    app = create_app(HotState(), LakeReader(lake), lambda: "coinbase", PRODUCTS, dict, lambda: True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        bodies = [(await client.get("/latest")).content for _ in range(4)]
        assert [d["trade_id"] for d in orjson.loads(bodies[0])["data"]] == [1003, 1002, 1001, 1000]
        assert len(set(bodies)) == 1
        assert len(rendered) == 4  # once per version: not once a request

        writer.commit(Batch(version=2, trades=[trade(9, "coinbase", MIDNIGHT)]))
        time.sleep(TRADES_MAX_AGE + 0.05)
        newer = [(await client.get("/latest")).content for _ in range(3)]
        assert [d["trade_id"] for d in orjson.loads(newer[-1])["data"]][:2] == [1009, 1003]
        assert len(set(newer)) == 1
        assert len(rendered) == 4 + 5

        r = await client.get("/latest", params={"symbol": "NOPE-USD"})  # still the route's 404
        assert r.status_code == 404, r.text


def test_the_engine_learns_trade_ids_from_the_newest_version_only(tmp_path: Path) -> None:
    """The API may answer with the version before while another thread lists a table; the
    engine's start-up (and Kafka rebalance) reads must not, or it learns fewer trade ids and
    stores trades again."""
    from crypto_sentinel.lake import tables as T

    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    writer.commit(Batch(version=1, trades=[trade(i, "coinbase", MIDNIGHT) for i in range(4)]))
    reader = LakeReader(lake)
    assert len(reader.files(T.TRADES)) == 1  # the listing of version 1 is kept
    writer.commit(Batch(version=2, trades=[trade(9, "coinbase", MIDNIGHT)]))
    listing = reader._computing.setdefault(("files", T.TRADES.name, None, None), threading.Lock())
    learned: list[Any] = []
    with listing:  # another thread lists version 2 meanwhile
        assert len(reader.files(T.TRADES)) == 1  # the API: the version before, at once
        engine = threading.Thread(target=lambda: learned.append(reader.trade_id_ranges()))
        engine.start()
        engine.join(0.3)
        assert learned == []  # it waits for the newest listing
    engine.join(10)
    ids = learned[0][("coinbase", "BTC-USD")] + learned[0][("coinbase", "ETH-USD")]
    assert sorted(ids) == [(1000, 1000), (1001, 1001), (1002, 1002), (1003, 1003), (1009, 1009)]


def test_long_lived_table_handles_are_opened_afresh(tmp_path: Path) -> None:
    """The writer's and a reader's tables are reopened from the newest checkpoint every
    `REOPEN_AFTER_VERSIONS` versions (their native state only grows while updated in place;
    the writer's are opened in the background); nothing they answer changes across it."""
    from crypto_sentinel.lake import tables as T

    lake = tmp_path / "lake"
    writer = LakeWriter(lake, "stream")
    reader = LakeReader(lake)
    opened = writer.tables[T.TRADES.name]
    reader.files(T.TRADES)
    read = reader._tables[T.TRADES.name]
    for i in range(T.REOPEN_AFTER_VERSIONS + 1):
        writer.commit(Batch(version=i + 1, trades=[trade(2 * i, "coinbase", MIDNIGHT)]))
        assert len(reader.files(T.TRADES)) == i + 1
    writer.handles.adopt(wait=True)  # opened in the background, swapped in between batches
    assert writer.tables[T.TRADES.name] is not opened
    assert reader._tables[T.TRADES.name] is not read
    assert writer.tables[T.TRADES.name].version() == T.REOPEN_AFTER_VERSIONS + 1
    ranges = reader.trade_id_ranges()[("coinbase", "BTC-USD")]
    assert [lo for lo, _ in ranges] == [1000 + 2 * i for i in range(T.REOPEN_AFTER_VERSIONS + 1)]
    # the writer goes on on its new handles: a batch it holds already is still skipped
    writer.commit(Batch(version=1, trades=[trade(999, "coinbase", MIDNIGHT)]))
    assert len(reader.files(T.TRADES)) == T.REOPEN_AFTER_VERSIONS + 1
