"""Who may use the API, and how often: an optional bearer token, a per-client rate limit and
bounds on the request target. One pure ASGI layer (`Guard`) in front of every route.

- Token (`api_token`, env SENTINEL_API_TOKEN): when set, every route but `/health`, `/ready`
  and the static, data-free pages (the dashboard shell, `/docs`, `/redoc`, `/openapi.json`
  and their assets) needs `Authorization: Bearer <token>`. Browsers cannot set that header on
  a WebSocket or an EventSource, so `/v1/stream` and `/v1/stream/sse` also take it as the
  query parameter `access_token`. Tokens are compared in constant time and never written to
  a log, a response or an error message. A WebSocket client may instead offer the
  subprotocols `sentinel.v1` and `bearer.<token>` (the server answers `sentinel.v1`), which
  keeps the token out of URLs (and so out of proxies' access logs).
- Rate limit: a token bucket per client IP (`api_rate_limit` requests per second, bursts of
  `api_rate_burst`); past it a 429 with `Retry-After`. Loopback clients are exempt unless
  `api_rate_limit_loopback` (the dashboard and local load tests run there).
- Request target: a path longer than `MAX_PATH` or a query string longer than `MAX_QUERY`
  bytes gets a 414 naming the limit, before any route sees it.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

#: Longest path (bytes, percent-decoded as the server gives it) and query string accepted.
MAX_PATH = 2048
MAX_QUERY = 4096
#: Routes anyone may call, token or not: probes, and pages that carry no market data.
PUBLIC_PATHS = frozenset(
    {"/health", "/ready", "/", "/dashboard", "/docs", "/redoc", "/openapi.json"}
)
PUBLIC_PREFIXES = ("/dashboard/assets/", "/docs/assets/")
#: Where a browser may put the token in the URL (it cannot set headers there).
QUERY_TOKEN_PATHS = frozenset({"/v1/stream", "/v1/stream/sse"})
QUERY_TOKEN = "access_token"
#: A WebSocket client may offer the token as the subprotocol `bearer.<token>` next to
#: `sentinel.v1`, which the server picks (so the token is not echoed back), e.g.
#: `new WebSocket(url, ["sentinel.v1", "bearer." + token])`: no token in any URL.
PROTOCOL = "sentinel.v1"
PROTOCOL_TOKEN = "bearer."
#: Client IPs whose buckets are remembered at most (full buckets are forgotten first).
MAX_BUCKETS = 10_000
#: WebSocket close code for a refused handshake when the server cannot send an HTTP answer.
CLOSE_POLICY = 1008


@dataclass(frozen=True)
class ApiSecurity:
    """The security settings the API enforces (`from_settings` reads them)."""

    token: str | None = None
    rate: float = 0.0  # requests per second per client IP; 0: no limit
    burst: int = 200
    limit_loopback: bool = False
    host: str = "127.0.0.1"

    def __repr__(self) -> str:  # never the token
        token = "set" if self.token else "none"
        return f"ApiSecurity(token={token}, rate={self.rate}, burst={self.burst})"

    @classmethod
    def from_settings(cls, settings: Any) -> ApiSecurity:
        secret = settings.api_token
        return cls(
            token=secret.get_secret_value() if secret is not None else None,
            rate=settings.api_rate_limit,
            burst=settings.api_rate_burst,
            limit_loopback=settings.api_rate_limit_loopback,
            host=settings.host,
        )

    def warn_if_open(self) -> None:
        """One warning when the API listens beyond this machine with no token."""
        if self.token is None and not is_loopback(self.host):
            log.warning(
                "the API listens on %s without an API token: anyone who can reach it can read"
                " it; set SENTINEL_API_TOKEN (see README, Security)",
                self.host,
            )


@functools.lru_cache(maxsize=4096)  # asked per request: parse each address once
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def same_token(given: str, token: str) -> bool:
    """Constant-time comparison (of the UTF-8 bytes: `compare_digest` refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


class Buckets:
    """Token buckets per client key: `rate` per second refill, at most `burst` stored."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.state: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """0.0 when a request may go ahead, else the seconds until one may."""
        now = self.clock()
        tokens, at = self.state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self.state[key] = (tokens - 1.0, now)
            if len(self.state) > MAX_BUCKETS:
                self.prune(now)
            return 0.0
        self.state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def prune(self, now: float) -> None:
        """Forget clients whose bucket has refilled (as if never seen); then the oldest."""
        full = self.burst / self.rate
        self.state = {k: v for k, v in self.state.items() if now - v[1] < full}
        while len(self.state) > MAX_BUCKETS // 2:
            del self.state[next(iter(self.state))]


class Guard:
    """Pure ASGI middleware: request-target bounds, rate limit, then the token."""

    def __init__(self, app: ASGIApp, security: ApiSecurity) -> None:
        self.app = app
        self.security = security
        self.buckets = Buckets(security.rate, security.burst) if security.rate > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        query: bytes = scope.get("query_string", b"")
        if len(path.encode("utf-8", "replace")) > MAX_PATH:
            await refuse(scope, receive, send, 414, f"path too long: at most {MAX_PATH} bytes")
            return
        if len(query) > MAX_QUERY:
            message = f"query string too long: at most {MAX_QUERY} bytes"
            await refuse(scope, receive, send, 414, message)
            return
        if self.buckets is not None:
            client = scope.get("client")
            ip = client[0] if client else "unknown"
            if self.security.limit_loopback or not is_loopback(ip):
                wait = self.buckets.take(ip)
                if wait > 0:
                    seconds = max(1, math.ceil(wait))
                    message = (
                        f"rate limit: at most {self.security.rate:g} requests per second per"
                        f" client (bursts of {self.security.burst}); retry after {seconds} s"
                    )
                    headers = [(b"retry-after", str(seconds).encode())]
                    await refuse(scope, receive, send, 429, message, headers)
                    return
        token = self.security.token
        if token is not None and not is_public(path):
            problem = self.check_token(scope, token)
            if problem is not None:
                headers = [(b"www-authenticate", b'Bearer realm="crypto-sentinel"')]
                await refuse(scope, receive, send, 401, problem, headers)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def check_token(scope: Scope, token: str) -> str | None:
        """None when the request carries the token, else what is wrong (never the token)."""
        given: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not credentials.strip():
                    return "the Authorization header must be: Bearer <API token>"
                given = credentials.strip()
                break
        if given is None and scope["type"] == "websocket":
            for offered in scope.get("subprotocols", ()):
                if offered.startswith(PROTOCOL_TOKEN):
                    given = offered.removeprefix(PROTOCOL_TOKEN)
                    break
        if given is None and scope["path"] in QUERY_TOKEN_PATHS:
            query = scope.get("query_string", b"").decode("latin-1")
            found = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == QUERY_TOKEN]
            if found:
                given = found[-1]
        if given is None:
            return "API token required: send the header Authorization: Bearer <API token>"
        if not same_token(given, token):
            return "invalid API token"
        return None


async def refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """The API's JSON error, as an HTTP answer (a WebSocket handshake gets it as its denial
    response, or a close with code 1008 and the message when the server cannot send one)."""
    body = orjson.dumps({"error": message, "status": status})
    all_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": message[:120]})
            return
        prefix = "websocket."
    else:
        prefix = ""
    await send({"type": f"{prefix}http.response.start", "status": status, "headers": all_headers})
    await send({"type": f"{prefix}http.response.body", "body": body})
