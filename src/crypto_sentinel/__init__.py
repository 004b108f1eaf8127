"""Crypto Sentinel: real-time crypto market data from exchange feeds to a Delta Lake and an API."""

from typing import TYPE_CHECKING, Any

from crypto_sentinel import native

native.configure()  # before any module imports deltalake (its allocator reads it once)

if TYPE_CHECKING:
    from crypto_sentinel.lake.catalog import Lake

__version__ = "0.1.0"
__all__ = ["Lake", "__version__"]


def __getattr__(name: str) -> Any:
    """`Lake` is imported when first asked for: the CLI starts without loading Arrow."""
    if name == "Lake":
        from crypto_sentinel.lake.catalog import Lake

        return Lake
    raise AttributeError(f"module 'crypto_sentinel' has no attribute {name!r}")
