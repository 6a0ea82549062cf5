"""Requests on a partition that does not own their product are forwarded, decided once."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaProducer

from orderstream.domain import owner_partition
from orderstream.topics import DLQ_REASON_HEADER
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


async def test_a_misrouted_request_too_large_to_forward_is_dead_lettered(
    pipeline: Pipeline,
) -> None:
    """Issue 21, item 1: a request that came compressed, over 1 MiB unpacked, on a
    partition that does not own its product. Forwarded as it was, the broker (or the
    producer) refuses it: the batch it was in was never announced, and the stop's final
    commit went past it. It is dead-lettered with its reason; the rest is decided."""
    partitions = pipeline.settings.partitions
    wrong = (owner_partition(PRODUCT, partitions) + 1) % partitions
    # A product that partition owns: its requests share the big one's batch.
    local = next(
        f"sku-local-{n}"
        for n in range(1000)
        if owner_partition(f"sku-local-{n}", partitions) == wrong
    )
    pipeline.start()
    for product_id in (PRODUCT, local):
        await pipeline.set_stock(product_id, STOCK)
    for product_id in (PRODUCT, local):
        await pipeline.wait_for_stock(product_id, STOCK)

    big = json.loads(request_json("order-big", "user-big", PRODUCT))
    big["pad"] = "a" * (2 * 1024 * 1024)  # an unknown field: ignored, but forwarded whole
    before = [(f"before-{n}", request_json(f"before-{n}", f"u-{n}", local)) for n in range(20)]
    after = [(f"after-{n}", request_json(f"after-{n}", f"v-{n}", local)) for n in range(20)]
    producer = AIOKafkaProducer(
        bootstrap_servers=pipeline.settings.kafka_bootstrap,
        compression_type="gzip",  # 2 MiB of one letter is a few KiB on the wire
        max_request_size=4 * 1024 * 1024,
        linger_ms=20,  # one produce request: the big one amid the others
    )
    await producer.start()
    try:
        topic = pipeline.topic("order-requests")
        sends = [await producer.send(topic, value=v, partition=wrong) for _, v in before]
        sends.append(await producer.send(topic, value=json.dumps(big).encode(), partition=wrong))
        sends += [await producer.send(topic, value=v, partition=wrong) for _, v in after]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    orders = {order_id for order_id, _ in before + after}
    await pipeline.wait_for_orders(len(orders))
    assert pipeline.alive(), pipeline.logs()
    [dead] = await pipeline.read_topic("order-requests-dlq")
    reason = dict(dead.headers)[DLQ_REASON_HEADER].decode()
    assert reason.startswith("TOO_LARGE"), reason
    await assert_invariants(pipeline, {PRODUCT: STOCK, local: STOCK}, orders)
    level = await pipeline.query(
        "SELECT available, reserved FROM product_stock WHERE product_id = %s", (local,)
    )
    assert level == [{"available": 0, "reserved": STOCK}]  # 40 asked, 25 there
