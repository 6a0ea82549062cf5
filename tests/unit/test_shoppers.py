"""Shopper tokens: the key fixes the algorithm; forged, expired, foreign or unsigned
tokens name nobody."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from orderstream.errors import OrderstreamError
from orderstream.http.shoppers import Shoppers
from orderstream.settings import Settings

SECRET = "s" * 32
CLAIMS = {"iss": "https://shop.example", "aud": "orderstream", "sub": "alice"}


def settings(**update: Any) -> Settings:
    base = {"jwt_issuer": CLAIMS["iss"], "jwt_audience": CLAIMS["aud"], "jwt_leeway_s": 0}
    return Settings.model_validate(base | update)


def claims(**update: Any) -> dict[str, Any]:
    return CLAIMS | {"exp": int(time.time()) + 60} | update


def pem(public_key: Any, tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_an_hs256_token_names_its_user_and_nothing_else_passes() -> None:
    shoppers = Shoppers(settings(jwt_hs256_secret=SECRET))
    assert shoppers.user(jwt.encode(claims(), SECRET, algorithm="HS256")) == "alice"
    refused = [
        jwt.encode(claims(), "x" * 32, algorithm="HS256"),  # forged: another key
        jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"),  # expired
        jwt.encode(claims(aud="another-service"), SECRET, algorithm="HS256"),
        jwt.encode(claims(iss="https://evil.example"), SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims().items() if k != "sub"}, SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"),
        jwt.encode(claims(sub="a\x00b"), SECRET, algorithm="HS256"),  # no user id
        jwt.encode(claims(), None, algorithm="none"),  # unsigned
        jwt.encode(claims(), SECRET, algorithm="HS512"),  # not the configured algorithm
        "not.a.token",
    ]
    for token in refused:
        with pytest.raises(jwt.InvalidTokenError):
            shoppers.user(token)


def test_an_rs256_key_refuses_an_hs256_token_signed_with_the_public_key(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = pem(private.public_key(), tmp_path)
    shoppers = Shoppers(settings(jwt_public_key_file=path))
    assert shoppers.user(jwt.encode(claims(), private, algorithm="RS256")) == "alice"
    # The classic confusion: the public key (which anyone has) used as an HMAC secret.
    # PyJWT refuses to even make it; the bytes a forger would send are made by hand here.
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwt.utils.base64url_encode(jwt.api_jws.json.dumps(claims()).encode())
    signed = header + b"." + payload
    mac = hmac.new(path.read_bytes(), signed, hashlib.sha256).digest()
    forged = (signed + b"." + jwt.utils.base64url_encode(mac)).decode()
    with pytest.raises(jwt.InvalidTokenError):
        shoppers.user(forged)
    with pytest.raises(jwt.InvalidTokenError):
        shoppers.user(jwt.encode(claims(), None, algorithm="none"))


def test_an_es256_key_verifies_es256_tokens(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    shoppers = Shoppers(settings(jwt_public_key_file=pem(private.public_key(), tmp_path)))
    assert shoppers.user(jwt.encode(claims(sub="bob"), private, algorithm="ES256")) == "bob"


def test_settings_refuse_a_short_secret_two_keys_or_no_audience(tmp_path: Path) -> None:
    with pytest.raises(OrderstreamError, match="at least 32"):
        Shoppers(settings(jwt_hs256_secret="short"))
    with pytest.raises(ValueError, match="not both"):
        settings(jwt_hs256_secret=SECRET, jwt_public_key_file=tmp_path / "k.pem")
    with pytest.raises(ValueError, match="ISSUER and ORDERSTREAM_JWT_AUDIENCE"):
        Settings.model_validate({"jwt_hs256_secret": SECRET})
