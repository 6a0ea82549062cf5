"""Orders of several lines through the whole pipeline: stock agent, order agent, payment.

1,000 orders of 1-4 lines over 10 products with scarce stock, the multi-line ones each
published in one Kafka transaction (the publisher behind ``publish_order_lines``, kept
open), the single-line ones with plain sends; `orderstream run` embeds the lifecycle, or
it runs apart and is killed with -9 mid-stream. Every order ends all-reserved-then-final
or REJECTED with its reserved lines released, stock is conserved, and the database shows
each line once with its final status.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from typing import Any

import pytest

from orderstream.producer import OrderLinesPublisher, order_lines
from tests.integration.pipeline import SHORT_SESSION, Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCTS = [f"sku-{i}" for i in range(10)]
STOCK = 40
ORDERS = 1_000
PUBLISHERS = 8  # producers side by side, each one transaction at a time
# Quick payments; no metrics port for a lifecycle in a process of its own.
LIFECYCLE_ENV = {
    "ORDERSTREAM_ORDERS_METRICS_PORT": "0",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.01",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.05",
}
# Line statuses the order's final status leaves its lines in.
FINAL_LINES = {
    "CONFIRMED": {"COMMITTED"},
    "CANCELLED": {"RELEASED"},
    "REJECTED": {"REJECTED", "RELEASED"},
}
HISTORIES = {
    "CONFIRMED": ["RESERVED", "PAID", "CONFIRMED"],
    "CANCELLED": ["RESERVED", "CANCELLED"],
    "REJECTED": ["REJECTED"],
}

Order = list[tuple[str, int]]  # (product id, quantity), in the order's line order


def _orders() -> dict[str, Order]:
    rng = random.Random(7)
    orders: dict[str, Order] = {}
    for i in range(ORDERS):
        products = rng.sample(PRODUCTS, rng.randint(1, 4))
        orders[f"m-{i}"] = [(product, rng.randint(1, 2)) for product in products]
    return orders


async def _publish(pipe: Pipeline, orders: dict[str, Order]) -> None:
    """Publish the orders from several producers side by side, interleaved as they come:
    one transaction per multi-line order, a plain send for a single-line one."""
    plain = await pipe.producer()
    topic = pipe.topic("order-requests")

    async def publish_share(share: list[tuple[str, Order]]) -> None:
        publisher = OrderLinesPublisher(pipe.settings)
        try:
            for order_id, lines in share:
                if len(lines) > 1:
                    await publisher.publish(order_lines(order_id, f"u-{order_id}", lines))
                    continue
                [(product, quantity)] = lines
                value = request_json(order_id, f"u-{order_id}", product, quantity)
                await (await plain.send(topic, key=product.encode(), value=value))
        finally:
            await publisher.close()

    everything = list(orders.items())
    try:
        await asyncio.gather(*(publish_share(everything[i::PUBLISHERS]) for i in range(PUBLISHERS)))
    finally:
        await plain.stop()


async def _wait_settled(pipe: Pipeline, count: int, timeout: float) -> None:
    async def settled() -> bool:
        return (
            await pipe.count("SELECT count(*) FROM orders WHERE status <> 'RESERVED'") == count
            and await pipe.count("SELECT coalesce(sum(reserved), 0) FROM product_stock") == 0
        )

    await pipe.wait_for(f"{count} orders settled", settled, timeout=timeout)


async def _start(pipe: Pipeline, **env: str) -> None:
    pipe.start(**env)
    for product in PRODUCTS:
        await pipe.set_stock(product, STOCK)
    for product in PRODUCTS:
        await pipe.wait_for_stock(product, STOCK)


@pytest.mark.parametrize("success_rate", ["0.5", "1"])
async def test_orders_of_several_lines_settle_whole(pipeline: Pipeline, success_rate: str) -> None:
    started = time.monotonic()
    await _start(
        pipeline,
        **LIFECYCLE_ENV,
        ORDERSTREAM_RUN_LIFECYCLE="true",
        ORDERSTREAM_PAYMENT_SUCCESS_RATE=success_rate,
    )
    orders = _orders()
    await _publish(pipeline, orders)
    await _wait_settled(pipeline, len(orders), timeout=75)

    allowed = {("CONFIRMED", None), ("REJECTED", "OUT_OF_STOCK")}
    if success_rate != "1":
        allowed.add(("CANCELLED", "PAYMENT_FAILED"))
    statuses = await _assert_whole(pipeline, orders, allowed)
    assert set(statuses.values()) == allowed  # every outcome, with ~100 reservations
    assert time.monotonic() - started < 90, time.monotonic() - started


async def test_orders_of_several_lines_survive_a_kill_9_of_the_lifecycle(
    pipeline: Pipeline,
) -> None:
    await _start(pipeline)
    pipeline.start(
        "orders", **LIFECYCLE_ENV, **SHORT_SESSION, ORDERSTREAM_PAYMENT_SUCCESS_RATE="0.5"
    )
    orders = _orders()
    publishing = asyncio.create_task(_publish(pipeline, orders))

    async def some_settled() -> bool:
        return await pipeline.count("SELECT count(*) FROM orders WHERE status <> 'RESERVED'") > 150

    # Mid-stream: lines assembling, payments in flight, requests still coming.
    await pipeline.wait_for("the first orders to settle", some_settled, timeout=60, watch="orders")
    pipeline.kill("orders")
    await publishing
    pipeline.start(
        "orders", **LIFECYCLE_ENV, **SHORT_SESSION, ORDERSTREAM_PAYMENT_SUCCESS_RATE="0.5"
    )
    await _wait_settled(pipeline, len(orders), timeout=75)

    await _assert_whole(
        pipeline,
        orders,
        {("CONFIRMED", None), ("CANCELLED", "PAYMENT_FAILED"), ("REJECTED", "OUT_OF_STOCK")},
    )


async def _assert_whole(
    pipe: Pipeline, orders: dict[str, Order], allowed: set[tuple[str, str | None]]
) -> dict[str, tuple[str, str | None]]:
    """Check that every order settled whole, stock is conserved, and the database shows
    each line once with its final status; return each order's (status, reason)."""
    statuses = {
        row["order_id"]: (row["status"], row["reason"])
        for row in await pipe.query("SELECT order_id, status, reason FROM orders")
    }
    assert set(statuses) == set(orders)
    assert set(statuses.values()) <= allowed, set(statuses.values()) - allowed
    several = {o for o, lines in orders.items() if len(lines) > 1}
    assert {o for o in several if statuses[o][0] == "CONFIRMED"}, "no multi-line order sold"

    # Stock conserved, nothing reserved, sold = the confirmed orders' lines.
    sold: dict[str, int] = defaultdict(int)
    for order_id, lines in orders.items():
        if statuses[order_id][0] == "CONFIRMED":
            for product, quantity in lines:
                sold[product] += quantity
    for level in await pipe.query("SELECT * FROM product_stock"):
        assert min(level["available"], level["reserved"], level["sold"]) >= 0, level
        assert level["available"] + level["reserved"] + level["sold"] == STOCK, level
        assert level["total_in"] == STOCK, level
        assert level["reserved"] == 0, level
        assert level["sold"] == sold[level["product_id"]], (level, sold[level["product_id"]])

    # Each order's history: seqs 1..n without a gap, all reserved then final, or rejected.
    for row in await pipe.query(
        "SELECT order_id, array_agg(seq ORDER BY seq) AS seqs,"
        " array_agg(status ORDER BY seq) AS statuses FROM order_events GROUP BY 1"
    ):
        assert row["seqs"] == list(range(1, len(row["seqs"]) + 1)), row
        assert row["statuses"] == HISTORIES[statuses[row["order_id"]][0]], row

    # order_items: one row per line, with the line's final status.
    partly_reserved = 0  # rejected orders that had lines reserved, then released
    items: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in await pipe.query("SELECT * FROM order_items"):
        items[row["order_id"]][row["product_id"]] = row
    for order_id, lines in orders.items():
        status = statuses[order_id][0]
        rows = items[order_id]
        assert {p: r["quantity"] for p, r in rows.items()} == dict(lines), (order_id, rows)
        line_statuses = [r["line_status"] for r in rows.values()]
        assert {r["status"] for r in rows.values()} == {status}, (order_id, rows)
        if status == "REJECTED" and len(lines) == 1:
            assert line_statuses == [None]  # final at the stock agent, which lists no items
            continue
        assert set(line_statuses) <= FINAL_LINES[status], (order_id, rows)
        if status == "REJECTED":
            assert "REJECTED" in line_statuses, (order_id, rows)
            partly_reserved += "RELEASED" in line_statuses
    assert partly_reserved, "no rejected order had a line to release"

    # On the topic: every event of a multi-line order lists all its lines, in one order,
    # all reserved in its RESERVED event.
    listed: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for record in await pipe.read_topic("order-events"):
        event = json.loads(record.value)
        if event["order_id"] in several:
            products = tuple(item["product_id"] for item in event["items"])
            assert sorted(products) == sorted(p for p, _ in orders[event["order_id"]]), event
            if event["status"] == "RESERVED":
                assert {item["status"] for item in event["items"]} == {"RESERVED"}, event
            listed[event["order_id"]].add(products)
    assert set(listed) == several
    assert all(len(orders_seen) == 1 for orders_seen in listed.values())
    return statuses


async def test_an_order_missing_lines_for_good_is_turned_down_and_its_stock_released(
    pipeline: Pipeline,
) -> None:
    """A producer that says three lines and sends two: after the wait for its lines the
    order agent rejects the order and releases the lines that came, instead of holding
    them forever. (test_partial_orders waits 8 s, with the default TTL.)"""
    await _start(
        pipeline,
        **LIFECYCLE_ENV,
        ORDERSTREAM_RUN_LIFECYCLE="true",
        ORDERSTREAM_ORDER_TTL_S="2",
        ORDERSTREAM_LINES_WAIT_S="2",
        ORDERSTREAM_EXPIRY_INTERVAL_S="0.5",
    )

    def line(product: str) -> bytes:
        fields = {"order_id": "short", "user_id": "u-short", "product_id": product}
        return json.dumps(fields | {"quantity": 2, "line_count": 3}).encode()

    await pipeline.publish([(product.encode(), line(product)) for product in PRODUCTS[:2]])

    async def turned_down() -> bool:
        rows = await pipeline.query("SELECT status, reason, detail FROM orders")
        return bool(rows) and rows[0]["status"] == "REJECTED"

    await pipeline.wait_for("the short order turned down", turned_down, timeout=60)
    [order] = await pipeline.query("SELECT status, reason, detail FROM orders")
    assert (order["status"], order["reason"]) == ("REJECTED", "INVALID"), order
    assert order["detail"].startswith("only 2 of its 3 lines arrived within"), order
    await _wait_settled(pipeline, 1, timeout=30)  # its reserved stock is back
    for level in await pipeline.query("SELECT * FROM product_stock"):
        assert (level["available"], level["reserved"], level["sold"]) == (STOCK, 0, 0), level
    items = await pipeline.query("SELECT product_id, line_status FROM order_items")
    assert {(i["product_id"], i["line_status"]) for i in items} == {
        (PRODUCTS[0], "RELEASED"),
        (PRODUCTS[1], "RELEASED"),
    }
