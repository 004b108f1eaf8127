"""Venue symbols read from the simulator's REST as the live sources read them at connect:
Kraken's AssetPairs (`wsname` -> REST pair) and Binance's exchangeInfo (base/quote ->
symbol)."""

from __future__ import annotations

from crypto_sentinel.simulator import SimulatorServer
from crypto_sentinel.sources.binance.feed import BinanceSymbols
from crypto_sentinel.sources.kraken.rest import KrakenTrades, TradeTimes


async def test_kraken_pairs_come_from_asset_pairs() -> None:
    async with SimulatorServer(["BTC-USD", "ETH-EUR", "SOL-USD"], venue="kraken") as sim:
        trades = KrakenTrades(TradeTimes())
        await trades.load_pairs(sim.rest_url)
    assert trades.pairs == {"BTC-USD": "XXBTZUSD", "ETH-EUR": "XETHZEUR", "SOL-USD": "SOLUSD"}


async def test_binance_symbols_come_from_exchange_info() -> None:
    async with SimulatorServer(["BTC-USDT", "ETH-BTC"], venue="binance") as sim:
        symbols = BinanceSymbols()
        await symbols.load(sim.rest_url, ["BTC-USDT", "ETH-BTC"])
    assert symbols.by_product == {"BTC-USDT": "BTCUSDT", "ETH-BTC": "ETHBTC"}
