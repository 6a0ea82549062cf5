"""Input at the door: path ids, query parameters and JSON bodies, refused with a 400 and
a reason (a 422 with pydantic's details for a body that is JSON but not valid).

Path ids follow the rule of message ids (`topics.Id`): PostgreSQL refuses a NUL in text,
and an id that no message can carry names nothing this service knows.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orderstream.http.encoding import error
from orderstream.topics import ID_MAX_LENGTH, ID_PATTERN

# The largest request body read. An order request is well under 1 KiB; the limit only
# bounds what a hostile or broken client makes the service buffer (aiohttp reads a body
# whole into memory before it is parsed).
MAX_BODY_BYTES = 1024 * 1024

_ID = re.compile(ID_PATTERN)
# What encode_cursor makes: URL-safe base64.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]*={0,2}$"
_CURSOR = re.compile(CURSOR_PATTERN)
# Not int()'s rule: it also takes " 5", "+5", "1_0" and digits of other scripts.
_INTEGER = re.compile(r"-?[0-9]+")

M = TypeVar("M", bound=BaseModel)


def path_id(request: web.Request, name: str) -> str:
    """Return the path parameter ``name``, or raise 400 if no message id could be it."""
    return checked_id(request.match_info[name], name)


def checked_id(value: str, name: str) -> str:
    """Return ``value`` if it is a valid id, or raise 400 saying why it is not."""
    if not value:
        raise error(web.HTTPBadRequest, f"{name} is empty")
    if len(value) > ID_MAX_LENGTH:
        raise error(web.HTTPBadRequest, f"{name} is longer than {ID_MAX_LENGTH} characters")
    if not _ID.fullmatch(value):  # not match(): its "$" lets a final newline through
        raise error(web.HTTPBadRequest, f"{name} contains a control character (NUL, tab, ...)")
    return value


def header_id(request: web.Request, name: str) -> str | None:
    """Return the header ``name`` (None when absent), or raise 400 if no message id could be it."""
    values = request.headers.getall(name, [])
    if len(values) > 1:
        raise error(web.HTTPBadRequest, f"{name} is given more than once")
    if not values:
        return None
    try:
        values[0].encode()
    except UnicodeEncodeError:  # aiohttp keeps bytes that are not UTF-8 as surrogates
        raise error(web.HTTPBadRequest, f"{name} is not UTF-8") from None
    return checked_id(values[0], name)


def query_param(request: web.Request, name: str) -> str | None:
    """Return the query parameter ``name`` (None when absent), or raise 400 if it is repeated."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise error(web.HTTPBadRequest, f"{name} is given more than once")
    return values[0] if values else None


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """Return the query parameter ``name`` as an int in ``[low, high]``, or raise 400."""
    raw = query_param(request, name)
    if raw is None:
        return default
    # Checked before int(): a digit string of any length is an integer to Python, and a
    # megabyte of them costs a conversion (or a ValueError past 4,300 digits).
    if len(raw) > len(str(high)) + 1:
        raise error(web.HTTPBadRequest, f"{name} must be between {low} and {high}")
    if not _INTEGER.fullmatch(raw):
        raise error(web.HTTPBadRequest, f"{name} must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise error(web.HTTPBadRequest, f"{name} must be between {low} and {high}")
    return value


def encode_cursor(created_at: datetime, order_id: str) -> str:
    """Return an opaque cursor for keyset pagination (microseconds kept: rows tie on ms)."""
    raw = json.dumps([created_at.isoformat(), order_id])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def cursor_param(request: web.Request, name: str) -> tuple[datetime, str] | None:
    """Return the cursor in query parameter ``name``; None when absent or empty (page one)."""
    raw = query_param(request, name)
    return decode_cursor(raw) if raw else None


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Return what ``encode_cursor`` put in ``cursor``, or raise 400."""
    if not _CURSOR.fullmatch(cursor):
        raise error(web.HTTPBadRequest, "after is not a cursor this service gave")
    try:
        created_at, order_id = json.loads(base64.urlsafe_b64decode(cursor))
        moment = datetime.fromisoformat(created_at)
    except (ValueError, TypeError, RecursionError, binascii.Error):
        # ValueError covers bad JSON, bad UTF-8, a wrong number of items and a bad date.
        raise error(web.HTTPBadRequest, "after is not a cursor this service gave") from None
    # encode_cursor writes an aware timestamp; a naive one PostgreSQL would read in its
    # session's time zone.
    if not isinstance(order_id, str) or moment.tzinfo is None:
        raise error(web.HTTPBadRequest, "after is not a cursor this service gave")
    return moment, checked_id(order_id, "after")


async def json_object(request: web.Request, *, exact_numbers: bool = False) -> dict[str, Any]:
    """Return the request's body, a JSON object, or raise 400 saying why it is not one.

    ``exact_numbers``: every JSON number with a fraction is a Decimal (19.99 stays 19.99,
    never the float 19.989999999999998; strict ints still refuse 5.0), and NaN and
    Infinity, Python's extensions of JSON, are refused as not JSON.
    """
    raw = await request.read()  # 413 past MAX_BODY_BYTES
    try:
        # UTF-8 whatever the Content-Type's charset says: JSON is UTF-8 (RFC 8259).
        text = raw.decode("utf-8")
        if exact_numbers:
            body = json.loads(text, parse_float=Decimal, parse_constant=_not_json)
        else:
            body = json.loads(text)
    except UnicodeDecodeError:
        raise error(web.HTTPBadRequest, "body is not UTF-8") from None
    except (ValueError, RecursionError):
        # ValueError: not JSON, or an integer of more than 4,300 digits; RecursionError:
        # arrays nested thousands deep.
        raise error(web.HTTPBadRequest, "body is not JSON") from None
    if not isinstance(body, dict):
        raise error(web.HTTPBadRequest, "body must be a JSON object")
    return body


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def validated(model: type[M], body: dict[str, Any], reason: str) -> M:
    """Return ``body`` validated as ``model``, or raise 422 with ``reason`` and the details."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise error(web.HTTPUnprocessableEntity, reason, details=errors) from None
