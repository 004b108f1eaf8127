"""Client-message parsing and subscription bookkeeping of the Coinbase Exchange ws-feed.

Kept free of I/O so the subscribe/unsubscribe rules (both request forms, cumulative
acks, the exact error frames) can be tested and reused without a socket.

Error texts taken from real frames (data/coinbase_exchange/error.ndjson, PROTOCOLS.md):
"No channels provided", "<id> is not a valid product", "You need to specify at least
one product ID for channel heartbeat". The others (malformed JSON, unknown type, unknown
channel, failed unsubscribe) follow the same shape but their wording is not verified.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import orjson

__all__ = [
    "CHANNELS",
    "ClientRequest",
    "ProtocolError",
    "Subscriptions",
    "error_frame",
    "parse_client_message",
]

CHANNELS = ("matches", "ticker", "heartbeat", "level2", "level2_batch")
"""Channels the simulator serves (the trade channels the sources use, and the books)."""


def error_frame(message: str, reason: str) -> str:
    """An error frame with the key order of the newer real frames (type, message, reason)."""
    return orjson.dumps({"type": "error", "message": message, "reason": reason}).decode()


class ProtocolError(Exception):
    """A client message the feed answers with an error frame (the connection stays open)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(f"{message}: {reason}")
        self.frame = error_frame(message, reason)


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A validated (un)subscribe: channel -> product ids (empty = the whole channel)."""

    type: str
    channels: dict[str, list[str]]


def _str_list(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(dict.fromkeys(value))  # de-duplicated, order kept
    return None


def parse_client_message(raw: str | bytes, products: Collection[str]) -> ClientRequest:
    """Validate one client message against the product list; raise ProtocolError if invalid.

    Accepts channels as plain names (using the top-level ``product_ids``) and as objects
    ``{"name": .., "product_ids": [..]}``. A request is all-or-nothing: any bad channel or
    product rejects the whole message, like the real feed's "Failed to subscribe".
    """
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("Malformed JSON", str(exc)) from None
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind not in ("subscribe", "unsubscribe"):
        raise ProtocolError("Failed to subscribe", "Type has to be either subscribe or unsubscribe")
    assert isinstance(msg, dict)
    failed = "Failed to subscribe" if kind == "subscribe" else "Failed to unsubscribe"

    top = msg.get("product_ids", [])
    top_ids = _str_list(top)
    if top_ids is None:
        raise ProtocolError(failed, f"{top} is not a valid product")
    channels = msg.get("channels")
    if not isinstance(channels, list) or not channels:
        raise ProtocolError(failed, "No channels provided")

    wanted: dict[str, list[str]] = {}
    for entry in channels:
        if isinstance(entry, str):
            name, ids = entry, top_ids
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            name = entry["name"]
            if "product_ids" in entry:
                own = _str_list(entry["product_ids"])
                if own is None:
                    raise ProtocolError(failed, f"{entry['product_ids']} is not a valid product")
                if not own and top_ids:
                    # Real since 2023-12: empty per-channel ids with top-level ids is an
                    # error naming the empty product (gocryptotrader PR #1421).
                    raise ProtocolError(failed, " is not a valid product")
                ids = own
            else:
                ids = top_ids
        else:
            raise ProtocolError(failed, f"{orjson.dumps(entry).decode()} is not a valid channel")
        if name not in CHANNELS:
            raise ProtocolError(failed, f"{name} is not a valid channel")
        for pid in ids:
            if pid not in products:
                raise ProtocolError(failed, f"{pid} is not a valid product")
        if not ids and kind == "subscribe":
            raise ProtocolError(
                failed, f"You need to specify at least one product ID for channel {name}"
            )
        merged = wanted.setdefault(name, [])
        merged.extend(p for p in ids if p not in merged)
    return ClientRequest(kind, wanted)


class Subscriptions:
    """What one connection is subscribed to, in the order it subscribed."""

    def __init__(self) -> None:
        self.channels: dict[str, list[str]] = {}

    def subscribe(self, wanted: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """Add channels/products; return only the newly added pairs (for last_match etc.)."""
        added: dict[str, list[str]] = {}
        for name, ids in wanted.items():
            have = self.channels.setdefault(name, [])
            new = [p for p in ids if p not in have]
            have.extend(new)
            if new:
                added[name] = new
        return added

    def unsubscribe(self, wanted: Mapping[str, list[str]]) -> None:
        """Remove products from channels; a channel named without products goes entirely."""
        for name, ids in wanted.items():
            if name not in self.channels:
                continue
            if ids:
                self.channels[name] = [p for p in self.channels[name] if p not in ids]
            if not ids or not self.channels[name]:
                del self.channels[name]

    def products(self, channel: str) -> list[str]:
        return self.channels.get(channel, [])

    def ack_frame(self) -> str:
        """The cumulative ``subscriptions`` frame the feed sends after every (un)subscribe."""
        return orjson.dumps(
            {
                "type": "subscriptions",
                "channels": [{"name": n, "product_ids": ids} for n, ids in self.channels.items()],
            }
        ).decode()
