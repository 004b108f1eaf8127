"""JSON responses rendered with orjson (decimals as exact strings, times as ISO-8601 UTC)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette import responses

from crypto_sentinel.api.render import iso
from crypto_sentinel.model import format_decimal


class JSONResponse(responses.JSONResponse):
    """A JSON response (FastAPI documents it as such) rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(type(value).__name__)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """The one error body of the API: never a 200 carrying an error."""
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)
