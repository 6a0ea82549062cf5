"""The order lifecycle on the real broker and database: payment, expiry, cancel.

`orderstream run` decides the lines (stock agent), persists (sink) and serves HTTP;
`orderstream orders` runs the order and payment agents in a process of its own, so a
test can kill it alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from orderstream.tables import orders_changelog
from tests.integration.pipeline import SHORT_SESSION, Pipeline, request_json

pytestmark = pytest.mark.integration

TERMINAL = {"CONFIRMED", "REJECTED", "CANCELLED", "EXPIRED"}
# The lifecycle's own process: no metrics port (tests run side by side), quick payments.
LIFECYCLE_ENV = {
    "ORDERSTREAM_ORDERS_METRICS_PORT": "0",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.05",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.2",
}


async def _start(pipe: Pipeline, stock: Mapping[str, int], **lifecycle_env: str) -> None:
    pipe.start()
    pipe.start("orders", **(LIFECYCLE_ENV | lifecycle_env))
    for product_id, quantity in stock.items():
        await pipe.set_stock(product_id, quantity)
    for product_id, quantity in stock.items():
        await pipe.wait_for_stock(product_id, quantity)


def _requests(count: int, products: list[str], prefix: str = "o") -> list[tuple[str, str, bytes]]:
    """Return (order id, product id, value) of ``count`` single-line orders, round robin."""
    requests = []
    for i in range(count):
        order_id, product_id = f"{prefix}-{i}", products[i % len(products)]
        requests.append((order_id, product_id, request_json(order_id, f"u-{i % 37}", product_id)))
    return requests


async def _publish(pipe: Pipeline, requests: list[tuple[str, str, bytes]]) -> None:
    producer = await pipe.producer()
    try:
        topic = pipe.topic("order-requests")
        sends = [
            await producer.send(topic, key=product_id.encode(), value=value)
            for _, product_id, value in requests
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _wait_settled(pipe: Pipeline, orders: int, timeout: float = 75.0) -> None:
    """Wait until every order is terminal in PostgreSQL and no stock is reserved."""
    deadline = time.monotonic() + timeout
    while True:
        assert pipe.alive("orders"), f"orderstream orders died\n{pipe.logs()}"
        unsettled = await pipe.query(
            "SELECT order_id, status FROM orders WHERE status = 'RESERVED' ORDER BY 1"
        )
        found = await pipe.count("SELECT count(*) FROM orders")
        stock = await pipe.query("SELECT * FROM product_stock WHERE reserved > 0")
        if found >= orders and not unsettled and not stock:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {timeout} s: {found} of {orders} orders, still reserved: "
                f"{unsettled[:20]}, stock: {stock}\n{pipe.logs()}"
            )
        await asyncio.sleep(0.25)


async def _assert_settled(
    pipe: Pipeline, stock: Mapping[str, int], order_ids: set[str], allowed: set[tuple[str, Any]]
) -> list[dict[str, Any]]:
    """Check the lifecycle's invariants in PostgreSQL; return the orders."""
    orders = await pipe.query("SELECT order_id, status, reason FROM orders")
    assert {row["order_id"] for row in orders} == order_ids
    outcomes = {(row["status"], row["reason"]) for row in orders}
    assert outcomes <= allowed, outcomes - allowed
    # Stock conserved, nothing reserved, sold = what the confirmed orders bought.
    sold: dict[str, int] = defaultdict(int)
    for row in await pipe.query(
        "SELECT i.product_id, sum(i.quantity) AS q FROM orders o JOIN order_items i"
        " USING (order_id) WHERE o.status = 'CONFIRMED' GROUP BY 1"
    ):
        sold[row["product_id"]] = int(row["q"])
    levels = {
        row["product_id"]: row
        for row in await pipe.query(
            "SELECT product_id, available, reserved, sold, total_in FROM product_stock"
        )
    }
    for product_id, total_in in stock.items():
        level = levels[product_id]
        assert level["reserved"] == 0, level
        assert level["available"] + level["sold"] == total_in == level["total_in"], level
        assert level["sold"] == sold[product_id], (product_id, level, sold[product_id])
    # Each order's history: seqs 1..n without a gap, ending in its status; its item agrees.
    histories = await pipe.query(
        "SELECT o.order_id, o.status, i.status AS item_status,"
        " array_agg(e.seq ORDER BY e.seq) AS seqs,"
        " array_agg(e.status ORDER BY e.seq) AS statuses"
        " FROM orders o JOIN order_items i USING (order_id)"
        " JOIN order_events e USING (order_id) GROUP BY 1, 2, 3"
    )
    assert len(histories) == len(order_ids)
    for row in histories:
        assert row["seqs"] == list(range(1, len(row["seqs"]) + 1)), row
        assert row["statuses"][-1] == row["status"] == row["item_status"], row
        assert row["statuses"].count(row["status"]) == 1, row
        if row["status"] != "REJECTED":
            assert row["statuses"][0] == "RESERVED", row
    return orders


async def _sale(
    pipe: Pipeline,
    stock: Mapping[str, int],
    requests: list[tuple[str, str, bytes]],
    allowed: set[tuple[str, Any]],
) -> list[dict[str, Any]]:
    """Publish ``requests``, wait until every order is final, check the invariants."""
    await _publish(pipe, requests)
    await _wait_settled(pipe, len(requests))
    return await _assert_settled(pipe, stock, {order_id for order_id, _, _ in requests}, allowed)


async def test_payments_confirm_or_cancel_every_reserved_order(pipeline: Pipeline) -> None:
    stock = {"sku-a": 40, "sku-b": 25, "sku-c": 15}
    await _start(pipeline, stock, ORDERSTREAM_PAYMENT_SUCCESS_RATE="0.5")
    requests = _requests(300, list(stock))

    orders = await _sale(
        pipeline,
        stock,
        requests,
        {("CONFIRMED", None), ("CANCELLED", "PAYMENT_FAILED"), ("REJECTED", "OUT_OF_STOCK")},
    )
    counts = defaultdict(int)
    for row in orders:
        counts[row["status"]] += 1
    # At 50 %, 80 reservations give both outcomes (a chance of 2 x 2^-80 to fail).
    assert counts["CONFIRMED"], counts
    assert counts["CANCELLED"], counts
    assert counts["CONFIRMED"] + counts["CANCELLED"] >= sum(stock.values()), counts


async def _payments(pipe: Pipeline) -> tuple[set[str], set[str]]:
    """Return the orders whose charge was paid, and those sent a refund, from the topics."""
    paid = {
        result["order_id"]
        for result in (json.loads(r.value) for r in await pipe.read_topic("payment-results"))
        if result["paid"]
    }
    refunded = {
        request["order_id"]
        for request in (json.loads(r.value) for r in await pipe.read_topic("payment-requests"))
        if request.get("action") == "refund"
    }
    return paid, refunded


# Payments take 0.2-3 s against a TTL of 2 s, all at once: some orders are paid in
# time, the provider takes longer than the TTL for the others, which expire and are
# voided (their charge may have gone through at the provider).
EXPIRY_ENV = {
    "ORDERSTREAM_ORDER_TTL_S": "2",
    "ORDERSTREAM_EXPIRY_INTERVAL_S": "0.5",
    "ORDERSTREAM_PAYMENT_SUCCESS_RATE": "1",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.2",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "3",
    "ORDERSTREAM_PAYMENT_TIMEOUT_S": "10",
    "ORDERSTREAM_PAYMENT_CONCURRENCY": "64",
}


async def test_unpaid_reservations_expire_across_a_kill_9(pipeline: Pipeline) -> None:
    stock = {"sku-x": 25, "sku-y": 25}
    await _start(pipeline, stock, **EXPIRY_ENV, **SHORT_SESSION)
    first = _requests(30, list(stock), prefix="a")
    await _publish(pipeline, first)

    async def some_settled() -> bool:
        return (
            await pipeline.count(
                "SELECT count(*) FROM orders WHERE status IN ('EXPIRED', 'CONFIRMED')"
            )
            >= 5
        )

    await pipeline.wait_for("the first orders to settle", some_settled, timeout=60)
    pipeline.kill("orders")
    # Reserved while the lifecycle is down, these are past their TTL when it is back.
    second = _requests(30, list(stock), prefix="b")
    await _publish(pipeline, second)
    await asyncio.sleep(2.5)
    pipeline.start("orders", **(LIFECYCLE_ENV | EXPIRY_ENV | SHORT_SESSION))
    requests = first + second
    await _wait_settled(pipeline, len(requests))

    orders = await _assert_settled(
        pipeline,
        stock,
        {order_id for order_id, _, _ in requests},
        {("CONFIRMED", None), ("EXPIRED", None), ("REJECTED", "OUT_OF_STOCK")},
    )
    expired = {row["order_id"] for row in orders if row["status"] == "EXPIRED"}
    confirmed = {row["order_id"] for row in orders if row["status"] == "CONFIRMED"}
    assert expired, "no order expired"
    assert confirmed, "no order was paid in time"

    # Every expired order is voided at the provider; no refund of a confirmed order.
    async def voided() -> bool:
        _, refunded = await _payments(pipeline)
        return expired <= refunded

    await pipeline.wait_for("voids of the expired orders", voided, timeout=30)
    paid, refunded = await _payments(pipeline)
    assert not refunded & confirmed
    assert confirmed <= paid
    # An expiry is the provider's answer (not paid in time), but a charge request the
    # kill -9 left uncommitted is charged again by the restarted agent, and may be paid
    # after its order expired (seen under CPU contention): then it is voided too.
    assert paid & expired <= refunded


async def _refunds_sent(pipe: Pipeline, expired: set[str]) -> bool:
    paid, refunded = await _payments(pipe)
    return paid & expired <= refunded


async def test_cancel_races_payment_and_exactly_one_wins(pipeline: Pipeline) -> None:
    stock = {"sku-p": 90, "sku-q": 90}
    await _start(
        pipeline,
        stock,
        ORDERSTREAM_PAYMENT_SUCCESS_RATE="1",
        # Payments take 0-2 s; each order's cancel leaves at its own point of a ladder
        # from at once to 8 s after PostgreSQL shows the order RESERVED. The early
        # cancels beat most payments and the late ones lose to them, however slow the
        # machine makes the path from a reservation to PostgreSQL or the payments'.
        ORDERSTREAM_PAYMENT_DELAY_MIN_S="0",
        ORDERSTREAM_PAYMENT_DELAY_MAX_S="2",
    )
    requests = _requests(200, list(stock))
    order_ids = {order_id for order_id, _, _ in requests}
    ladder = (0.0, 0.0, 0.1, 0.3, 0.6, 1.0, 2.0, 3.0, 5.0, 8.0)
    cancel_after = {request[0]: ladder[i % len(ladder)] for i, request in enumerate(requests)}
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    answers: dict[str, int] = {}
    sending: dict[str, asyncio.Task[None]] = {}

    async with aiohttp.ClientSession() as http:

        async def cancel(order_id: str) -> None:
            await asyncio.sleep(cancel_after[order_id])
            async with http.post(f"{base}/orders/{order_id}/cancel") as response:
                answers[order_id] = response.status
                body = await response.json()
                if response.status == 202:
                    assert body["order_id"] == order_id
                else:
                    assert response.status == 409, body
                    assert "only a RESERVED order can be cancelled" in body["error"], body

        async def cancel_as_reserved() -> bool:
            # Start each order's cancel as soon as PostgreSQL shows it RESERVED: its
            # payment is on its way at the same time.
            rows = await pipeline.query("SELECT order_id FROM orders WHERE status = 'RESERVED'")
            for row in rows:
                if row["order_id"] not in sending:
                    sending[row["order_id"]] = asyncio.create_task(cancel(row["order_id"]))
            for task in [task for task in sending.values() if task.done()]:
                task.result()  # a wrong answer fails the test here
            settled = await pipeline.count("SELECT count(*) FROM orders WHERE status <> 'RESERVED'")
            return settled == len(order_ids) and all(task.done() for task in sending.values())

        await _publish(pipeline, requests)
        await pipeline.wait_for("every order to settle", cancel_as_reserved, timeout=75)
        await _wait_settled(pipeline, len(requests))

        orders = await _assert_settled(
            pipeline,
            stock,
            order_ids,
            {("CONFIRMED", None), ("CANCELLED", "CANCELLED_BY_USER"), ("REJECTED", "OUT_OF_STOCK")},
        )
        cancelled = {row["order_id"] for row in orders if row["status"] == "CANCELLED"}
        confirmed = {row["order_id"] for row in orders if row["status"] == "CONFIRMED"}
        assert cancelled, "no cancel won"
        assert confirmed, "no payment won"
        # A cancel that won was accepted; a cancel refused came after the order moved on.
        assert all(answers.get(order_id) == 202 for order_id in cancelled)
        assert not {o for o, status in answers.items() if status == 409} & cancelled
        # The money of a paid order that was cancelled goes back, and only there.
        await pipeline.wait_for("refunds", lambda: _refunds_sent(pipeline, cancelled), 30)
        _, refunded = await _payments(pipeline)
        assert not refunded & confirmed

        # Afterwards: a settled order is refused with its status, an unknown one is 404.
        done = next(iter(confirmed))
        async with http.post(f"{base}/orders/{done}/cancel") as response:
            assert response.status == 409
            assert (await response.json())["error"].startswith("order is CONFIRMED")
        # An order PostgreSQL does not show may be on its way: its cancel is kept.
        async with http.post(f"{base}/orders/never-placed/cancel") as response:
            assert response.status == 202


async def test_run_embeds_the_lifecycle_as_a_role(pipeline: Pipeline) -> None:
    stock = {"sku-e": 20}
    pipeline.start(
        ORDERSTREAM_RUN_LIFECYCLE="true",
        ORDERSTREAM_PAYMENT_SUCCESS_RATE="0.5",
        **LIFECYCLE_ENV,
    )
    await pipeline.set_stock("sku-e", 20)
    await pipeline.wait_for_stock("sku-e", 20)
    requests = _requests(60, list(stock))

    await _publish(pipeline, requests)

    async def settled() -> bool:
        return (
            await pipeline.count("SELECT count(*) FROM orders WHERE status <> 'RESERVED'") == 60
            and await pipeline.count("SELECT sum(reserved) FROM product_stock") == 0
        )

    await pipeline.wait_for("60 orders settled", settled, timeout=60)
    await _assert_settled(
        pipeline,
        stock,
        {order_id for order_id, _, _ in requests},
        {("CONFIRMED", None), ("CANCELLED", "PAYMENT_FAILED"), ("REJECTED", "OUT_OF_STOCK")},
    )
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
        roles = (await response.json())["roles"]
    assert roles["order-lifecycle"] == "running", roles
    # SIGTERM stops the Faust app with the other roles, within the supervisor's bound.
    started = time.monotonic()
    process = pipeline.processes["run"]
    pipeline.stop()
    assert process.returncode == 0, pipeline.logs()
    assert time.monotonic() - started < 30


async def test_an_unavailable_payment_is_voided_as_its_order_is_cancelled(
    pipeline: Pipeline,
) -> None:
    """Issue 21, item 5: a charge whose calls all failed or timed out may have gone
    through at the provider. Its order is cancelled (PAYMENT_UNAVAILABLE) and released,
    and a refund (a void) is asked for, so that the shopper is never left charged."""
    stock = {"sku-down": 10}
    await _start(
        pipeline,
        stock,
        ORDERSTREAM_PAYMENT_ERROR_RATE="1",  # every call to the provider fails
        ORDERSTREAM_PAYMENT_ATTEMPTS="2",
        ORDERSTREAM_PAYMENT_TIMEOUT_S="0.5",
    )
    requests = _requests(6, list(stock), prefix="down")
    orders = await _sale(
        pipeline,
        stock,
        requests,
        {("CANCELLED", "PAYMENT_UNAVAILABLE")},
    )
    cancelled = {row["order_id"] for row in orders}

    async def voided() -> bool:
        _, refunded = await _payments(pipeline)
        return cancelled <= refunded

    await pipeline.wait_for("a void of every cancelled order", voided, timeout=30)
    paid, refunded = await _payments(pipeline)
    assert not paid
    assert refunded == cancelled


async def test_final_orders_leave_the_table_after_the_retention_and_a_restart_skips_them(
    pipeline: Pipeline,
) -> None:
    """Issue 21, item 6: finished orders stayed in the lifecycle's table for good, and
    every restart replayed every order ever sold. A final order now leaves it a
    retention later (a tombstone in its changelog)."""
    retention = {
        "ORDERSTREAM_ORDER_RETENTION_S": "2",
        "ORDERSTREAM_DEDUP_WINDOW_S": "1",  # the retention may not be shorter
        "ORDERSTREAM_EXPIRY_INTERVAL_S": "0.5",
        **SHORT_SESSION,  # the restart below takes the partitions over sooner
    }
    stock = {"sku-r": 8}
    await _start(pipeline, stock, **retention)
    requests = _requests(12, list(stock), prefix="r")
    orders = await _sale(
        pipeline,
        stock,
        requests,
        {("CONFIRMED", None), ("CANCELLED", "PAYMENT_FAILED"), ("REJECTED", "OUT_OF_STOCK")},
    )
    # The orders the lifecycle carried (every reserved one): the rejections never came.
    carried = {row["order_id"] for row in orders if row["status"] != "REJECTED"}
    assert len(carried) == 8
    changelog = orders_changelog(pipeline.settings)

    async def forgotten() -> bool:
        last: dict[str, bytes | None] = {}
        for record in await pipeline.read_topic(changelog, prefixed=False):
            last[record.key.decode()] = record.value
        return set(last) == carried and all(value is None for value in last.values())

    await pipeline.wait_for("a tombstone for every final order", forgotten, timeout=60)

    # A restart restores what is live: nothing here.
    pipeline.kill("orders")
    pipeline.start("orders", **(LIFECYCLE_ENV | retention))

    async def reindexed() -> bool:
        latest = sorted(pipeline.workdir.glob("orders-*.log"), key=lambda p: p.stat().st_mtime)
        return "expiry index rebuilt: 0 local orders" in latest[-1].read_text(errors="replace")

    await pipeline.wait_for("the restarted lifecycle's index", reindexed, timeout=90)
    # Nothing moved: the same orders, final once each.
    await _assert_settled(
        pipeline,
        stock,
        {order_id for order_id, _, _ in requests},
        {("CONFIRMED", None), ("CANCELLED", "PAYMENT_FAILED"), ("REJECTED", "OUT_OF_STOCK")},
    )
