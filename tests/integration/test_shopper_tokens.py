"""Shopper identity on the real service (issue 17, item 1): with a JWT key set, a token
for user A cannot place, read or cancel user B's orders; what was placed is decided."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import pytest

from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration

SECRET = "a-shop-secret-of-at-least-32-bytes!"
ISSUER, AUDIENCE = "https://shop.example", "orderstream"
PRODUCT = "sku-jwt"


def token(user: str, **claims: Any) -> dict[str, str]:
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "exp": int(time.time()) + 300}
    return {"Authorization": f"Bearer {jwt.encode(body | claims, SECRET, algorithm='HS256')}"}


async def test_a_token_for_one_user_cannot_touch_another_users_orders(pipeline: Pipeline) -> None:
    pipeline.start(
        ORDERSTREAM_JWT_HS256_SECRET=SECRET,
        ORDERSTREAM_JWT_ISSUER=ISSUER,
        ORDERSTREAM_JWT_AUDIENCE=AUDIENCE,
    )
    await pipeline.set_stock(PRODUCT, 10)
    await pipeline.wait_for_stock(PRODUCT, 10)
    base = await pipeline.wait_for_status_service()
    alice, bob = token("alice"), token("bob")
    order = {"order_id": "jwt-1", "user_id": "alice", "product_id": PRODUCT, "quantity": 1}
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> int:
            async with http.request(method, base + path, headers=headers, **kw) as response:
                if response.status == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "error" in await response.json() or response.status < 400
                return response.status

        # No token, an expired one, one for another audience, an unsigned one: 401.
        assert await call("POST", "/orders", {}, json=order) == 401
        for bad in (
            token("alice", exp=int(time.time()) - 60),
            token("alice", aud="another-service"),
            {"Authorization": "Bearer " + jwt.encode({"sub": "alice"}, None, algorithm="none")},
        ):
            assert await call("POST", "/orders", bad, json=order) == 401
        # Bob may not order as Alice; Alice may.
        assert await call("POST", "/orders", bob, json=order) == 403
        assert await call("POST", "/orders", alice, json=order) == 202
        await pipeline.wait_for_orders(1)
        # Alice sees her order and her list; Bob sees neither (as if unknown), nor cancels.
        assert await call("GET", "/orders/jwt-1", alice) == 200
        assert await call("GET", "/orders/jwt-1", bob) == 404
        assert await call("GET", "/users/alice/orders", alice) == 200
        assert await call("GET", "/users/alice/orders", bob) == 404
        assert await call("GET", "/orders/jwt-1", {}) == 401
        assert await call("POST", "/orders/jwt-1/cancel", bob) == 404
        assert await call("POST", "/orders/jwt-1/cancel", alice) == 202
        # Health and the catalog stay open.
        assert await call("GET", "/healthz", {}) == 200
        assert await call("GET", f"/products/{PRODUCT}", {}) == 200
    await assert_invariants(pipeline, {PRODUCT: 10}, {"jwt-1"})
