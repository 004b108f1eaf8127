"""A local Coinbase Exchange: ws-feed (``/``) and the public REST trades API on one port.

Built on the ``websockets`` server: WebSocket clients are handled as usual and plain
HTTP GETs are answered from ``process_request``, so one listener serves both.

Hot path: each trade's frames are rendered once, wrapped into a WebSocket text frame
once, and the same bytes are appended to every subscriber's batch; each batch goes out
with one ``transport.writelines`` per connection. A client that cannot keep up makes
its transport buffer grow; past ``send_buffer_limit`` it is disconnected with
``ErrSlowConsume`` (Coinbase's documented reason) instead of stalling the clock.
Order books (depth.py) move with the trades once a client asks for one; ``depth.truth``
is their ground truth for tests, as ``market.emitted()`` is for trades.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from crypto_sentinel.simulator import level2
from crypto_sentinel.simulator.depth import BookUpdate, Depth
from crypto_sentinel.simulator.market import Market, ResumePoint, SimTrade
from crypto_sentinel.simulator.protocol import (
    ProtocolError,
    Subscriptions,
    parse_client_message,
)
from crypto_sentinel.simulator.rest import coinbase_rest, json_response
from crypto_sentinel.simulator.venues import Venue, venue_for

__all__ = ["DEFAULT_PRODUCTS", "FrameHook", "Session", "SimulatorServer", "ws_text_frame"]

log = logging.getLogger(__name__)

DEFAULT_PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
MAX_RATE = 50_000.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SLEEP = 0.002  # batch period floor: high rates go out in ~2 ms batches
_MAX_LAG = 1.0  # seconds of backlog the clock catches up on before it re-anchors


def ws_text_frame(payload: bytes) -> bytes:
    """Wrap a UTF-8 payload in one unmasked, final WebSocket text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Session:
    """One WebSocket client: its subscriptions and the frames batched for it."""

    __slots__ = ("closed", "id", "pending", "state", "subs", "subscribed", "ws")

    def __init__(self, session_id: int, ws: ServerConnection) -> None:
        self.id = session_id
        self.ws = ws
        self.subs = Subscriptions()
        self.pending: list[bytes] = []
        self.subscribed = False  # has had at least one successful subscribe
        self.closed = False
        self.state: object = None  # what a venue module keeps per connection

    @property
    def peer(self) -> object:
        return self.ws.remote_address


class FrameHook(Protocol):
    """Fault-injection seam: every outbound frame of every session passes through it.

    Return the frames to send instead (none to drop, several to duplicate, altered text
    to corrupt; bytes are sent verbatim as a text frame's payload). Optionally, a
    ``disconnect_every`` attribute (seconds) makes the server cut every connection
    periodically and a ``forget(session)`` method is told when a session ends.
    ``faults.FaultPlan`` is the full implementation.
    """

    def outbound(self, session: Session, frame: str) -> Iterable[str | bytes]: ...


class SimulatorServer:
    """Serve a seeded ``Market`` over the Coinbase Exchange WebSocket and REST protocols, or
    over another venue's (``venue``: binance, kraken, coinbase-advanced; see ``venues``)."""

    def __init__(
        self,
        products: Sequence[str] = DEFAULT_PRODUCTS,
        rate: float = 10.0,
        seed: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        start_trade_id: int | None = None,
        max_trades: int | None = None,
        *,
        subscribe_timeout: float = 5.0,
        send_buffer_limit: int = 8 * 2**20,
        heartbeat_interval: float = 1.0,
        faults: FrameHook | None = None,
        wait_for_subscriber: bool = False,
        venue: str = "coinbase",
        resume: Mapping[str, ResumePoint] | None = None,
    ) -> None:
        if not 1.0 <= rate <= MAX_RATE:
            raise ValueError(f"rate must be between 1 and {MAX_RATE:.0f} trades/s, got {rate}")
        if max_trades is not None and max_trades < 0:
            raise ValueError("max_trades must be >= 0")
        self.market = Market(
            list(products), seed=seed, start_trade_id=start_trade_id, resume=resume
        )
        self.rate = float(rate)
        self.host = host
        self.port = port
        self.max_trades = max_trades
        self.subscribe_timeout = subscribe_timeout
        self.send_buffer_limit = send_buffer_limit
        self.heartbeat_interval = heartbeat_interval
        self.faults = faults
        # A built-in simulator that exists only to feed one pipeline starts its clock when
        # that pipeline subscribes, so no trade is emitted to nobody.
        self.wait_for_subscriber = wait_for_subscriber
        self._subscribed = asyncio.Event()
        self.slow_disconnects = 0
        self.disconnects = 0  # injected by faults
        self.rest_trade_requests = 0  # GET /products/{id}/trades answered (any status)
        self._heartbeat_ticks = 0
        self._emitted = 0
        self._done = asyncio.Event()
        self._ids = itertools.count(1)
        self._sessions: dict[int, Session] = {}
        # product -> sessions subscribed, per channel; rebuilt on every (un)subscribe.
        self._match_subs: dict[str, list[Session]] = {}
        self._ticker_subs: dict[str, list[Session]] = {}
        self._heartbeat_subs: dict[str, list[Session]] = {}
        self._book_subs: dict[str, list[Session]] = {}
        # Order books, made for a product when a client first asks for one (depth.py).
        self.depth = Depth(self.market, getattr(faults, "gap", None))
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        # Venue dispatch: None speaks Coinbase Exchange (the code below); a Venue renders and
        # parses its own protocol through the hooks in "venue dispatch" further down.
        self.venue_name = venue
        self.venue: Venue | None = venue_for(venue)
        use_shape = getattr(faults, "use_shape", None)
        if self.venue is not None and use_shape is not None:
            use_shape(self.venue.shape)
        elif use_shape is not None:
            use_shape(level2.SHAPE)
        if self.venue is not None:
            self.venue.depth = self.depth

    ws_url = property(lambda self: f"ws://{self.host}:{self.port}")
    rest_url = property(lambda self: f"http://{self.host}:{self.port}")

    @property
    def done(self) -> bool:
        """True once ``max_trades`` trades have been emitted (heartbeats go on)."""
        return self.max_trades is not None and self._emitted >= self.max_trades

    emitted_count = property(lambda self: self._emitted)
    connection_count = property(lambda self: len(self._sessions))

    async def wait_done(self) -> None:
        """Wait until ``max_trades`` trades have been emitted (never returns without it)."""
        await self._done.wait()

    async def start(self) -> None:
        """Bind (port 0 picks a free one) and start the trade clock; returns once listening."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,  # frames are pre-built uncompressed
            close_timeout=2,
            max_size=2**16,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks = [
            asyncio.create_task(self._run_clock(), name="simulator-clock"),
            asyncio.create_task(self._run_heartbeats(), name="simulator-heartbeats"),
        ]
        if self.venue is not None and self.venue.batch_interval > 0:
            self._tasks.append(
                asyncio.create_task(self._run_venue_batches(), name="simulator-batches")
            )
        if getattr(self.faults, "disconnect_every", 0) > 0:
            self._tasks.append(
                asyncio.create_task(self._run_disconnects(), name="simulator-disconnects")
            )
        log.info("simulator listening on %s (%s trades/s)", self.ws_url, self.rate)

    async def stop(self) -> None:
        """Stop the clock and close every connection (close code 1001)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def run_forever(self) -> None:
        """Start, then serve until cancelled (the ``sentinel simulate`` verb)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run_clock(self) -> None:
        """Emit ``rate`` trades per second of wall time, in batches, until ``max_trades``."""
        if self.wait_for_subscriber:
            await self._subscribed.wait()
        loop = asyncio.get_running_loop()
        rate = self.rate
        n = self._emitted  # trades before index n are out (non-zero after a restart)
        t0 = loop.time() - n / rate
        wall0_us = time.time_ns() // 1000 - int(n * 1e6 / rate)
        limit = self.max_trades
        try:
            while limit is None or n < limit:
                now = loop.time()
                if now - t0 - n / rate > _MAX_LAG:
                    # The loop stalled: forget the backlog rather than burst it out.
                    skipped = int((now - t0) * rate) - n
                    t0 += skipped / rate
                    wall0_us += int(skipped * 1e6 / rate)
                    log.warning("simulator clock fell behind; skipped %d trade slots", skipped)
                due = int((now - t0) * rate) + 1
                if limit is not None:
                    due = min(due, limit)
                if due > n:
                    self._emit(n, due, wall0_us)
                    n = due
                await asyncio.sleep(max(_MIN_SLEEP, t0 + n / rate - loop.time()))
            self._done.set()
        except Exception:
            log.exception("simulator clock crashed")
            raise

    def _emit(self, first: int, end: int, wall0_us: int) -> None:
        """Generate trades ``first..end-1`` and send them to their subscribers."""
        market = self.market
        per_us = 1e6 / self.rate
        dirty: dict[int, Session] = {}
        match_subs, ticker_subs = self._match_subs, self._ticker_subs
        hides = getattr(self.faults, "hides", None)
        depth = self.depth if self.depth.books else None
        for i in range(first, end):
            when = _EPOCH + timedelta(microseconds=wall0_us + int(i * per_us))
            trade = market.next_trade(when)
            self._emitted += 1
            subs = match_subs.get(trade.product_id)
            if hides is not None and hides(i, trade.product_id, self.max_trades):
                subs = None  # the match is lost on the way; REST still has the trade
            if subs:
                self._fan_out(subs, self._match_text(trade), dirty)
            subs = ticker_subs.get(trade.product_id)
            if subs:
                self._fan_out(subs, self._ticker_text(trade), dirty)
            update = None if depth is None else depth.on_trade(trade)
            if update is not None:
                self._book_out(update, dirty)
        for session in dirty.values():
            self._flush(session)

    def _book_out(self, update: BookUpdate, dirty: dict[int, Session]) -> None:
        """A book update to each subscriber of the product's book, in its venue's frames."""
        venue = self.venue
        for s in self._book_subs.get(update.product_id, ()):
            for text in venue.book_frames(s, update) if venue else [level2.update_frame(update)]:
                self._queue(s, text)
            dirty[s.id] = s

    def _fan_out(self, sessions: list[Session], text: str, dirty: dict[int, Session]) -> None:
        if self.faults is None and not self._stamps:
            frame = ws_text_frame(text.encode())
            for s in sessions:
                s.pending.append(frame)
                dirty[s.id] = s
        else:
            for s in sessions:
                self._queue(s, text)
                dirty[s.id] = s

    def _queue(self, session: Session, text: str) -> None:
        if self.faults is None:
            outs: Iterable[str | bytes] = [text]
        elif self._stamps:
            dropped = getattr(self.faults, "lost", 0)
            outs = self.faults.outbound(session, text)
            lost = getattr(self.faults, "lost", 0) - dropped
            if lost > 0:
                self._venue_lost(session, lost)
        else:
            outs = self.faults.outbound(session, text)
        for out in outs:
            if self._stamps:
                stamped = self._stamp(session, out if isinstance(out, str) else out.decode())
                if stamped is None:
                    continue  # held by the venue for its next batch
                out = stamped
            payload = out.encode() if isinstance(out, str) else out
            session.pending.append(ws_text_frame(payload))

    def _flush(self, session: Session) -> None:
        """Write a session's batch in one call; disconnect it if its backlog is too big."""
        frames, session.pending = session.pending, []
        ws = session.ws
        if session.closed or not frames or ws.protocol.state is not State.OPEN:
            return
        transport = ws.transport
        transport.writelines(frames)
        if transport.get_write_buffer_size() > self.send_buffer_limit:
            self._drop_slow(session)

    def _drop_slow(self, session: Session) -> None:
        self.slow_disconnects += 1
        log.warning("closing slow consumer #%d %s", session.id, session.peer)
        self._forget(session)
        task = asyncio.create_task(self._close(session, 1008, "ErrSlowConsume"))
        self._background.add(task)  # keep a reference until it finishes
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _close(session: Session, code: int, reason: str) -> None:
        """Close handshake, bounded: a client that does not read gets the socket aborted."""
        try:
            await asyncio.wait_for(session.ws.close(code, reason), timeout=2.0)
        except TimeoutError:
            session.ws.transport.abort()

    async def _run_heartbeats(self) -> None:
        """Every interval, one heartbeat per subscribed product to each subscriber."""
        loop = asyncio.get_running_loop()
        interval = self.heartbeat_interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            now = datetime.now(UTC)
            dirty: dict[int, Session] = {}
            if self.venue is not None:
                self._venue_heartbeats(dirty)
            else:
                for product, subs in self._heartbeat_subs.items():
                    if subs:
                        self._fan_out(subs, self.market.heartbeat_frame(product, now), dirty)
            for session in dirty.values():
                self._flush(session)

    async def _run_disconnects(self) -> None:
        """Fault injection: drop every connection abruptly, as a network failure does."""
        every = float(getattr(self.faults, "disconnect_every", 0))
        while True:
            await asyncio.sleep(every)
            self.disconnect_all()

    def disconnect_all(self) -> None:
        """Cut every connection abruptly (faults; tests that need a venue's resync)."""
        for session in list(self._sessions.values()):
            self._forget(session)
            session.ws.transport.abort()
            self.disconnects += 1

    # ------------------------------------------------------------------ WebSocket

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(next(self._ids), ws)
        self._sessions[session.id] = session
        if self.venue is not None:
            self._venue_open(session)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.subscribe_timeout
        try:
            while True:
                if session.subscribed:
                    raw = await ws.recv()
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            raw = await ws.recv()
                    except TimeoutError:
                        # Coinbase drops connections that do not subscribe within 5 s.
                        self._forget(session)
                        await self._close(session, 1008, "subscribe timeout")
                        return
                self._on_message(session, raw)
        except ConnectionClosed:
            pass
        finally:
            self._forget(session)

    def _on_message(self, session: Session, raw: str | bytes) -> None:
        """Apply one client message; acks and snapshots go out before any live frame."""
        if self.venue is not None:
            frames = self.venue.on_message(session, raw, self.market)
            self._reindex()
            self._send(session, frames)
            return
        try:
            req = parse_client_message(raw, self.market.specs)
        except ProtocolError as exc:
            self._send(session, [exc.frame])
            return
        refusal = level2.auth_refusal(raw, req)
        if refusal is not None:
            self._send(session, [refusal])
            return
        if req.type == "subscribe":
            added = session.subs.subscribe(req.channels)
            session.subscribed = True
            frames = [session.subs.ack_frame()]
            market = self.market
            new_ticker = set(added.get("ticker", ()))
            new_matches = set(added.get("matches", ()))
            for product in market.products:
                last: SimTrade | None = market.last_trade(product)
                if last is None:
                    continue
                # Real order for a product: the ticker snapshot, then last_match.
                if product in new_ticker:
                    frames.append(market.ticker_frame(last))
                if product in new_matches:
                    frames.append(market.match_frame(last, "last_match"))
            frames += level2.snapshot_frames(self.depth, added)
        else:
            session.subs.unsubscribe(req.channels)
            frames = [session.subs.ack_frame()]
        self._reindex()
        self._send(session, frames)

    def _send(self, session: Session, frames: list[str]) -> None:
        for text in frames:
            self._queue(session, text)
        self._flush(session)

    def _forget(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        self._sessions.pop(session.id, None)
        forget = getattr(self.faults, "forget", None)
        if forget is not None:
            forget(session)
        self._reindex()

    def _reindex(self) -> None:
        channels = ("matches", "ticker", "heartbeat", "book")
        index: dict[str, dict[str, list[Session]]] = {c: {} for c in channels}
        for s in self._sessions.values():
            if s.closed:
                continue
            for channel, products in s.subs.channels.items():
                for product in products:
                    subs = index[level2.INDEX.get(channel, channel)].setdefault(product, [])
                    if not subs or subs[-1] is not s:  # level2 and level2_batch: one feed
                        subs.append(s)
        self._match_subs = index["matches"]
        self._book_subs = index["book"]
        if self._match_subs or self._book_subs:
            self._subscribed.set()
        self._ticker_subs = index["ticker"]
        self._heartbeat_subs = index["heartbeat"]

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Route a request: WebSocket upgrades on ``/`` go on, everything else is REST."""
        upgrade = request.headers.get("Upgrade", "")
        url = urlsplit(request.path)
        if self.venue is not None:
            return await self._venue_request(conn, url.path, url.query, upgrade)
        if "websocket" in upgrade.lower():
            return None if url.path == "/" else json_response(conn, 404, {"message": "NotFound"})
        if url.path.endswith("/trades"):
            self.rest_trade_requests += 1
            rest_fault = getattr(self.faults, "rest_fault", None)
            if rest_fault is not None:
                delay, error = rest_fault()
                if delay > 0:
                    await asyncio.sleep(delay)
                if error is not None:
                    return json_response(conn, error, {"message": "Public rate limit exceeded"})
        return coinbase_rest(
            conn, self.market, url.path, parse_qs(url.query, keep_blank_values=True)
        )

    # ------------------------------------------------------------------ venue dispatch
    # Everything a non-Coinbase venue changes goes through these methods (self.venue).

    @property
    def _stamps(self) -> bool:
        return self.venue is not None and self.venue.stamps

    def _stamp(self, session: Session, text: str) -> str | None:
        return text if self.venue is None else self.venue.stamp(session, text)

    async def _run_venue_batches(self) -> None:
        """Every ``batch_interval``, the frames a venue held back go out as its batches
        (already stamped, or, from a venue that does not stamp, through the fault plan)."""
        assert self.venue is not None
        venue = self.venue
        while True:
            await asyncio.sleep(venue.batch_interval)
            for session in list(self._sessions.values()):
                frames = venue.flush(session)
                if frames and not session.closed:
                    for f in frames:
                        if venue.stamps:
                            session.pending.append(ws_text_frame(f.encode()))
                        else:
                            self._queue(session, f)
                    self._flush(session)

    def _venue_lost(self, session: Session, count: int) -> None:
        """The fault plan dropped frames of this connection after the venue numbered them."""
        assert self.venue is not None
        self.venue.lost(session, count)

    def _match_text(self, trade: SimTrade) -> str:
        if self.venue is None:
            return self.market.match_frame(trade)
        return self.venue.trade_frame(self.market, trade)

    def _ticker_text(self, trade: SimTrade) -> str:
        if self.venue is None:
            return self.market.ticker_frame(trade)
        return self.venue.ticker_frame(self.market, trade)

    def _venue_open(self, session: Session) -> None:
        assert self.venue is not None
        url = urlsplit(session.ws.request.path if session.ws.request else "/")
        query = parse_qs(url.query, keep_blank_values=True)
        frames = self.venue.on_open(session, url.path, query, self.market)
        self._reindex()
        self._send(session, frames)

    def _venue_heartbeats(self, dirty: dict[int, Session]) -> None:
        assert self.venue is not None
        self._heartbeat_ticks += 1
        now_ns = time.time_ns()
        for session in list(self._sessions.values()):
            if session.closed:
                continue
            for text in self.venue.heartbeat_frames(session, now_ns, self._heartbeat_ticks):
                self._queue(session, text)
                dirty[session.id] = session

    async def _venue_request(
        self, conn: ServerConnection, path: str, raw_query: str, upgrade: str
    ) -> Response | None:
        venue = self.venue
        assert venue is not None
        query = parse_qs(raw_query, keep_blank_values=True)
        if "websocket" in upgrade.lower():
            refusal = venue.ws_refusal(path, query, self.market)
            return None if refusal is None else json_response(conn, *refusal)
        if venue.is_trades_path(path):
            self.rest_trade_requests += 1
            rest_fault = getattr(self.faults, "rest_fault", None)
            if rest_fault is not None:
                delay, error = rest_fault()
                if delay > 0:
                    await asyncio.sleep(delay)
                if error is not None:
                    answer = venue.throttled()
                    return json_response(conn, error, answer.body, answer.headers)
        answer = venue.rest(self.market, path, query)
        return json_response(conn, answer.status, answer.body, answer.headers)
