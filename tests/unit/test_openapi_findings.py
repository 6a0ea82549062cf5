"""What fuzzing and probing the status service against its document found, pinned.

Each case is refused before PostgreSQL or Kafka is asked, so the application runs here
on a pool that is never opened.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from orderstream.http import create_app
from orderstream.http.schemas import ErrorBody
from orderstream.settings import Settings

ORDER = b'{"order_id": "o-1", "user_id": "u", "product_id": "p", "quantity": 1}'


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(Settings(), CollectorRegistry(), pool=AsyncConnectionPool("", open=False))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def cursor(*items: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(items).encode()).decode()


async def raw_request(client: TestClient[Any, Any], head: bytes, body: bytes) -> tuple[int, Any]:
    """Send bytes no HTTP client library sends (a header that is not UTF-8)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_an_idempotency_key_that_is_not_utf8_is_refused_not_a_500(
    client: TestClient[Any, Any],
) -> None:
    # Found by probing: echoed in the 422 of "Idempotency-Key and order_id differ", the
    # key's undecodable bytes (surrogates to Python) could not be serialised: a 500.
    head = b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: \xe9t\xe9\r\n"
    status, answer = await raw_request(client, head, ORDER)
    assert (status, answer) == (400, {"error": "Idempotency-Key is not UTF-8"})


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"", "Idempotency-Key is empty"),
        (b"k" * 201, "Idempotency-Key is longer than 200 characters"),
        (b"a\tb", "Idempotency-Key contains a control character"),
    ],
    ids=["empty", "too long", "tab"],
)
async def test_an_idempotency_key_no_order_id_could_be_is_refused(
    client: TestClient[Any, Any], key: bytes, reason: str
) -> None:
    head = b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: " + key + b"\r\n"
    status, answer = await raw_request(client, head, ORDER)
    assert status == 400
    assert answer["error"].startswith(reason)


async def test_a_repeated_idempotency_key_is_refused(client: TestClient[Any, Any]) -> None:
    headers = [("Idempotency-Key", "o-1"), ("Idempotency-Key", "o-2")]
    response = await client.post("/orders", data=ORDER, headers=headers)
    assert response.status == 400
    assert await response.json() == {"error": "Idempotency-Key is given more than once"}


# Found by probing: int() took each of these as a limit the document does not allow, and
# the first of two values won.
@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("limit=%205", "limit must be an integer"),
        ("limit=%2B5", "limit must be an integer"),
        ("limit=1_0", "limit must be an integer"),
        ("limit=%D9%A5", "limit must be an integer"),  # ARABIC-INDIC DIGIT FIVE
        ("limit=1&limit=abc", "limit is given more than once"),
        (f"after={cursor('2026-11-26T00:00:00+00:00', 'o')}&after=", "after is given more"),
        (f"after={cursor('2026-11-26T00:00:00', 'o')}", "after is not a cursor this service"),
        (f"after={cursor('2026-11-26', 'o')}", "after is not a cursor this service gave"),
        ("after=W10%2B", "after is not a cursor this service gave"),  # "+": not URL-safe
    ],
    ids=[
        "space",
        "plus sign",
        "underscore",
        "other script",
        "limit twice",
        "after twice",
        "naive timestamp",
        "date",
        "not URL-safe base64",
    ],
)
async def test_a_query_parameter_outside_the_document_is_refused(
    client: TestClient[Any, Any], query: str, reason: str
) -> None:
    response = await client.get(f"/users/u/orders?{query}")
    assert response.status == 400
    answer = await response.json()
    assert answer["error"].startswith(reason)
    ErrorBody.model_validate(answer)
