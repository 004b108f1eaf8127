"""Coinbase Exchange order books in the simulator: the `level2` and `level2_batch` channels.

A subscribe gets a `snapshot` per product, then one `l2update` per change of the book
(`changes` as `[side, price, size]`, size 0 removing the level). Since 2023-08 the real feed
refuses `level2` without an authenticated subscribe (`signature`, `key`, `passphrase`,
`timestamp`; docs /exchange/websocket-feed/authentication); the error frame below is the
one clients logged (bmoscon/cryptofeed issue 990). The simulator checks that the fields are
there, not the signature. `level2_batch` stayed public, and is served without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import orjson

from crypto_sentinel.simulator.depth import BookUpdate, Depth, text
from crypto_sentinel.simulator.faults import COINBASE_SHAPE, trade_matcher
from crypto_sentinel.simulator.market import format_time
from crypto_sentinel.simulator.protocol import ClientRequest, error_frame

__all__ = ["AUTH_FIELDS", "INDEX", "SHAPE", "auth_refusal", "snapshot_frames", "update_frame"]

#: Server channel names of the book channels (the server indexes subscribers by them).
INDEX = {"level2": "book", "level2_batch": "book"}
AUTH_FIELDS = ("signature", "key", "passphrase", "timestamp")
_AUTH_REASON = (
    "level2, level3, and full channels now require authentication. "
    "https://docs.cloud.coinbase.com/exchange/docs/websocket-auth"
)
_SIDES = {"bid": "buy", "ask": "sell"}

#: The Coinbase Exchange frames the fault plan acts on: matches, and l2update as book updates.
SHAPE = dataclasses.replace(
    COINBASE_SHAPE, book=trade_matcher(r'\{"type":"l2update","product_id":"([^"]+)"')
)


def auth_refusal(raw: str | bytes, req: ClientRequest) -> str | None:
    """The real error frame for a `level2` subscribe without the authentication fields."""
    if req.type != "subscribe" or "level2" not in req.channels:
        return None
    msg = orjson.loads(raw)
    if all(isinstance(msg.get(f), str) and msg[f] for f in AUTH_FIELDS):
        return None
    return error_frame("Failed to subscribe", _AUTH_REASON)


def snapshot_frames(depth: Depth, added: Mapping[str, list[str]]) -> list[str]:
    """A `snapshot` for each product newly subscribed on a book channel."""
    products = [p for c in INDEX for p in added.get(c, ())]
    frames = []
    for product in dict.fromkeys(products):
        truth = depth.truth(product)
        bids = [[text(p), text(s)] for p, s in truth.bids]
        asks = [[text(p), text(s)] for p, s in truth.asks]
        body = {"type": "snapshot", "product_id": product, "bids": bids, "asks": asks}
        frames.append(orjson.dumps(body).decode())
    return frames


def update_frame(update: BookUpdate) -> str:
    changes = [[_SIDES[side], text(p), text(s)] for side, p, s in update.changes]
    return (
        f'{{"type":"l2update","product_id":"{update.product_id}",'
        f'"changes":{orjson.dumps(changes).decode()},"time":"{format_time(update.time)}"}}'
    )
