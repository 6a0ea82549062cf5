"""Every error answers JSON: ``{"error": reason}``, the right status, the right headers."""

from __future__ import annotations

import logging

import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from orderstream.http.encoding import JSON, error_response
from orderstream.http.validation import MAX_BODY_BYTES

log = logging.getLogger(__name__)

# Headers of aiohttp's own error that describe its plain-text body, not the error.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error with a JSON reason, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == JSON:
            raise  # a redirect, or an error a route already wrote as JSON
        return as_json(exc)
    except psycopg.OperationalError as exc:
        log.warning("PostgreSQL unavailable for %s %s: %s", request.method, request.path, exc)
        return error_response(503, "database unavailable, retry later")
    except Exception:
        # A bug, or a failure nobody foresaw: the log gets the traceback, the client not.
        log.exception("unexpected error answering %s %s", request.method, request.rel_url)
        return error_response(500, "internal error")


def as_json(exc: web.HTTPException) -> web.Response:
    """Return aiohttp's error ``exc`` as JSON, keeping its status and headers (Allow, ...)."""
    headers = CIMultiDict(
        (name, value) for name, value in exc.headers.items() if name.lower() not in _BODY_HEADERS
    )
    return error_response(exc.status, reason_of(exc), headers=headers)


def reason_of(exc: web.HTTPException) -> str:
    """Say in a sentence what aiohttp refused, without echoing what the client sent."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {exc.method} not allowed here; allowed: {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"request body larger than {MAX_BODY_BYTES} bytes"
    if isinstance(exc, web.HTTPNotFound):
        return "not found"
    return exc.reason.lower()
