"""Shopper identity at the door (opt-in): a JWT names the user, nobody acts as another.

With ``ORDERSTREAM_JWT_HS256_SECRET`` or ``ORDERSTREAM_JWT_PUBLIC_KEY_FILE`` set (plus the
issuer and audience the tokens must name), the shopper routes need ``Authorization:
Bearer <jwt>``, and the user is the token's ``sub``: an order placed for another user is
403, another user's order or list is 404 (as if unknown: no existence leak). A token
that is missing, expired, not yet valid, for another issuer or audience, or badly
signed is 401 with ``WWW-Authenticate``. The algorithm is fixed by the key, never read
from the token: no ``alg: none``, no HS256 token verified with an RSA public key.
Without those settings no route asks for a token and an order's ``user_id`` is trusted as
sent (the local tour).
"""

from __future__ import annotations

import re
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from multidict import CIMultiDict

from orderstream.errors import OrderstreamError
from orderstream.http.auth import bearer_token
from orderstream.http.encoding import error_body
from orderstream.http.keys import SETTINGS
from orderstream.settings import Settings
from orderstream.topics import ID_MAX_LENGTH, ID_PATTERN

__all__ = ["SHOPPERS", "Shoppers", "shopper"]

CHALLENGE = 'Bearer realm="orderstream"'
_ID = re.compile(ID_PATTERN)
# An HS256 secret shorter than the hash is guessable offline from one token (RFC 7518).
MIN_SECRET_BYTES = 32


class Shoppers:
    """Verify shoppers' tokens with the one key and algorithm the settings give."""

    def __init__(self, settings: Settings) -> None:
        self._key: Any
        if settings.jwt_hs256_secret is not None:
            secret = settings.jwt_hs256_secret.get_secret_value().encode()
            if len(secret) < MIN_SECRET_BYTES:
                raise OrderstreamError(
                    f"ORDERSTREAM_JWT_HS256_SECRET has {len(secret)} bytes; use at least"
                    f" {MIN_SECRET_BYTES} (an HS256 key shorter than its hash is guessable)"
                )
            self._key, self._algorithm = secret, "HS256"
        elif settings.jwt_public_key_file is not None:
            self._key, self._algorithm = _public_key(settings.jwt_public_key_file.read_bytes())
        else:
            raise OrderstreamError("no JWT key is configured")
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_s

    def user(self, token: str) -> str:
        """Return the user the token names; raise jwt.InvalidTokenError if it names none."""
        claims = jwt.decode(
            token,
            self._key,
            algorithms=[self._algorithm],
            audience=self._audience,
            issuer=self._issuer,
            leeway=self._leeway,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        sub = claims["sub"]
        if not isinstance(sub, str) or len(sub) > ID_MAX_LENGTH or not _ID.fullmatch(sub):
            raise jwt.InvalidTokenError("sub is no user id")
        return sub


def _public_key(pem: bytes) -> tuple[Any, str]:
    key = load_pem_public_key(pem)
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise OrderstreamError("ORDERSTREAM_JWT_PUBLIC_KEY_FILE: an RSA or a P-256 public key (PEM)")


SHOPPERS = web.AppKey("shoppers", Shoppers)


def install(app: web.Application) -> None:
    """Give ``app`` its token verifier when the settings name a key."""
    settings = app[SETTINGS]
    if settings.jwt_hs256_secret is not None or settings.jwt_public_key_file is not None:
        app[SHOPPERS] = Shoppers(settings)


def shopper(request: web.Request) -> str | None:
    """Return the user the request's token names; None when identity is off; raise 401."""
    shoppers = request.app.get(SHOPPERS)
    if shoppers is None:
        return None
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("this route needs an Authorization: Bearer <token> header")
    try:
        return shoppers.user(token)
    except jwt.ExpiredSignatureError:
        raise _unauthorized("the token has expired") from None
    except jwt.InvalidTokenError:
        # Never the library's message: it may quote the token's claims back.
        raise _unauthorized("the token is not valid here") from None


def _unauthorized(reason: str) -> web.HTTPException:
    body = error_body(reason)
    challenge = f'{CHALLENGE}, error="invalid_token"'
    return web.HTTPUnauthorized(
        text=body.model_dump_json(),
        content_type="application/json",
        headers=CIMultiDict({"WWW-Authenticate": challenge}),
    )
