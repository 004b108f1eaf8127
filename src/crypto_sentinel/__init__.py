"""Crypto Sentinel: real-time crypto market data from exchange feeds to a Delta Lake and an API."""

__version__ = "0.1.0"
