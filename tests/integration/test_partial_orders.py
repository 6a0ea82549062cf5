"""An order whose lines never all come holds nothing for long (issue 21: free holds).

Five requests that each claim to be one line of an order of two, and no other line,
used to hold their units until the TTL (10 minutes by default): anyone could freeze a
drop with a handful of requests. On Kafka, an order of several lines is published in one
transaction, so its lines come within the stock partitions' lag of each other: the
order agent waits ORDERSTREAM_LINES_WAIT_S (default 30 s) for the rest, then rejects
the order and releases what its lines hold. HTTP refuses a one-line body that claims
more lines (it sends the lines itself, from ``items``).

The test waits 8 s for the lines, not the default 30: the same path, 22 s sooner, and
long enough to see the lines held first on a busy machine. That the default releases
them within the minute the issue asks for is checked against the setting itself.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from orderstream.settings import Settings
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration

PRODUCT = "lc-free"
STOCK = 5
LINES_WAIT_S = 8
LIFECYCLE_ENV = {
    "ORDERSTREAM_ORDERS_METRICS_PORT": "0",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.01",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.05",
    "ORDERSTREAM_LINES_WAIT_S": str(LINES_WAIT_S),
}


def _partial(order_id: str) -> bytes:
    line = {"order_id": order_id, "user_id": f"u-{order_id}", "product_id": PRODUCT}
    return json.dumps(line | {"quantity": 1, "line_count": 2}).encode()


async def _level_is(pipe: Pipeline, **expected: int) -> bool:
    rows = await pipe.query("SELECT available, reserved FROM product_stock")
    return rows == [expected]


async def test_lines_of_an_order_that_never_completes_are_released(pipeline: Pipeline) -> None:
    # What a user runs: the default TTL (600 s), and a lines wait of a minute at most.
    assert Settings.model_fields["lines_wait_s"].default <= 60
    pipeline.start()
    pipeline.start("orders", **LIFECYCLE_ENV)  # only the lines wait shorter
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    base = await pipeline.wait_for_status_service()

    # HTTP: a one-line body that claims a second line is refused, and holds nothing.
    async with aiohttp.ClientSession() as http:
        body = {"order_id": "free-http", "user_id": "x1", "product_id": PRODUCT}
        async with http.post(f"{base}/orders", json=body | {"quantity": 1, "line_count": 2}) as r:
            assert r.status == 422, await r.text()
            answer = await r.json()
            assert "line_count" in answer["error"] + json.dumps(answer.get("details", "")), answer

    # Kafka: five such lines, no other line ever comes.
    orders = {f"free-{i}" for i in range(5)}
    await pipeline.publish((PRODUCT.encode(), _partial(order_id)) for order_id in sorted(orders))
    # Held while they assemble (an order shows in PostgreSQL once it is decided).
    await pipeline.wait_for(
        "the five lines held",
        lambda: _level_is(pipeline, available=0, reserved=STOCK),
    )

    deadline = time.monotonic() + 60  # "hold nothing a minute later"
    while True:
        level = (await pipeline.query("SELECT * FROM product_stock"))[0]
        statuses = await pipeline.query("SELECT order_id, status, reason FROM orders")
        if level["reserved"] == 0 and all(row["status"] == "REJECTED" for row in statuses):
            break
        assert time.monotonic() < deadline, f"{level}, {statuses}\n{pipeline.logs()}"
        await asyncio.sleep(0.5)

    # The invariants: stock conserved, nothing sold, each order final once, nothing else.
    assert (level["available"], level["reserved"], level["sold"]) == (STOCK, 0, 0), level
    assert level["total_in"] == STOCK
    assert {row["order_id"] for row in statuses} == orders
    assert {(row["status"], row["reason"]) for row in statuses} == {("REJECTED", "INVALID")}
    history = await pipeline.query(
        "SELECT order_id, array_agg(status ORDER BY seq) AS statuses FROM order_events GROUP BY 1"
    )
    assert {row["order_id"]: row["statuses"] for row in history} == {
        order_id: ["REJECTED"] for order_id in orders
    }
    # Each order's one line shows once, no longer holding (the stock says it came back).
    items = await pipeline.query("SELECT order_id, status FROM order_items")
    assert sorted(row["order_id"] for row in items) == sorted(orders), items
    assert {row["status"] for row in items} <= {"REJECTED", "RELEASED"}, items
