"""JSON out: every answer, every error, every timestamp in one format."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

JSON = "application/json"


def iso_timestamp(moment: datetime) -> str:
    """Return ``2026-11-26T11:32:22.572Z``: UTC, milliseconds, a Z.

    A naive datetime is taken as UTC: every timestamp column is ``timestamptz``, and the
    service never makes naive ones.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(data: Any) -> str:
    return json.dumps(data, default=_default)


def json_response(
    data: Any, status: int = 200, headers: CIMultiDict[str] | None = None
) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


def error_response(
    status: int, reason: str, headers: CIMultiDict[str] | None = None, **extra: Any
) -> web.Response:
    """Return ``{"error": reason, ...extra}`` with ``status``."""
    return json_response({"error": reason, **extra}, status=status, headers=headers)


def error(status: type[web.HTTPException], reason: str, **extra: Any) -> web.HTTPException:
    """Return an HTTP exception to raise, whose body is ``{"error": reason, ...extra}``."""
    return status(text=dumps({"error": reason, **extra}), content_type=JSON)
