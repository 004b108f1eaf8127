"""The protocols the simulator speaks besides Coinbase Exchange (which lives in ``server.py``,
``market.py`` and ``protocol.py``): one module per venue, found by name."""

from __future__ import annotations

from crypto_sentinel.simulator.venues.base import Venue

__all__ = ["VENUES", "Venue", "venue_for"]

VENUES = ("coinbase", "binance", "kraken", "coinbase-advanced")


def venue_for(name: str) -> Venue | None:
    """The venue speaking ``name``'s protocol; None for Coinbase Exchange (the server's own)."""
    if name == "coinbase":
        return None
    if name == "binance":
        from crypto_sentinel.simulator.venues.binance import Binance

        return Binance()
    if name == "kraken":
        from crypto_sentinel.simulator.venues.kraken import Kraken

        return Kraken()
    if name == "coinbase-advanced":
        from crypto_sentinel.simulator.venues.coinbase_advanced import CoinbaseAdvanced

        return CoinbaseAdvanced()
    raise ValueError(f"unknown venue {name!r}; one of {', '.join(VENUES)}")
