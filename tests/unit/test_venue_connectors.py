"""What each venue's live feed sends and how it reacts to frames (no socket: the shared
connection code is exercised against the simulator in the integration tests)."""

from __future__ import annotations

import json

import pytest

from crypto_sentinel.config import ConfigError, load_settings
from crypto_sentinel.sources.coinbase_advanced.feed import sequence_of
from crypto_sentinel.sources.venues import connector_for
from tests.conftest import SHARED


def test_binance_names_its_streams_in_the_url_and_pages_agg_trades_by_id() -> None:
    connector = connector_for("binance")
    url = connector.url("wss://data-stream.binance.vision/", ["BTC-USDT", "ETH-BTC"])
    assert url == (
        "wss://data-stream.binance.vision/stream?streams="
        "btcusdt@aggTrade/btcusdt@ticker/ethbtc@aggTrade/ethbtc@ticker"
    )
    assert connector.subscribe(["BTC-USDT"]) == []
    assert connector.lifetime is not None and connector.lifetime < 24 * 3600
    rest = connector.rest
    assert rest is not None
    assert rest.request("BTC-USDT", 100, 149) == (
        "/api/v3/aggTrades", {"symbol": "BTCUSDT", "fromId": 100, "limit": 50},
    )  # fmt: skip
    assert rest.ids([{"a": 5}, {"a": 6}]) == [5, 6]


def test_kraken_subscribes_with_a_snapshot_and_pings() -> None:
    connector = connector_for("kraken")
    messages = [json.loads(m) for m in connector.subscribe(["BTC-USD", "ETH-USD"])]
    assert messages[0]["params"] == {
        "channel": "trade", "symbol": ["BTC/USD", "ETH/USD"], "snapshot": True,
    }  # fmt: skip
    assert messages[1]["params"]["channel"] == "ticker"
    assert connector.keepalive is not None and json.loads(connector.keepalive[1]) == {
        "method": "ping"
    }


def test_coinbase_advanced_resubscribes_on_a_sequence_break() -> None:
    connector = connector_for("coinbase-advanced")
    sent = [json.loads(m) for m in connector.subscribe(["BTC-USD"])]
    assert [m["channel"] for m in sent] == ["market_trades", "ticker", "heartbeats"]
    # The recording keeps only some channels' frames (level2 left out), so its numbers
    # jump; numbered again consecutively they must pass without a resubscribe.
    path = SHARED / "data/coinbase_advanced/session.recv_ts.ndjson"
    frames = []
    for seq, line in enumerate(path.read_text().splitlines()):
        text = json.loads(line)["raw"]
        old = sequence_of(text)
        frames.append(text.replace(f'"sequence_num":{old},', f'"sequence_num":{seq},', 1))
    assert all(connector.check(text) == [] for text in frames)
    assert connector.resubscribes == 0
    skipped = frames[0].replace('"sequence_num":0,', f'"sequence_num":{len(frames) + 1},', 1)
    answer = connector.check(skipped)
    assert [json.loads(m)["type"] for m in answer] == ["unsubscribe", "subscribe"]
    assert json.loads(answer[1]) == {
        "type": "subscribe", "product_ids": ["BTC-USD"], "channel": "market_trades",
    }  # fmt: skip
    connector.new_connection()  # sequence numbers start again on a new connection
    assert connector.check(frames[0]) == []


def test_source_lists_and_venue_products() -> None:
    s = load_settings(source="coinbase, binance,kraken", binance_products="BTC-USDT,ETH-BTC")
    assert s.source_names == ["coinbase", "binance", "kraken"]
    assert s.products_for("binance") == ["BTC-USDT", "ETH-BTC"]
    assert s.venue_urls("kraken") == ("wss://ws.kraken.com/v2", "https://api.kraken.com")
    assert s.exchange == "coinbase"
    with pytest.raises(ConfigError, match="unknown source 'bitstamp'"):
        load_settings(source="coinbase,bitstamp")
    with pytest.raises(ConfigError, match="names a venue twice"):
        load_settings(source="binance,binance")
    with pytest.raises(ConfigError, match="no codec for exchange 'nope'"):
        load_settings(replay_exchange="nope")
