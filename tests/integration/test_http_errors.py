"""Every HTTP error answers JSON with a reason and the right status; hostile input gets a 4xx.

Most cases run the application on the test's PostgreSQL schema and Kafka topics through
aiohttp's test server; what aiohttp refuses before any application code runs (a request
line it cannot parse) and the timestamps of a real order run against `orderstream run`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from orderstream.db import connection_kwargs
from orderstream.http import create_app
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MIB = 1024 * 1024


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.fixture
async def client(pipeline: Pipeline) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(pipeline.settings, CollectorRegistry())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


ORDER = {"order_id": "h1", "user_id": "u", "product_id": "p", "quantity": 1}


class Case(NamedTuple):
    method: str
    path: str
    body: bytes | None
    status: int
    reason: str  # a fragment of the answer's "error"


def get(path: str, status: int, reason: str) -> Case:
    return Case("GET", path, None, status, reason)


def post(body: bytes, status: int, reason: str) -> Case:
    return Case("POST", "/orders", body, status, reason)


def order(**changes: Any) -> bytes:
    return json.dumps(ORDER | changes).encode()


NUL_ID_CURSOR = b64(b'["2026-01-01T00:00:00+00:00", "\\u0000"]')

# One case per kind of error.
CASES: dict[str, Case] = {
    "unknown route": get("/no/such/route", 404, "not found"),
    "unknown order": get("/orders/nobody-ordered-this", 404, "order not found"),
    "unknown product": get("/products/nothing", 404, "product not found"),
    "method not allowed": Case("PUT", "/orders/h1", b"{}", 405, "method PUT not allowed"),
    "body over 1 MiB": post(b" " * (5 * MIB), 413, f"larger than {MIB} bytes"),
    "not JSON": post(b"{nope", 400, "body is not JSON"),
    "invalid UTF-8": post(b'{"order_id": "\xff\xfe"}', 400, "body is not UTF-8"),
    "nested 100,000 deep": post(b"[" * 100_000, 400, "body is not JSON"),
    "5,000-digit integer": post(b'{"quantity": ' + b"9" * 5000 + b"}", 400, "body is not JSON"),
    "not an object": post(b"[1, 2]", 400, "must be a JSON object"),
    "invalid order": post(order(quantity=0), 422, "invalid order request"),
    "NUL in a body id": post(order(order_id="a\x00b"), 422, "invalid order request"),
    "NUL in order id": get("/orders/%00x", 400, "order_id contains a control"),
    "NUL in user id": get("/users/%00/orders", 400, "user_id contains a control"),
    "NUL in product id": get("/products/%00", 400, "product_id contains a control"),
    "final newline in order id": get("/orders/a%0A", 400, "order_id contains a control"),
    "invalid UTF-8 in a path id": get("/products/%ED%A0%80%C0%80", 404, "product not found"),
    "8 KB order id": get("/orders/" + "x" * 8000, 400, "longer than 200 characters"),
    "huge limit": get("/users/u/orders?limit=" + "9" * 30, 400, "limit must be between"),
    "5,000-digit limit": get("/users/u/orders?limit=" + "9" * 5000, 400, "limit must be"),
    "negative limit": get("/users/u/orders?limit=-1", 400, "limit must be between"),
    "limit not a number": get("/users/u/orders?limit=abc", 400, "limit must be an integer"),
    "cursor not base64 JSON": get("/users/u/orders?after=%00%ff", 400, "not a cursor"),
    "cursor with a NUL id": get(f"/users/u/orders?after={NUL_ID_CURSOR}", 400, "after contains"),
    "cursor nested deep": get(f"/users/u/orders?after={b64(b'[' * 5000)}", 400, "not a cursor"),
}


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), CASES.values(), ids=CASES)
async def test_each_error_answers_json_with_a_reason(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    reason: str,
) -> None:
    response = await client.request(method, path, data=body, skip_auto_headers=["Content-Type"])
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    answer = await response.json()
    assert reason in answer["error"]
    assert "Traceback" not in json.dumps(answer)


async def test_405_names_the_allowed_methods(client: TestClient[Any, Any]) -> None:
    response = await client.delete("/orders")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert await response.json() == {"error": "method DELETE not allowed here; allowed: POST"}
    response = await client.put("/orders/h1")
    assert response.headers["Allow"] == "GET,HEAD"


async def test_an_unexpected_error_is_logged_and_answers_500_json(
    pipeline: Pipeline, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A schema the service does not expect (here: a table gone) is a bug, not the
    # client's fault: a 500 without a traceback, and the traceback in the log.
    async with await psycopg.AsyncConnection.connect(
        pipeline.settings.database_url.get_secret_value(),
        **connection_kwargs(pipeline.settings) | {"autocommit": True},
    ) as conn:
        await conn.execute("ALTER TABLE orders RENAME TO orders_gone")
    with caplog.at_level(logging.ERROR, logger="orderstream.http"):
        response = await client.get("/orders/h1")
    assert response.status == 500
    assert response.content_type == "application/json"
    assert await response.json() == {"error": "internal error"}
    record = next(r for r in caplog.records if "unexpected error answering" in r.getMessage())
    assert record.exc_info is not None
    assert "GET /orders/h1" in record.getMessage()


async def test_readyz_alone_shows_only_its_checks(client: TestClient[Any, Any]) -> None:
    response = await client.get("/readyz")
    assert await response.json() == {
        "ready": True,
        "checks": {"postgres": "ok", "kafka": "ok"},
        "process": os.getpid(),  # the test server runs in this process
    }


async def test_the_running_service_answers_json_timestamps_and_refuses_in_json(
    pipeline: Pipeline,
) -> None:
    pipeline.start()
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    await pipeline.set_stock("sku-http", 1)
    await pipeline.wait_for_stock("sku-http", 1)
    await pipeline.publish([(b"sku-http", request_json("t1", "user-t", "sku-http"))])
    await pipeline.wait_for_orders(1)

    async with aiohttp.ClientSession(base) as http:
        async with http.get("/orders/t1") as response:
            order = await response.json()
        async with http.get("/users/user-t/orders") as response:
            listing = await response.json()
        async with http.get("/products/sku-http") as response:
            product = await response.json()
        stamps = [
            order["created_at"],
            order["updated_at"],
            *(event["occurred_at"] for event in order["history"]),
            listing["orders"][0]["created_at"],
            listing["orders"][0]["updated_at"],
            product["updated_at"],
        ]
        assert all(ISO_Z.match(stamp) for stamp in stamps), stamps

        # A megabyte path parameter never reaches a route: aiohttp refuses the request
        # line, and says why in JSON too.
        async with http.get("/orders/" + "x" * MIB) as response:
            assert response.status == 400
            assert response.content_type == "application/json"
            assert (await response.json())["error"] == "request line or header too long"

    # A request line with a raw NUL byte in it, as only a hostile client sends.
    reader, writer = await asyncio.open_connection("127.0.0.1", pipeline.settings.http_port)
    writer.write(b"GET /orders/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", head), raw
    assert b"application/json" in head
    assert "error" in json.loads(body)
    assert pipeline.alive(), pipeline.logs()
