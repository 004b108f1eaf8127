"""`/health` (is it working, and if not why), `/ready` (serve live data?) and `/metrics`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from crypto_sentinel.api.context import ApiContext
from crypto_sentinel.api.responses import JSONResponse
from crypto_sentinel.api.schemas import Health, Ready

#: A connected source with no frame for this long is reported (quiet markets still send
#: heartbeats every second on Coinbase).
STALE_SECONDS = 30.0
#: Missing trades still waiting for REST backfill after this long make the status degraded
#: (the backfill normally fetches within a few seconds; see sources/backfill.py).
BACKFILL_BEHIND_SECONDS = 60.0


_KAFKA_CODE = re.compile(r"code=(\w+)")


def public_error(text: str) -> str:
    """What an error string may say in a public response: its kind, never the addresses,
    host names or paths it carries (the full text is in the process's log)."""
    if not text:
        return ""
    code = _KAFKA_CODE.search(text)
    if code:
        return code.group(1)
    kind = text.split(":", 1)[0].strip()
    return kind if kind.isidentifier() else "error (details in the log)"


def _public_source(src: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in src.items() if k != "url"}
    for key in ("last_error", "last_disconnect"):
        if key in out:
            out[key] = public_error(str(out[key] or ""))
    return out


def public_status(status: dict[str, Any]) -> dict[str, Any]:
    """`status` without operator detail: no lake path, no source URL, errors by kind only."""
    out = dict(status)
    lake = out.pop("lake", None)
    if lake is not None:
        out["lake"] = "object storage" if "://" in str(lake) else "local folder"
    if isinstance(out.get("source"), dict):
        out["source"] = _public_source(out["source"])
    if isinstance(out.get("sources"), list):
        out["sources"] = [_public_source(s) for s in out["sources"] if isinstance(s, dict)]
    producer = out.get("kafka_producer")
    if isinstance(producer, dict) and "last_error" in producer:
        out["kafka_producer"] = {
            **producer,
            "last_error": public_error(str(producer["last_error"] or "")),
        }
    return out


def health_reasons(status: dict[str, Any]) -> list[str]:
    reasons = []
    src = status.get("source")
    if isinstance(src, dict) and not src.get("finished"):
        if not src.get("connected"):
            error = public_error(src.get("last_error") or "") or "no connection yet"
            reasons.append(f"source not connected: {error}")
        else:
            age = src.get("last_frame_age_seconds")
            if age is not None and age > STALE_SECONDS:
                reasons.append(f"no frame for {age:.0f} s")
    if isinstance(src, dict):
        waited = src.get("backfill_oldest_pending_seconds") or 0.0
        if waited > BACKFILL_BEHIND_SECONDS:
            reasons.append(
                f"backfill behind: {src.get('backfill_pending_trades')} missing trades in"
                f" {src.get('backfill_pending_gaps')} gaps, the oldest waiting {waited:.0f} s"
            )
    return reasons


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter()

    @api.get(
        "/health",
        summary="Liveness, and what the pipeline is doing",
        response_class=JSONResponse,
        responses={200: {"model": Health}},
    )
    async def health() -> JSONResponse:
        status = public_status(ctx.status())
        reasons = health_reasons(status)
        state = ctx.state
        body = {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            **status,
            "hot_state": {
                "warm": state.warm,
                "products": len(state.trades),
                "trades": sum(len(state.ring(*pair) or ()) for pair in list(state.trades)),
                "minutes": sum(len(b.minutes) for b in state.candles.values()),
                "tickers": len(state.tickers),
            },
            "push": {"clients": len(ctx.hub.clients), "dropped": ctx.hub.dropped},
        }
        return JSONResponse(body)

    @api.get(
        "/ready",
        summary="200 when live data is being served, 503 otherwise",
        response_class=JSONResponse,
        responses={200: {"model": Ready}, 503: {"model": Ready, "description": "not ready"}},
    )
    async def ready() -> JSONResponse:
        reasons = []
        if not ctx.ready():
            reasons.append("source not live yet")
            reasons += health_reasons(public_status(ctx.status()))
        ok = not reasons
        return JSONResponse({"ready": ok, "reasons": reasons}, status_code=200 if ok else 503)

    @api.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    def prometheus() -> Response:
        ctx.state.refresh_rate()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api
