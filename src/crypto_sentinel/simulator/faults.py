"""Seeded fault injection: what real exchange feeds do to their clients, on demand.

A ``FaultPlan`` sits on the simulator's outbound path (the ``FrameHook`` seam) and, from one
``random.Random(seed)``, drops ranges of match frames, duplicates and reorders them, and adds
malformed copies; the server also cuts every connection every ``disconnect_every`` seconds.
Dropped trades stay in the market's history, so the REST trades endpoint still serves them:
a correct client recovers them by backfill.

Hidden trades (``hide_every``, ``hide_tail``, ``hide_from`` + ``hide_count``) are decided by
the server per emitted trade, for every client at once, by the trade's place in the stream:
the match frame is never sent (tickers and heartbeats still are), as a feed that loses
matches does. A product's first trade is never hidden. ``rest_delay`` slows every REST
trades answer; ``rest_429_every`` answers every n-th REST trades request with HTTP 429.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

__all__ = ["COINBASE_SHAPE", "FaultPlan", "FaultSpec", "FrameShape", "corruptions", "trade_matcher"]

_MATCH = '{"type":"match"'
_PRODUCT = re.compile(r'"product_id":"([^"]+)"')
_HEARTBEAT = '{"type":"heartbeat"'


def _truncated(frame: str) -> str:
    return frame[: len(frame) // 2]


def _named(name: str, fn: Callable[[str], str]) -> Callable[[str], str]:
    fn.__name__ = name
    return fn


def corruptions(
    unknown: tuple[str, str],
    trade_id: tuple[str, str],
    size: tuple[str, str],
    price: tuple[str, str],
    time: tuple[str, str],
) -> tuple[Callable[[str], str], ...]:
    """The six malformed copies of a trade frame every venue gets, in a fixed order (so a seed
    draws the same kinds everywhere): broken JSON, an unknown type (`unknown`: old, new text),
    a trade id of the wrong type, size <= 0, price <= 0 and a time far in the future (each a
    regex and its replacement, applied once)."""

    def once(name: str, pattern: str, replacement: str) -> Callable[[str], str]:
        rx = re.compile(pattern)
        return _named(name, lambda frame: rx.sub(replacement, frame, count=1))

    old, new = unknown
    return (
        _truncated,
        _named("_unknown_type", lambda frame: frame.replace(old, new, 1)),
        once("_wrong_trade_id_type", *trade_id),
        once("_zero_size", *size),
        once("_negative_price", *price),
        once("_future_time", *time),
    )


#: Each kind of malformed frame the issue names: broken JSON, unknown type, wrong field type,
#: size <= 0, price <= 0, time far in the future.
CORRUPTIONS = corruptions(
    unknown=('"type":"match"', '"type":"match_v2"'),
    trade_id=(r'"trade_id":(\d+)', r'"trade_id":"\1"'),
    size=(r'"size":"[^"]*"', '"size":"0"'),
    price=(r'"price":"[^"]*"', '"price":"-1.5"'),
    time=(r'"time":"\d{4}', '"time":"2999'),
)


@dataclass(frozen=True)
class FrameShape:
    """How a venue's frames look to the fault plan.

    ``trade`` gives the product of a live trade frame (the frames faults act on) or None for
    any other frame; a frame starting with ``heartbeat`` releases a held-back trade;
    ``corruptions`` are the malformed copies, one per kind and always six of them, so a seed
    draws the same faults on every venue.
    """

    trade: Callable[[str], str | None]
    heartbeat: str | None
    corruptions: tuple[Callable[[str], str], ...]
    #: The product of a book update frame (None for any other frame, snapshots included).
    book: Callable[[str], str | None] | None = None
    #: A book update with a wrong checksum (venues whose updates carry one).
    bad_checksum: Callable[[str], str] | None = None


def trade_matcher(pattern: str) -> Callable[[str], str | None]:
    """`FrameShape.trade` for a venue whose live trade frames match `pattern` at their start
    (its first group is the product as the venue writes it)."""
    rx = re.compile(pattern)

    def product(frame: str) -> str | None:
        m = rx.match(frame)
        return m.group(1) if m else None

    return product


def _coinbase_trade(frame: str) -> str | None:
    if not frame.startswith(_MATCH):
        return None
    product = _PRODUCT.search(frame)
    return product.group(1) if product else ""


COINBASE_SHAPE = FrameShape(_coinbase_trade, _HEARTBEAT, CORRUPTIONS)


@dataclass(frozen=True)
class FaultSpec:
    """What to inject; rates are chances per match frame. ``parse`` reads the CLI form."""

    seed: int = 1
    disconnect_every: float = 0.0  # seconds between forced disconnects of every client
    drop: float = 0.0  # chance a match frame starts a dropped range
    drop_max: int = 20  # a dropped range is 1..drop_max match frames long
    duplicate: float = 0.0
    reorder: float = 0.0  # chance a match frame is held back and sent after the next one
    malformed: float = 0.0  # chance a malformed copy follows a match frame
    hide_every: int = 0  # hide the match of every n-th trade emitted (n, 2n, ...)
    hide_tail: int = 0  # hide the matches of the last n trades (needs max_trades)
    hide_from: int = 0  # hide the matches of trades hide_from .. hide_from + hide_count - 1
    hide_count: int = 0  # (1-based places in the stream): an outage of the matches channel
    rest_delay: float = 0.0  # seconds before each REST trades answer
    rest_429_every: int = 0  # every n-th REST trades request gets HTTP 429
    book_drop: float = 0.0  # chance a book update frame is lost
    book_duplicate: float = 0.0  # chance a book update frame is sent twice
    book_reorder: float = 0.0  # chance a book update is held back until after the next one
    book_checksum: float = 0.0  # chance a book update carries a wrong checksum (Kraken)
    book_gap: float = 0.0  # chance a product's update ids jump before an update (Binance U/u)

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """``"disconnect_every=3,drop=0.01,duplicate=0.02,reorder=0.02,malformed=0.01,seed=7"``."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in known:
                raise ValueError(
                    f"bad fault {part!r}; use name=value with names {', '.join(known)}"
                )
            try:
                number: float | int = int(value) if known[name] == "int" else float(value)
            except ValueError:
                raise ValueError(f"fault {name}: {value!r} is not a number") from None
            if number < 0 or (name in _CHANCES and number > 1):
                raise ValueError(f"fault {name}: {value} is out of range")
            values[name] = number
        return cls(**values)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        return any(
            getattr(self, f.name) for f in fields(self) if f.name not in ("seed", "drop_max")
        )


_CHANCES = (
    "drop", "duplicate", "reorder", "malformed",
    "book_drop", "book_duplicate", "book_reorder", "book_checksum", "book_gap",
)  # fmt: skip


@dataclass
class _SessionState:
    drop_left: int = 0
    held: str | None = None
    book_held: str | None = None


@dataclass
class FaultPlan:
    """Applies a ``FaultSpec`` to outbound frames; counts what it did (for reports)."""

    spec: FaultSpec
    shape: FrameShape = COINBASE_SHAPE
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    malformed: int = 0
    hidden: int = 0
    rest_throttled: int = 0
    book_dropped: int = 0
    book_duplicated: int = 0
    book_reordered: int = 0
    book_corrupted: int = 0
    book_gaps: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _book_rng: random.Random = field(init=False, repr=False)
    _sessions: dict[int, _SessionState] = field(default_factory=dict, repr=False)
    _started: set[str] = field(default_factory=set, repr=False)
    _hide_started: set[str] = field(default_factory=set, repr=False)
    _rest_requests: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.spec.seed)
        self._book_rng = random.Random(self.spec.seed + 0x5EED)

    @property
    def disconnect_every(self) -> float:
        return self.spec.disconnect_every

    def use_shape(self, shape: FrameShape) -> None:
        """Act on another venue's frames (the server calls this with its venue's shape)."""
        self.shape = shape

    def counts(self) -> dict[str, int]:
        """Every counter, by name: the plan's int fields are exactly its counters."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}

    @property
    def lost(self) -> int:
        """Frames dropped in transit, trades and book updates (venues that number frames
        skip their numbers)."""
        return self.dropped + self.book_dropped

    def gap(self, product_id: str) -> int:
        """Update ids a product's next book update skips (0: none), drawn per update."""
        draw, length = self._book_rng.random(), self._book_rng.randint(1, 5)
        if draw < self.spec.book_gap:
            self.book_gaps += 1
            return length
        return 0

    def hides(self, index: int, product_id: str, total: int | None) -> bool:
        """Is the match of the trade at 0-based place `index` (of `total`) hidden?"""
        spec = self.spec
        place = index + 1
        hide = (
            (spec.hide_every > 0 and place % spec.hide_every == 0)
            or (spec.hide_tail > 0 and total is not None and place > total - spec.hide_tail)
            or (spec.hide_count > 0 and spec.hide_from <= place < spec.hide_from + spec.hide_count)
        )
        if product_id not in self._hide_started:
            self._hide_started.add(product_id)  # a product's history starts at its first trade
            return False
        if hide:
            self.hidden += 1
        return hide

    def rest_fault(self) -> tuple[float, int | None]:
        """For one REST trades request: (seconds to wait, an error status or None)."""
        self._rest_requests += 1
        every = self.spec.rest_429_every
        if every > 0 and self._rest_requests % every == 0:
            self.rest_throttled += 1
            return self.spec.rest_delay, 429
        return self.spec.rest_delay, None

    def outbound(self, session: object, frame: str) -> Iterable[str | bytes]:
        state = self._sessions.setdefault(id(session), _SessionState())
        shape = self.shape
        if shape.heartbeat and frame.startswith(shape.heartbeat):
            # Never keep a trade or a book update back past a heartbeat.
            held = [h for h in (state.held, state.book_held) if h is not None]
            state.held = state.book_held = None
            return [*held, frame]
        if shape.book is not None and shape.book(frame) is not None:
            return self._book_outbound(state, frame)
        product = shape.trade(frame)
        if product is None:
            return [frame]
        if product and product not in self._started:
            # A product's first trade goes out intact: it is where a new client's history
            # starts, and nothing before it can be called missing.
            self._started.add(product)
            return [frame]
        spec, rng = self.spec, self._rng
        # The same draws for every match frame, whatever is decided: the faults then depend
        # only on the seed and the trade stream, not on timing (heartbeats, reconnects).
        drop, length = rng.random(), rng.randint(1, max(1, spec.drop_max))
        duplicate, malformed, corrupt = rng.random(), rng.random(), rng.choice(shape.corruptions)
        reorder = rng.random()
        if state.drop_left > 0:
            state.drop_left -= 1
            self.dropped += 1
            return []
        if drop < spec.drop:
            state.drop_left = length - 1
            self.dropped += 1
            return []
        out = [frame]
        if duplicate < spec.duplicate:
            out.append(frame)
            self.duplicated += 1
        if malformed < spec.malformed:
            out.append(corrupt(frame))
            self.malformed += 1
        if state.held is not None:
            out.append(state.held)  # the held trade goes out after a newer one
            state.held = None
        elif reorder < spec.reorder:
            state.held = frame
            self.reordered += 1
            out.remove(frame)
        return out

    def _book_outbound(self, state: _SessionState, frame: str) -> list[str | bytes]:
        spec, rng = self.spec, self._book_rng
        drop, duplicate, reorder, corrupt = rng.random(), rng.random(), rng.random(), rng.random()
        if drop < spec.book_drop:
            self.book_dropped += 1
            return []
        if corrupt < spec.book_checksum and self.shape.bad_checksum is not None:
            frame = self.shape.bad_checksum(frame)
            self.book_corrupted += 1
        out: list[str | bytes] = [frame]
        if duplicate < spec.book_duplicate:
            out.append(frame)
            self.book_duplicated += 1
        if state.book_held is not None:
            out.append(state.book_held)
            state.book_held = None
        elif reorder < spec.book_reorder:
            state.book_held = frame
            self.book_reordered += 1
            out.remove(frame)
        return out

    def forget(self, session: object) -> None:
        """A closed session's held frame is lost with its connection (as on a real drop)."""
        self._sessions.pop(id(session), None)
