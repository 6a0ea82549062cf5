"""The admin routes' bearer token: refused without it, refused when wrong, never logged.

The routes are registered as the service registers them (routes.add_routes) on an app
without PostgreSQL or Kafka: a request that passes the token check is then refused by
the handler's own validation (400, 422), which shows it got past the check.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from orderstream.http import routes
from orderstream.http.auth import DISABLED
from orderstream.http.errors import json_errors
from orderstream.http.keys import SETTINGS
from orderstream.settings import Settings

TOKEN = "s3cret-admin-token-\u00e9"  # not ASCII: the comparison works on bytes

# Each admin route, with a request its handler refuses before it needs PostgreSQL or
# Kafka: what it answers once the token is right.
ROUTES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "PUT /admin/products/{product_id}": ("PUT", "/admin/products/p-1", {"json": {}}, 422),
    "GET /admin/orders": ("GET", "/admin/orders?status=LOST", {}, 400),
    "POST /admin/orders/{order_id}/status": (
        "POST",
        "/admin/orders/o-1/status",
        {"json": {"status": "PAID", "reason": "r", "by": "op"}},
        422,
    ),
}


def _app(token: str | None) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = Settings(admin_token=None if token is None else SecretStr(token))
    routes.add_routes(app)
    return app


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(_app(TOKEN))) as client:
        yield client


def test_every_admin_route_is_listed_here() -> None:
    registered = {
        f"{route.method} {route.resource.canonical}"
        for route in _app(TOKEN).router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/admin")
    }
    # HEAD: aiohttp's, for GET, through the same (checked) handler; its test is below.
    assert registered == {*ROUTES, "HEAD /admin/orders"}


async def test_head_needs_the_token_too(client: TestClient[Any, Any]) -> None:
    async with client.head("/admin/orders") as response:
        assert response.status == 401
    async with client.head("/admin/orders", headers={"Authorization": "Bearer x"}) as response:
        assert response.status == 403


async def _call(
    client: TestClient[Any, Any], route: str, headers: Any = None
) -> tuple[int, Any, Any]:
    method, path, body, _ = ROUTES[route]
    async with client.request(method, path, headers=headers, **body) as response:
        return response.status, response.headers, await response.json()


@pytest.mark.parametrize("route", ROUTES)
async def test_the_right_token_passes(client: TestClient[Any, Any], route: str) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme is case-insensitive
        status, _, answer = await _call(client, route, {"Authorization": f"{scheme} {TOKEN}"})
        assert status == ROUTES[route][3], answer
        assert "token" not in answer["error"]


MALFORMED: dict[str, Any] = {
    "no header": None,
    "empty": {"Authorization": ""},
    "no token": {"Authorization": "Bearer"},
    "blank token": {"Authorization": "Bearer   "},
    "another scheme": {"Authorization": f"Basic {TOKEN}"},
    "no scheme": {"Authorization": TOKEN},
    "two words": {"Authorization": f"Bearer {TOKEN} {TOKEN}"},
    "twice": [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")],
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("headers", MALFORMED.values(), ids=MALFORMED)
async def test_no_token_is_401_with_a_challenge(
    client: TestClient[Any, Any], route: str, headers: Any
) -> None:
    status, response_headers, answer = await _call(client, route, headers)
    assert status == 401, answer
    assert response_headers["WWW-Authenticate"].startswith("Bearer ")
    assert answer == {"error": "admin routes need an Authorization: Bearer <token> header"}


WRONG = {
    "another": b"not-the-token",
    "a prefix": TOKEN[:-1].encode(),
    "longer": TOKEN.encode() + b"x",
    "other case": TOKEN.upper().encode(),
    "the token in Latin-1": TOKEN.encode("latin-1"),  # not UTF-8
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("token", WRONG.values(), ids=WRONG)
async def test_a_wrong_token_is_403(client: TestClient[Any, Any], route: str, token: bytes) -> None:
    method, path, _, _ = ROUTES[route]
    # Written on the socket: aiohttp's client would re-encode a header that is not UTF-8.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    writer.write(request + b"Authorization: Bearer " + token + b"\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 "), answer
    assert b"www-authenticate" not in head.lower()
    assert json.loads(body) == {"error": "wrong admin token"}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
async def test_without_a_configured_token_admin_is_disabled(route: str, token: str | None) -> None:
    async with TestClient(TestServer(_app(token))) as client:
        for headers in (None, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
            status, _, answer = await _call(client, route, headers)
            assert (status, answer) == (403, {"error": DISABLED})


async def test_the_token_is_never_logged_nor_echoed(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = []
    for route in ROUTES:
        for token in (TOKEN, TOKEN + "x", TOKEN[1:]):
            for scheme in ("Bearer", "Basic"):
                _, _, answer = await _call(client, route, {"Authorization": f"{scheme} {token}"})
                answers.append(str(answer))
    # The test server logs every request (aiohttp's access log): it did, without the token.
    assert any(record.name == "aiohttp.access" for record in caplog.records)
    secret = TOKEN[1:-1]  # any part of it that would give it away
    assert secret not in caplog.text
    assert not [answer for answer in answers if secret in answer]
    settings = Settings(admin_token=SecretStr(TOKEN))
    assert secret not in repr(settings)
    assert "ORDERSTREAM_ADMIN_TOKEN=***" in settings.as_env_lines()
