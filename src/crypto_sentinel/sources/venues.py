"""Exchange codecs by name: the one place that knows which venues exist.

Everything downstream (engine, hot state, replay, verify) finds the codec of a frame through
`codec_for(frame.exchange)`. A frame's exchange is the lake name its rows are stored under: a
venue (`coinbase`, `binance`, `kraken`, `coinbase-advanced`), or its simulated twin
(`simulator` for Coinbase Exchange, `simulator-<venue>` for the others), which speaks the
same protocol but is never mixed with real history. Each venue is one package under
`sources/` (`codec` decodes its frames, `feed` connects, subscribes and backfills); adding a
venue is adding its package, its tests and a line in `_CODECS` and `_CONNECTORS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import TYPE_CHECKING, TypeAlias

from crypto_sentinel.books.events import BookEvent, BookSync
from crypto_sentinel.model import RawFrame
from crypto_sentinel.sources.batch import (
    DecodedBatch,
    FrameDecoder,
    decode_each,
    merge_into,
    storable,
)
from crypto_sentinel.sources.codec import Decoded, FrameError, Sighting

if TYPE_CHECKING:  # httpx loads where a feed or `sentinel verify` runs, not in `process`
    import httpx

    from crypto_sentinel.sources.feed import Connector

SIMULATED_PREFIX = "simulator-"


@dataclass(frozen=True)
class Codec:
    venue: str
    decode: FrameDecoder  # one frame -> record(s); FrameError names what is wrong
    decode_batch: Callable[[Sequence[RawFrame]], DecodedBatch]  # same rows, many frames
    sightings: Callable[[str], list[Sighting]]  # trade ids a frame shows (gap tracking)
    symbol_of: Callable[[str], str]  # product id -> the venue's own symbol (`venue_symbol`)


#: venue -> (codec module, module with a column-wise `decode_batch`, or None: frame by frame),
#: both under crypto_sentinel.sources (one package per venue).
_CODECS: dict[str, tuple[str, str | None]] = {
    "coinbase": ("coinbase.codec", "coinbase.compiled"),
    "binance": ("binance.codec", None),
    "kraken": ("kraken.codec", None),
    "coinbase-advanced": ("coinbase_advanced.codec", None),
}
#: venue -> (module, class) of its live feed's `sources.feed.Connector`.
_CONNECTORS: dict[str, tuple[str, str]] = {
    "coinbase": ("coinbase.feed", "CoinbaseConnector"),
    "binance": ("binance.feed", "BinanceConnector"),
    "kraken": ("kraken.feed", "KrakenConnector"),
    "coinbase-advanced": ("coinbase_advanced.feed", "CoinbaseAdvancedConnector"),
}
VENUES = tuple(_CODECS)
#: How logs and /v1/exchanges name each venue.
DISPLAY_NAMES = {
    "coinbase": "Coinbase",
    "binance": "Binance",
    "kraken": "Kraken",
    "coinbase-advanced": "Coinbase Advanced Trade",
}


def venue_of(exchange: str) -> str | None:
    """The protocol an exchange name speaks (`simulator-binance` -> `binance`), or None."""
    if exchange == "simulator":
        return "coinbase"
    venue = exchange.removeprefix(SIMULATED_PREFIX)
    return venue if venue in _CODECS else None


def simulated_name(venue: str) -> str:
    """The lake name of a venue's simulated twin."""
    return "simulator" if venue == "coinbase" else SIMULATED_PREFIX + venue


@cache
def _codec(venue: str) -> Codec:
    codec_module, batch_module = _CODECS[venue]
    module = importlib.import_module(f"crypto_sentinel.sources.{codec_module}")
    decode = module.decode
    if batch_module is None:

        def decode_batch(frames: Sequence[RawFrame]) -> DecodedBatch:
            return decode_each(frames, decode)

    else:
        batch = importlib.import_module(f"crypto_sentinel.sources.{batch_module}")
        decode_batch = batch.decode_batch
    symbol_of = getattr(module, "symbol_of", _same)  # Coinbase names products as we do
    return Codec(venue, decode, decode_batch, module.sightings, symbol_of)


def _same(product_id: str) -> str:
    return product_id


@lru_cache(maxsize=256)
def codec_for(exchange: str) -> Codec | None:
    """The codec of an exchange name, or None for a name no codec speaks (looked up once per
    name: the per-frame path asks for every frame)."""
    venue = venue_of(exchange)
    return None if venue is None else _codec(venue)


def venue_symbol(exchange: str, product_id: str) -> str | None:
    """The venue's own name of a product (`BTC-USDT` on Binance: `BTCUSDT`), None for an
    exchange no codec speaks."""
    codec = codec_for(exchange)
    return None if codec is None else codec.symbol_of(product_id)


def decode_frames(frames: Sequence[RawFrame]) -> DecodedBatch:
    """Decode a micro-batch whose frames may come from several exchanges, each with its own
    codec; rows keep frame order. A frame of an exchange no codec speaks is quarantined."""
    exchanges = {f.exchange for f in frames}
    if len(exchanges) == 1:
        codec = codec_for(next(iter(exchanges)))
        if codec is not None:
            return codec.decode_batch(frames)
    out = DecodedBatch.empty(len(frames))
    groups: dict[str, list[int]] = {}
    for i, frame in enumerate(frames):
        groups.setdefault(frame.exchange, []).append(i)
    parts = []
    for exchange, where in groups.items():
        codec = codec_for(exchange)
        if codec is None:
            out.rejected.extend((i, f"unknown exchange {exchange!r}") for i in where)
            continue
        parts.append((codec.decode_batch([frames[i] for i in where]), where))
    merge_into(out, parts)
    return out


def decode_frame(frame: RawFrame) -> Decoded:
    """One frame through its exchange's codec, refusing what the lake cannot store."""
    codec = codec_for(frame.exchange)
    if codec is None:
        raise FrameError(f"unknown exchange {frame.exchange!r}")
    return storable(frame, codec.decode)


@dataclass(frozen=True)
class BookCodec:
    """A venue's level-2 book messages: which frames are book frames (a cheap text test, run
    on every frame), what they say, and a fresh instance of the venue's sync rule (one per
    product book)."""

    venue: str
    is_book: Callable[[str], bool]  # frame text -> is it a book message (no full decode)
    decode: Callable[[RawFrame], list[BookEvent]]  # FrameError names what is wrong
    new_sync: Callable[[], BookSync]
    #: Told every other frame of the venue, in order, when the sync rule needs them (Coinbase
    #: Advanced numbers every message of a connection: `note_frame`).
    note: Callable[[RawFrame], None] | None = None


#: venue -> module under crypto_sentinel.sources with `is_book`, `decode_book` and `BookSync`
#: (a class whose instances keep one product's book in sync). A venue without one: no books.
_BOOKS: dict[str, str] = {
    "coinbase": "coinbase.book",
    "binance": "binance.book",
    "kraken": "kraken.book",
    "coinbase-advanced": "coinbase_advanced.book",
}


@lru_cache(maxsize=256)
def book_codec_for(exchange: str) -> BookCodec | None:
    """The book codec of an exchange name, or None when it speaks no book protocol (yet)."""
    venue = venue_of(exchange)
    if venue is None or venue not in _BOOKS:
        return None
    name = f"crypto_sentinel.sources.{_BOOKS[venue]}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # a venue whose book module is not written yet
        if exc.name != name:
            raise
        return None
    note = getattr(module, "note_frame", None)
    return BookCodec(venue, module.is_book, module.decode_book, module.BookSync, note)


def connector_for(venue: str) -> Connector:
    """A new live-feed connector for a venue (each source gets its own: some keep state)."""
    module_name, name = _CONNECTORS[venue]
    module = importlib.import_module(f"crypto_sentinel.sources.{module_name}")
    connector: Connector = getattr(module, name)()
    return connector


#: A venue's REST 1-minute candles: (client, take a rate-limit token, product, first minute,
#: last minute) -> {minute: [low, high, open, close, volume]} (`sentinel verify`).
RestCandles: TypeAlias = (
    "Callable[[httpx.AsyncClient, Callable[[], Awaitable[None]], str, int, int],"
    " Awaitable[dict[int, list[Decimal]]]]"
)


def rest_candles_for(venue: str) -> RestCandles:
    module_name, _ = _CONNECTORS[venue]
    fetch: RestCandles = importlib.import_module(
        f"crypto_sentinel.sources.{module_name}"
    ).rest_candles
    return fetch
