"""Crypto Sentinel: real-time crypto market data from exchange feeds to a Delta Lake and an API."""

from crypto_sentinel import native

native.configure()  # before any module imports deltalake (its allocator reads it once)

__version__ = "0.1.0"
