"""Settings: defaults, env and sentinel.toml, and clear messages for bad values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crypto_sentinel.cli import _settings, build_parser
from crypto_sentinel.config import ConfigError, load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s.products == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert s.source == "coinbase" and s.batch_interval_ms == 250 and s.port == 8000


def test_env_overrides_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_PRODUCTS", "BTC-USD, ETH-EUR")
    monkeypatch.setenv("SENTINEL_PORT", "9001")
    s = load_settings()
    assert s.products == ["BTC-USD", "ETH-EUR"] and s.port == 9001


def test_toml_file_and_flags_win(tmp_path: Path) -> None:
    (tmp_path / "sentinel.toml").write_text('source = "simulator"\nport = 8100\n')
    s = load_settings(port=8200)
    assert s.source == "simulator" and s.port == 8200
    assert s.exchange == "simulator"


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("SENTINEL_PRODUCTS", "btc-usd", "not a product id"),
        ("SENTINEL_BATCH_INTERVAL_MS", "fast", "valid integer"),
        ("SENTINEL_BATCH_INTERVAL_MS", "0", "greater than or equal to 10"),
        ("SENTINEL_SOURCE", "bitstamp", "unknown source 'bitstamp'"),
        ("SENTINEL_PORT", "70000", "less than or equal to 65535"),
        ("SENTINEL_REPLAY_SPEED", "-2", "replay speed"),
        ("SENTINEL_APP_ID", "_maintenance", "names starting with '_' are the lake's own locks"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert env in text and message in text


def test_corrupt_toml_is_reported(tmp_path: Path) -> None:
    (tmp_path / "sentinel.toml").write_text("source = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    (tmp_path / "sentinel.toml").write_text("prots = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings()


def test_retired_setting_in_toml_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sentinel.toml written before issue 22 still starts; what it set is said to be unused."""
    (tmp_path / "sentinel.toml").write_text("spark_shuffle_partitions = 8\nport = 8100\n")
    with caplog.at_level(logging.WARNING, logger="crypto_sentinel.config"):
        s = load_settings()
    assert s.port == 8100 and "spark_shuffle_partitions" not in s.model_dump()
    assert [r.getMessage() for r in caplog.records] == [
        "setting spark_shuffle_partitions (sentinel.toml) is no longer used, ignored:"
        " the Spark job's plan has no shuffle since issue 22"
    ]


def test_retired_setting_in_env_is_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SENTINEL_SPARK_SHUFFLE_PARTITIONS", "8")
    with caplog.at_level(logging.WARNING, logger="crypto_sentinel.config"):
        s = load_settings()
    assert "spark_shuffle_partitions" not in s.model_dump()
    assert "env SENTINEL_SPARK_SHUFFLE_PARTITIONS" in caplog.text and "ignored" in caplog.text


def test_cli_reports_bad_config_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from crypto_sentinel.cli import main

    monkeypatch.setenv("SENTINEL_PORT", "nope")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "SENTINEL_PORT" in err and "Traceback" not in err


def test_lake_flag_takes_a_folder_or_an_s3_uri_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SENTINEL_LAKE_URI", "s3://from-env/lake")
    parser = build_parser()
    remote = _settings(parser.parse_args(["serve", "--lake", "s3://flag-bucket/prod/"]))
    assert remote.lake_root == "s3://flag-bucket/prod"
    local = _settings(parser.parse_args(["serve", "--lake", "here/lake"]))
    assert local.lake_root == tmp_path / "here" / "lake"
    assert _settings(parser.parse_args(["serve"])).lake_root == "s3://from-env/lake"
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        _settings(parser.parse_args(["serve", "--lake", "gs://elsewhere/lake"]))
