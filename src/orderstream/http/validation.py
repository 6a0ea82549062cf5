"""Input at the door: path ids and query parameters, refused with a 400 and a reason.

Path ids follow the rule of message ids (`topics.Id`): PostgreSQL refuses a NUL in text,
and an id that no message can carry names nothing this service knows.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime

from aiohttp import web

from orderstream.http.encoding import error
from orderstream.topics import ID_MAX_LENGTH, ID_PATTERN

# The largest request body read. An order request is well under 1 KiB; the limit only
# bounds what a hostile or broken client makes the service buffer (aiohttp reads a body
# whole into memory before it is parsed).
MAX_BODY_BYTES = 1024 * 1024

_ID = re.compile(ID_PATTERN)


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


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """Return the query parameter ``name`` as an int in ``[low, high]``, or raise 400."""
    raw = request.query.get(name)
    if raw is None:
        return default
    # Checked before int(): a digit string of any length is an integer to Python, and a
    # megabyte of them costs a conversion (or a ValueError past 4,300 digits).
    if len(raw) > len(str(high)) + 1:
        raise error(web.HTTPBadRequest, f"{name} must be between {low} and {high}")
    try:
        value = int(raw)
    except ValueError:
        raise error(web.HTTPBadRequest, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise error(web.HTTPBadRequest, f"{name} must be between {low} and {high}")
    return value


def encode_cursor(created_at: datetime, order_id: str) -> str:
    """Return an opaque cursor for keyset pagination (microseconds kept: rows tie on ms)."""
    raw = json.dumps([created_at.isoformat(), order_id])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Return what ``encode_cursor`` put in ``cursor``, or raise 400."""
    try:
        created_at, order_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        moment = datetime.fromisoformat(created_at)
    except (ValueError, TypeError, RecursionError, binascii.Error):
        # ValueError covers bad JSON, bad UTF-8, a wrong number of items and a bad date.
        raise error(web.HTTPBadRequest, "after is not a cursor this service gave") from None
    if not isinstance(order_id, str):
        raise error(web.HTTPBadRequest, "after is not a cursor this service gave")
    return moment, checked_id(order_id, "after")
