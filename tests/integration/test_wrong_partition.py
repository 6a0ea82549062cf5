"""Requests on a partition that does not own their product are forwarded, decided once."""

from __future__ import annotations

import json

import pytest

from orderstream.domain import owner_partition
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-misrouted"
STOCK = 25
ORDERS = 60


async def test_misrouted_requests_are_decided_by_the_owner(pipeline: Pipeline) -> None:
    partitions = pipeline.settings.partitions
    owner = owner_partition(PRODUCT, partitions)
    wrong = [p for p in range(partitions) if p != owner]
    pipeline.start()
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)

    # Every request on a wrong partition (as a producer with another partitioner would
    # send them), spread over all of them, some with no key at all.
    for n in range(ORDERS):
        key = None if n % 3 == 0 else PRODUCT.encode()
        value = request_json(f"order-{n}", f"user-{n}", PRODUCT)
        await pipeline.publish([(key, value)], partition=wrong[n % len(wrong)])

    await pipeline.wait_for_orders(ORDERS)
    stock = await pipeline.query("SELECT available, reserved FROM product_stock")
    assert stock == [{"available": 0, "reserved": STOCK}]
    await assert_invariants(pipeline, {PRODUCT: STOCK}, {f"order-{n}" for n in range(ORDERS)})

    # Decided once each: exactly one decision event per order on the topic (no duplicates
    # were sent, so a second event could only come from a second decision).
    events = [json.loads(r.value) for r in await pipeline.read_topic("order-events")]
    assert sorted(e["order_id"] for e in events) == sorted(f"order-{n}" for n in range(ORDERS))
    # And each request now also sits on its owner partition, where it was decided.
    requests = await pipeline.read_topic("order-requests")
    on_owner = [r for r in requests if r.partition == owner]
    assert len(on_owner) == ORDERS
    assert all(r.key == PRODUCT.encode() for r in on_owner)
