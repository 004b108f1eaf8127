"""A lake on S3-compatible object storage: moto's S3 server (a real HTTP S3 endpoint, started
here as its own process), the real CLI writing the lake to s3://, the API reading it back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from deltalake import DeltaTable

from crypto_sentinel.lake import tables as T
from crypto_sentinel.lake.location import storage_options
from tests.conftest import COINBASE_DATA, free_port
from tests.integration.test_replay import expected_trades
from tests.s3server import BUCKET, S3, moto_s3, wait_http

SESSION = COINBASE_DATA / "session.recv_ts.ndjson"
LAKE_URI = f"s3://{BUCKET}/prod/lake"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3() as server:
        yield server


def _cli_env(s3: S3, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "AWS_"))}
    return {**env, **s3.env, "SENTINEL_LAKE_URI": LAKE_URI, "SENTINEL_PORT": str(port)}


def _lake_trades(monkeypatch: pytest.MonkeyPatch, s3: S3) -> dict:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    dt = DeltaTable(T.TRADES.uri(LAKE_URI), storage_options=storage_options(LAKE_URI))
    rows = dt.to_pyarrow_table().to_pylist()
    keys = [(r["product_id"], r["trade_id"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate trades in silver"
    return {(r["product_id"], r["trade_id"]): (r["price"], r["size"], r["side"]) for r in rows}


def test_lake_on_s3_written_by_the_cli_and_served_back_exactly(
    s3: S3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = _cli_env(s3, free_port())
    subprocess.run(
        [sys.executable, "-m", "crypto_sentinel.cli", "replay", str(SESSION), "--speed", "max"],
        env=env,
        check=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert not (tmp_path / ".sentinel" / "lake").exists(), "the lake must not be written locally"
    want = expected_trades(SESSION)
    assert len(want) == 27
    assert _lake_trades(monkeypatch, s3) == want  # exact decimals, no loss, no duplicate

    port = free_port()
    env = _cli_env(s3, port)
    del env["SENTINEL_LAKE_URI"]  # this time the lake is named on the command line
    api = subprocess.Popen(
        [sys.executable, "-m", "crypto_sentinel.cli", "serve", "--lake", LAKE_URI],
        env=env,
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", api)
        latest = httpx.get(f"{base}/latest", params={"limit": 50}, timeout=30)
        assert latest.status_code == 200, latest.text
        served = {(t["symbol"], t["trade_id"]): t for t in latest.json()["data"]}
        assert len(served) == len(want)
        for key, (price, size, side) in want.items():
            item = served[key]
            assert (item["price"], item["size"]) == (str(price), str(size)), key
            assert Decimal(item["price"]) == price and item["side"] == side
        products = sorted({p for p, _ in want})
        for product in products:
            page = httpx.get(f"{base}/v1/products/{product}/trades", timeout=30)
            assert page.status_code == 200, page.text
            ids = [t["trade_id"] for t in page.json()["data"]]
            assert sorted(ids) == sorted(i for p, i in want if p == product)
            candles = httpx.get(
                f"{base}/v1/products/{product}/candles",
                params={"granularity": 300, "start": "2021-04-17T12:00:00Z"},
                timeout=30,
            )
            assert candles.status_code == 200, candles.text
            count = sum(c["trade_count"] for c in candles.json()["data"])
            volume = sum(Decimal(c["volume"]) for c in candles.json()["data"])
            mine = [v for (p, _), v in want.items() if p == product]
            assert count == len(mine) and volume == sum(size for _, size, _ in mine)
    finally:
        api.terminate()
        api.wait(timeout=20)
