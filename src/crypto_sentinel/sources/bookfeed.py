"""What a live feed needs to subscribe to order books: the options a connector gets when books
are on, the default (no books) behaviour every connector inherits, and Coinbase's signed
subscribe.

A feed does not keep books (the engine does, from the frames on the bus); it only subscribes,
notices the cheap signs of a lost update (Binance U/u, Advanced `sequence_num`), and starts a
resync: re-subscribing the product's book channel (the venue sends a fresh snapshot), or for
Binance, fetching the REST snapshot and publishing it as a frame of our own. Every resync it
starts goes through `BookOptions.on_resync`, which logs and counts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crypto_sentinel.config import Settings

__all__ = [
    "KRAKEN_DEPTHS",
    "BookOptions",
    "BookSubscriber",
    "Credentials",
    "coinbase_credentials",
    "coinbase_signature",
    "kraken_depth",
]

#: The `depth` values Kraken v2 `book` accepts.
KRAKEN_DEPTHS = (10, 25, 100, 500, 1000)


@dataclass(frozen=True)
class Credentials:
    """A Coinbase Exchange API key (secret base64, as Coinbase issues it)."""

    key: str
    secret: str
    passphrase: str

    def __repr__(self) -> str:  # never show the secret in logs
        return f"Credentials(key={self.key!r})"


@dataclass
class BookOptions:
    depth: int  # levels per side asked for (subscription depth, REST snapshot limit)
    rest_url: str | None  # where Binance's REST snapshot comes from
    #: (product, reason): log and count a resync; reason is one of gap (Binance U/u),
    #: sequence (Advanced sequence_num), requested (the engine's hook): a metric label.
    on_resync: Callable[[str, str], None]
    credentials: Credentials | None = None  # Coinbase Exchange level2 only


class BookSubscriber:
    """Connector defaults: no books until `use_books`; a resync sends nothing."""

    books: BookOptions | None = None

    def use_books(self, options: BookOptions) -> None:
        self.books = options

    def resync_book(self, product: str) -> list[str]:
        """Messages that make the venue send `product`'s book afresh (none by default)."""
        return []

    async def own_frames(self) -> list[str]:
        """Frames of our own to publish now, in the connection (Binance REST snapshots)."""
        return []


def coinbase_credentials(settings: Settings) -> Credentials | None:
    """The Coinbase Exchange API key from the settings, or None unless all three are set."""
    key, secret, passphrase = (
        settings.coinbase_api_key, settings.coinbase_api_secret, settings.coinbase_api_passphrase
    )  # fmt: skip
    if not key or secret is None or passphrase is None:
        return None
    return Credentials(key, secret.get_secret_value(), passphrase.get_secret_value())


def kraken_depth(depth: int) -> int:
    """The largest depth Kraken offers that is not above `depth` (at least the smallest)."""
    allowed = [d for d in KRAKEN_DEPTHS if d <= depth]
    return allowed[-1] if allowed else KRAKEN_DEPTHS[0]


def coinbase_signature(credentials: Credentials, timestamp: str | None = None) -> dict[str, str]:
    """The authentication fields of a Coinbase Exchange subscribe: HMAC-SHA256 of
    timestamp + "GET" + "/users/self/verify" keyed by the base64-decoded secret, in base64
    (docs /exchange/websocket-feed/authentication)."""
    timestamp = timestamp or str(int(time.time()))
    message = f"{timestamp}GET/users/self/verify".encode()
    digest = hmac.new(base64.b64decode(credentials.secret), message, hashlib.sha256).digest()
    return {
        "signature": base64.b64encode(digest).decode(),
        "key": credentials.key,
        "passphrase": credentials.passphrase,
        "timestamp": timestamp,
    }
