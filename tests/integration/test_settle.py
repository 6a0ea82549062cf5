"""A sale settles as fast as it is decided: cancels that overtake their orders, a TTL that
our own payment queue never runs out, and the lifecycle on two processes, one killed."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from orderstream.tables import lifecycle_app_id
from tests.integration.pipeline import Pipeline
from tests.integration.test_lifecycle import (
    LIFECYCLE_ENV,
    _assert_settled,
    _publish,
    _requests,
)

PAID_OR_SOLD_OUT = {
    ("CONFIRMED", None),
    ("CANCELLED", "PAYMENT_FAILED"),
    ("REJECTED", "OUT_OF_STOCK"),
}


async def _settled(pipe: Pipeline, orders: int, timeout: float, watch: str | None) -> None:
    """Wait until every order is terminal in PostgreSQL and nothing is reserved."""

    async def done() -> bool:
        final = await pipe.count(
            "SELECT count(*) FROM orders WHERE status IN"
            " ('CONFIRMED', 'REJECTED', 'CANCELLED', 'EXPIRED')"
        )
        reserved = await pipe.count("SELECT coalesce(sum(reserved), 0) FROM product_stock")
        return final == orders and reserved == 0

    await pipe.wait_for(f"{orders} orders final", done, timeout=timeout, watch=watch)


async def test_a_cancel_sent_before_or_right_after_its_order_is_honoured(
    pipeline: Pipeline,
) -> None:
    stock = {"sku-c1": 10}
    pipeline.start(ORDERSTREAM_RUN_LIFECYCLE="1", **LIFECYCLE_ENV)
    await pipeline.set_stock("sku-c1", 10)
    await pipeline.wait_for_stock("sku-c1", 10)
    base = await pipeline.wait_for_status_service()

    def order(order_id: str) -> dict[str, object]:
        return {"order_id": order_id, "user_id": "u-c", "product_id": "sku-c1", "quantity": 1}

    async with aiohttp.ClientSession() as http:
        # Before: the order does not exist anywhere yet.
        async with http.post(f"{base}/orders/c-before/cancel") as response:
            assert response.status == 202, await response.text()
        async with http.post(f"{base}/orders", json=order("c-before")) as response:
            assert response.status == 202
        # Right after: the cancel races the order through the pipeline.
        async with http.post(f"{base}/orders", json=order("c-after")) as response:
            assert response.status == 202
        async with http.post(f"{base}/orders/c-after/cancel") as response:
            assert response.status == 202, await response.text()
        # A third order, not cancelled, shows the sale itself goes on.
        async with http.post(f"{base}/orders", json=order("c-kept")) as response:
            assert response.status == 202

    await _settled(pipeline, 3, timeout=90, watch="run")
    orders = await _assert_settled(
        pipeline,
        stock,
        {"c-before", "c-after", "c-kept"},
        {("CANCELLED", "CANCELLED_BY_USER"), ("CONFIRMED", None), ("CANCELLED", "PAYMENT_FAILED")},
    )
    by_id = {row["order_id"]: (row["status"], row["reason"]) for row in orders}
    assert by_id["c-before"] == ("CANCELLED", "CANCELLED_BY_USER")
    assert by_id["c-after"] == ("CANCELLED", "CANCELLED_BY_USER")
    # Whichever reached the order agent first (a cancel and its order travel on two
    # topics), the cancel won: kept until the order came, or applied to the reservation.


async def test_a_2000_unit_sale_with_a_30_s_ttl_expires_nothing(pipeline: Pipeline) -> None:
    """The default mock (100-500 ms a charge, 90 % paid) on `orderstream run`'s defaults:
    every reservation is paid or declined within the TTL, none waits it out in our
    own payment queue."""
    stock = {"sku-drop": 2_000}
    pipeline.start(ORDERSTREAM_RUN_LIFECYCLE="1", ORDERSTREAM_ORDER_TTL_S="30")
    await pipeline.set_stock("sku-drop", 2_000)
    await pipeline.wait_for_stock("sku-drop", 2_000)
    requests = _requests(4_000, list(stock), prefix="drop")
    started = time.monotonic()
    await _publish(pipeline, requests)
    await _settled(pipeline, len(requests), timeout=120, watch="run")
    settled_s = time.monotonic() - started
    await _assert_settled(
        pipeline, stock, {order_id for order_id, _, _ in requests}, PAID_OR_SOLD_OUT
    )
    assert await pipeline.count("SELECT count(*) FROM orders WHERE status = 'EXPIRED'") == 0
    print(f"2,000-unit sale of 4,000 requests settled in {settled_s:.1f} s")


async def _lifecycle_members(pipe: Pipeline) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=pipe.settings.kafka_bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([lifecycle_app_id(pipe.settings)])
        [group] = response.to_object()["groups"]
        return len(group["members"])
    finally:
        await admin.close()


# Serial: it waits for one surviving lifecycle process to settle 1,000 orders, which
# needs the cores to itself on a 2-core machine. (It caught a stall after a seek-back,
# fixed by seeking in the consumer's thread: agents/lifecycle/faust_commits.py.)
@pytest.mark.serial
async def test_two_lifecycle_processes_share_a_sale_and_survive_a_kill_9(
    pipeline: Pipeline,
) -> None:
    stock = {"sku-m1": 300, "sku-m2": 300}
    pipeline.start()  # the stock agent, the sink, the status service; no lifecycle
    env = LIFECYCLE_ENV | {"ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.5"}
    pipeline.start("orders", name="orders-a", **env)
    for product_id, quantity in stock.items():
        await pipeline.set_stock(product_id, quantity)
    for product_id, quantity in stock.items():
        await pipeline.wait_for_stock(product_id, quantity)

    async def members(count: int) -> bool:
        return await _lifecycle_members(pipeline) == count

    # Scaled out as an operator does: a second process joins a running one. (Two started
    # within milliseconds of each other have been seen to leave one out of the group
    # for good: an open issue, see docs/operations.md, Reliability.)
    await pipeline.wait_for("the first lifecycle process", lambda: members(1), timeout=60)
    pipeline.start("orders", name="orders-b", **env)
    await pipeline.wait_for("two members in the lifecycle's group", lambda: members(2), timeout=60)
    first = _requests(500, list(stock), prefix="m1")
    await _publish(pipeline, first)

    async def some_confirmed() -> bool:
        return await pipeline.count("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'") >= 50

    await pipeline.wait_for("the sale to be under way", some_confirmed, timeout=60)
    pipeline.kill("orders-b")  # mid-sale: its partitions' orders are in every state
    second = _requests(500, list(stock), prefix="m2")
    await _publish(pipeline, second)
    requests = first + second
    # orders-a takes b's partitions over once b's session times out, restores them from
    # the changelog, and settles what b left.
    await _settled(pipeline, len(requests), timeout=120, watch="orders-a")
    await _assert_settled(
        pipeline, stock, {order_id for order_id, _, _ in requests}, PAID_OR_SOLD_OUT
    )
    # One terminal event per order: nothing the two processes did twice reached the books.
    twice = await pipeline.count(
        "SELECT count(*) FROM (SELECT order_id FROM order_events WHERE status IN"
        " ('CONFIRMED', 'CANCELLED', 'EXPIRED', 'REJECTED') GROUP BY 1 HAVING count(*) > 1) t"
    )
    assert twice == 0
    await asyncio.sleep(0)
