"""JSON out: every answer through its model (http/schemas.py), every error as ``ErrorBody``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from pydantic import BaseModel

from orderstream.http.schemas import ErrorBody, ErrorDetail

JSON = "application/json"


def model_response(
    body: BaseModel, status: int = 200, headers: CIMultiDict[str] | None = None
) -> web.Response:
    """Return ``body`` serialised as JSON with ``status``."""
    return web.Response(
        text=body.model_dump_json(), status=status, headers=headers, content_type=JSON
    )


def error_body(
    reason: str,
    *,
    details: Sequence[Any] | None = None,
    order_id: str | None = None,
    product_id: str | None = None,
) -> ErrorBody:
    """Return ``{"error": reason}``, with what it concerns when given.

    ``details``: pydantic's errors (``ValidationError.errors()``), or ``ErrorDetail``s.
    """
    return ErrorBody(
        error=reason,
        details=None if details is None else [ErrorDetail.model_validate(d) for d in details],
        order_id=order_id,
        product_id=product_id,
    )


def error_response(
    status: int,
    reason: str,
    headers: CIMultiDict[str] | None = None,
    *,
    details: Sequence[Any] | None = None,
    order_id: str | None = None,
    product_id: str | None = None,
) -> web.Response:
    """Return ``{"error": reason, ...}`` with ``status``; see ``error_body``."""
    body = error_body(reason, details=details, order_id=order_id, product_id=product_id)
    return model_response(body, status=status, headers=headers)


def error(
    status: type[web.HTTPException],
    reason: str,
    *,
    details: Sequence[Any] | None = None,
    order_id: str | None = None,
    product_id: str | None = None,
) -> web.HTTPException:
    """Return an HTTP exception to raise, whose body is ``{"error": reason, ...}``."""
    body = error_body(reason, details=details, order_id=order_id, product_id=product_id)
    return status(text=body.model_dump_json(), content_type=JSON)
