"""The admin routes' bearer token: who may restock, list every order, override a status.

Every /admin/ handler is wrapped by ``admin_only``, so the token is checked before the
request's path, query or body is even looked at. The token is compared in constant time
(digests of equal length: neither its characters nor its length leak through timing),
and it is never logged nor echoed: errors say what was wrong with the header, not what
it held.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from orderstream.http.encoding import error_response
from orderstream.http.keys import SETTINGS

# RFC 6750: a 401 names the scheme the client must use.
CHALLENGE = 'Bearer realm="orderstream-admin"'
DISABLED = "admin routes are disabled: ORDERSTREAM_ADMIN_TOKEN is not set"


def admin_only(handler: Handler) -> Handler:
    """Return ``handler`` behind the admin token: 401 without it, 403 when it is wrong."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        refused = refusal(request)
        if refused is not None:
            return refused
        return await handler(request)

    return checked


def refusal(request: web.Request) -> web.Response | None:
    """Return the answer refusing ``request``, or None when it carries the admin token."""
    secret = request.app[SETTINGS].admin_token
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected:
        # 403, not 401: no credentials would help, the operator must configure a token.
        return error_response(403, DISABLED)
    given = bearer_token(request)
    if given is None:
        return error_response(
            401,
            "admin routes need an Authorization: Bearer <token> header",
            headers=CIMultiDict({"WWW-Authenticate": CHALLENGE}),
        )
    if not tokens_match(given, expected):
        return error_response(403, "wrong admin token")
    return None


def bearer_token(request: web.Request) -> str | None:
    """Return the token of the request's one ``Authorization: Bearer`` header, else None."""
    values = request.headers.getall("Authorization", [])
    if len(values) != 1:
        return None  # none, or several: which one would count?
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    # The scheme is case-insensitive (RFC 7235); a token has no spaces (RFC 6750).
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def tokens_match(given: str, expected: str) -> bool:
    """Say whether ``given`` is ``expected``, in time independent of both."""
    # aiohttp keeps header bytes that are not UTF-8 as surrogates: encode them back as
    # they came, so that any header compares (and fails) without an exception.
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    expected_digest = hashlib.sha256(expected.encode()).digest()
    return hmac.compare_digest(given_digest, expected_digest)
