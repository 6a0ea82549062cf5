"""POST /orders' Idempotency-Key on the real stack: one order per key, whatever the retries.

`orderstream run` serves the intake; the records on order-requests say how often each
order was published, PostgreSQL what became of it. Services made in the test (Kafka or
PostgreSQL out of reach, a fresh process) share the test's schema and topics.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from orderstream.http import create_app
from orderstream.settings import Settings
from orderstream.topics import ORDER_REQUESTS
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline
from tests.integration.test_admin import serve

pytestmark = pytest.mark.integration

STOCK = {"sku-i": 100, "sku-j": 100}
BODY = {"user_id": "u-i", "product_id": "sku-i", "quantity": 2}
# The same order as BODY with key o-same: other key order, whitespace, a default spelt out.
SAME_ORDER_OTHERWISE = (
    '{ "quantity" : 2,\n  "line_count": 1, "product_id":"sku-i",'
    ' "order_id": "o-same",  "user_id":"u-i", "unknown": [1]}'
)
# Without the order agent (not run here) an order of several lines reaches no order event:
# its products are none of STOCK's, whose figures the invariants compare with the orders.
ITEMS = [{"product_id": "sku-x", "quantity": 1}, {"product_id": "sku-y", "quantity": 2}]


async def post(
    http: aiohttp.ClientSession, base: str, key: str | None, body: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body if isinstance(body, str) else json.dumps(body)
    async with http.post(f"{base}/orders", data=data, headers=headers) as response:
        return response.status, await response.json()


def published(order_id: str, lines: int = 1) -> dict[str, Any]:
    return {"order_id": order_id, "status_url": f"/orders/{order_id}", "lines": lines}


def reused(key: str) -> dict[str, Any]:
    return {"error": f"Idempotency-Key {key!r} was used with a different body", "order_id": key}


async def published_lines(pipe: Pipeline) -> Counter[str]:
    """Return how many lines of each order are on order-requests."""
    records = await pipe.read_topic(ORDER_REQUESTS)
    return Counter(json.loads(record.value)["order_id"] for record in records)


async def test_a_key_publishes_one_order_and_refuses_another_body(pipeline: Pipeline) -> None:
    base = await serve(pipeline)
    for product_id, quantity in STOCK.items():
        await pipeline.set_stock(product_id, quantity)
    async with aiohttp.ClientSession() as http:
        assert await post(http, base, "o-same", BODY) == (202, published("o-same"))
        # The same order spelt otherwise is the same order: the first answer again.
        assert await post(http, base, "o-same", SAME_ORDER_OTHERWISE) == (
            202,
            published("o-same"),
        )
        for other in (BODY | {"quantity": 3}, BODY | {"notes": "gift"}, BODY | {"user_id": "v"}):
            assert await post(http, base, "o-same", other) == (422, reused("o-same"))

        # An order of several lines: the items in another order are the same order.
        items = {"user_id": "u-i", "items": ITEMS}
        assert await post(http, base, "o-items", items) == (202, published("o-items", 2))
        reordered = items | {"items": ITEMS[::-1]}
        assert await post(http, base, "o-items", reordered) == (202, published("o-items", 2))
        assert await post(http, base, "o-items", items | {"items": ITEMS[:1]}) == (
            422,
            reused("o-items"),
        )

        # Concurrent retries of one order: every one answered as the first, one published.
        answers = await asyncio.gather(*(post(http, base, "o-race", BODY) for _ in range(20)))
        assert set(map(str, answers)) == {str((202, published("o-race")))}
        # Concurrent requests with two orders under one key: one order wins, whole.
        bodies = [BODY, BODY | {"quantity": 1}] * 10
        answers = await asyncio.gather(*(post(http, base, "o-mixed", b) for b in bodies))
        winners = {index % 2 for index, (status, _) in enumerate(answers) if status == 202}
        assert len(winners) == 1, answers
        for index, answer in enumerate(answers):
            won = index % 2 in winners
            assert answer == ((202, published("o-mixed")) if won else (422, reused("o-mixed")))

        # Without the header nothing is kept: the stock agent's dedup is the only one. The
        # answer then names the request's place in line (a keyed one never does: its
        # retries all get the first answer).
        status, answer = await post(http, base, None, BODY | {"order_id": "o-free"})
        place = {"partition": answer["partition"], "offset": answer["offset"]}
        query = f"?partition={place['partition']}&offset={place['offset']}&product_id="
        expected = published("o-free") | place
        expected["status_url"] += query + BODY["product_id"]
        assert (status, answer) == (202, expected)

    lines = await published_lines(pipeline)
    assert lines == {"o-same": 1, "o-items": 2, "o-race": 1, "o-mixed": 1, "o-free": 1}
    keys = await pipeline.query("SELECT key FROM idempotency_keys ORDER BY key")
    assert [row["key"] for row in keys] == ["o-items", "o-mixed", "o-race", "o-same"]
    single_line = set(lines) - {"o-items"}
    await pipeline.wait_for_orders(len(single_line))
    await assert_invariants(pipeline, STOCK, single_line)


async def test_a_claim_stands_only_for_a_published_order(pipeline: Pipeline) -> None:
    """Kafka down: the claim is dropped, a retry goes through. PostgreSQL down: a keyed
    request is refused (503), one without a key is not held up. Old keys expire."""
    base = await serve(pipeline)
    for product_id, quantity in STOCK.items():
        await pipeline.set_stock(product_id, quantity)
    no_kafka = pipeline.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    async with (
        _service(no_kafka) as client,
        client.post("/orders", json=BODY, headers={"Idempotency-Key": "o-retry"}) as response,
    ):
        assert response.status == 503
        assert await response.json() == {"error": "Kafka unavailable, retry later"}
    assert await pipeline.count("SELECT count(*) FROM idempotency_keys") == 0
    async with aiohttp.ClientSession() as http:
        assert await post(http, base, "o-retry", BODY) == (202, published("o-retry"))

    url = "postgresql://orderstream:wrong@127.0.0.1:1/orderstream"
    no_database = pipeline.settings.model_copy(update={"database_url": SecretStr(url)})
    async with _service(no_database) as client:
        keyed = {"Idempotency-Key": "o-nodb"}
        async with client.post("/orders", json=BODY, headers=keyed) as response:
            assert response.status == 503
            assert await response.json() == {"error": "database unavailable, retry later"}
        async with client.post("/orders", json=BODY | {"order_id": "o-nokey"}) as response:
            assert response.status == 202

    # A key older than the dedup window is deleted by the next process's first claim.
    await pipeline.query(
        "INSERT INTO idempotency_keys (key, body_sha256, created_at)"
        " VALUES ('o-old', sha256('x'), now() - interval '2 days') RETURNING key"
    )
    async with (
        _service(pipeline.settings) as client,
        client.post("/orders", json=BODY, headers={"Idempotency-Key": "o-fresh"}) as response,
    ):
        assert response.status == 202
    keys = await pipeline.query("SELECT key FROM idempotency_keys ORDER BY key")
    assert [row["key"] for row in keys] == ["o-fresh", "o-retry"]

    lines = await published_lines(pipeline)
    assert lines == {"o-retry": 1, "o-nokey": 1, "o-fresh": 1}
    await pipeline.wait_for_orders(len(lines))
    await assert_invariants(pipeline, STOCK, set(lines))


def _service(settings: Settings) -> TestClient[Any, Any]:
    return TestClient(TestServer(create_app(settings, CollectorRegistry())))
