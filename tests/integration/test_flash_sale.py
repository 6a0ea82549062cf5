"""A flash sale on the real broker and database: 100 units, 5,000 requests."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

STOCK = 100
USERS = 500
DISTINCT = 4500
RESENDS = 500
PRODUCERS = 5
PRODUCT = "sku-flash"


def flash_sale_requests(
    seed: int, distinct: int = DISTINCT, resends: int = RESENDS
) -> tuple[list[tuple[str, bytes]], set[str]]:
    """Return (order id, value) pairs (5,000: 500 of them exact re-sends), shuffled."""
    rng = random.Random(seed)
    originals = [
        (f"order-{i}", request_json(f"order-{i}", f"user-{rng.randrange(USERS)}", PRODUCT))
        for i in range(distinct)
    ]
    requests = originals + rng.sample(originals, resends)
    rng.shuffle(requests)
    return requests, {order_id for order_id, _ in originals}


async def publish_concurrently(pipe: Pipeline, requests: list[tuple[str, bytes]]) -> None:
    """Publish from several independent producers at once, keyed by product."""

    async def one_producer(share: list[tuple[str, bytes]]) -> None:
        producer = await pipe.producer()
        try:
            sends = [
                await producer.send(pipe.topic("order-requests"), key=PRODUCT.encode(), value=v)
                for _, v in share
            ]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    await asyncio.gather(*(one_producer(requests[i::PRODUCERS]) for i in range(PRODUCERS)))


async def test_flash_sale_sells_exactly_the_stock(pipeline: Pipeline) -> None:
    pipeline.start()
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    requests, distinct = flash_sale_requests(seed=11)
    assert len(requests) == 5000

    await publish_concurrently(pipeline, requests)
    await pipeline.wait_for_orders(DISTINCT)

    statuses = await pipeline.query(
        "SELECT status, reason, count(*) AS n FROM orders GROUP BY 1, 2 ORDER BY 1"
    )
    assert statuses == [
        {"status": "REJECTED", "reason": "OUT_OF_STOCK", "n": DISTINCT - STOCK},
        {"status": "RESERVED", "reason": None, "n": STOCK},
    ]
    stock = await pipeline.query(
        "SELECT available, reserved, sold FROM product_stock WHERE product_id = %s", (PRODUCT,)
    )
    assert stock == [{"available": 0, "reserved": STOCK, "sold": 0}]
    await assert_invariants(pipeline, {PRODUCT: STOCK}, distinct)

    # The status service agrees with the table.
    sample = await pipeline.query(
        "SELECT order_id, status, reason FROM orders ORDER BY random() LIMIT 25"
    )
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    async with aiohttp.ClientSession() as http:
        for row in sample:
            async with http.get(f"{base}/orders/{row['order_id']}") as response:
                assert response.status == 200
                body = await response.json()
            assert (body["status"], body["reason"]) == (row["status"], row["reason"])
        async with http.get(f"{base}/orders/never-placed") as response:
            assert response.status == 404
            assert (await response.json())["error"] == "order not found"
        async with http.get(f"{base}/products/{PRODUCT}") as response:
            body = await response.json()
            assert (body["available"], body["reserved"]) == (0, STOCK)
