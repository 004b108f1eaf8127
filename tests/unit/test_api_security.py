"""The API's security pieces on their own: the start-up warning, token buckets on a fake clock,
and settings that never show the token."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crypto_sentinel.api.app import create_app
from crypto_sentinel.api.security import ApiSecurity, Buckets, same_token
from crypto_sentinel.api.state import HotState
from crypto_sentinel.config import load_settings
from crypto_sentinel.lake.query import LakeReader

TOKEN = "unit-test-token-0123456789"


def build(security: ApiSecurity, tmp_path: Path) -> None:
    create_app(
        HotState(50),
        LakeReader(tmp_path / "lake"),
        default_exchange=lambda: "simulator",
        products=["BTC-USD"],
        status=dict,
        ready=lambda: True,
        security=security,
    )


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", None, True), ("192.0.2.10", None, True), ("::", None, True),
     ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False), ("::1", None, False),
     ("localhost", None, False)],
)  # fmt: skip
def test_open_non_loopback_api_warns_once(
    host: str, token: str | None, warned: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="crypto_sentinel.api.security")
    build(ApiSecurity(token=token, host=host), tmp_path)
    warnings = [r for r in caplog.records if "without an API token" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert host in warnings[0].getMessage() and "SENTINEL_API_TOKEN" in warnings[0].getMessage()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = Clock()
    buckets = Buckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # empty: one token comes in 0.5 s
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 100  # refills up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_bucket_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crypto_sentinel.api.security.MAX_BUCKETS", 100)
    clock = Clock()
    buckets = Buckets(rate=1.0, burst=5, clock=clock)
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.001
    assert len(buckets.state) <= 101


def test_tokens_compare_whole_and_exact() -> None:
    assert same_token(TOKEN, TOKEN)
    assert not same_token(TOKEN[:-1], TOKEN)
    assert not same_token(TOKEN + "x", TOKEN)
    assert not same_token("", TOKEN)
    assert not same_token("ünïcode-token-0123456789", TOKEN)  # non-ASCII is no crash


def test_settings_never_show_the_token() -> None:
    settings = load_settings(api_token=TOKEN)
    security = ApiSecurity.from_settings(settings)
    assert security.token == TOKEN
    for text in (repr(settings), str(settings), repr(security), settings.model_dump_json()):
        assert TOKEN not in text
    assert load_settings(api_token="").api_token is None  # SENTINEL_API_TOKEN= : no token
