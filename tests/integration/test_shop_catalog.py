"""Prices and per-user limits through the whole pipeline, on the real broker and database.

The stock agent captures a line's unit price when it decides it, so an order's total is
fixed at its decision time whatever the catalog does afterwards; it counts what each user
holds or bought of a product in its partition state, so a per-user limit needs no lock.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from orderstream.domain import StockOperation
from orderstream.producer import OrderLinesPublisher, order_lines, publish_stock_commands
from orderstream.topics import StockCommand
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCTS = [f"sku-{i}" for i in range(5)]
STOCK = 10_000  # plenty: every order is sold, and its total is what is checked
OLD_PRICES = {product: Decimal(f"{10 + i}.99") for i, product in enumerate(PRODUCTS)}
NEW_PRICES = {product: Decimal(f"{20 + i}.05") for i, product in enumerate(PRODUCTS)}
PUBLISHERS = 8
QUICK_PAYMENTS = {
    "ORDERSTREAM_RUN_LIFECYCLE": "true",
    "ORDERSTREAM_PAYMENT_SUCCESS_RATE": "1",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.01",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.05",
}

Order = list[tuple[str, int]]


def _orders(prefix: str, count: int, rng: random.Random) -> dict[str, Order]:
    return {
        f"{prefix}-{i}": [(p, rng.randint(1, 3)) for p in rng.sample(PRODUCTS, rng.randint(2, 3))]
        for i in range(count)
    }


async def _publish(pipe: Pipeline, orders: dict[str, Order]) -> None:
    """Publish each order's lines in one transaction, from several producers at once."""

    async def share(mine: list[tuple[str, Order]]) -> None:
        publisher = OrderLinesPublisher(pipe.settings)
        try:
            for order_id, lines in mine:
                await publisher.publish(order_lines(order_id, f"u-{order_id}", lines))
        finally:
            await publisher.close()

    everything = list(orders.items())
    await asyncio.gather(*(share(everything[i::PUBLISHERS]) for i in range(PUBLISHERS)))


async def _catalog(pipe: Pipeline, prices: dict[str, Decimal], stock: int | None) -> None:
    operation = StockOperation.SET if stock is not None else StockOperation.UPDATE
    await publish_stock_commands(
        pipe.settings,
        [
            StockCommand(
                product_id=product,
                operation=operation,
                quantity=stock,
                price=price,
                currency="EUR",
            )
            for product, price in prices.items()
        ],
    )


async def _latest_prices(pipe: Pipeline) -> dict[str, Decimal]:
    """Return each product's price on its newest stock-changes record."""
    latest: dict[str, dict[str, Any]] = {}
    for record in await pipe.read_topic("stock-changes"):
        change = json.loads(record.value)
        known = latest.get(change["product_id"])
        if known is None or change["version"] > known["version"]:
            latest[change["product_id"]] = change
    return {p: Decimal(c["price"]) for p, c in latest.items() if c.get("price") is not None}


async def test_totals_are_fixed_at_the_prices_of_their_decision_across_a_price_change(
    pipeline: Pipeline,
) -> None:
    rng = random.Random(10)
    pipeline.start(**QUICK_PAYMENTS)
    await _catalog(pipeline, OLD_PRICES, STOCK)
    for product in PRODUCTS:
        await pipeline.wait_for_stock(product, STOCK)
    before = _orders("before", 250, rng)
    after = _orders("after", 250, rng)

    await _publish(pipeline, before)
    # A retried publish of some orders: each line is decided once, at its first price.
    await _publish(pipeline, dict(list(before.items())[:25]))

    async def decided(count: int) -> bool:
        return await pipeline.count("SELECT count(*) FROM orders") >= count

    await pipeline.wait_for("the first 250 orders decided", lambda: decided(250), timeout=90)
    # Mid-sale, a new price for every product; the next orders are decided at it.
    await _catalog(pipeline, NEW_PRICES, None)

    async def repriced() -> bool:
        return await _latest_prices(pipeline) == NEW_PRICES

    await pipeline.wait_for("the new prices applied", repriced, timeout=30)
    await _publish(pipeline, after)

    async def settled() -> bool:
        return (
            await pipeline.count("SELECT count(*) FROM orders WHERE status <> 'RESERVED'") == 500
            and await pipeline.count("SELECT coalesce(sum(reserved), 0) FROM product_stock") == 0
        )

    await pipeline.wait_for("500 orders settled", settled, timeout=120)

    orders = before | after
    expected = {
        order_id: sum(
            ((OLD_PRICES if order_id in before else NEW_PRICES)[p] * q for p, q in lines),
            Decimal(0),
        )
        for order_id, lines in orders.items()
    }
    # PostgreSQL: each order's total, and each line at the price of its decision.
    rows = await pipeline.query("SELECT order_id, status, total, currency FROM orders")
    assert {row["order_id"] for row in rows} == set(orders)
    assert {row["status"] for row in rows} == {"CONFIRMED"}
    for row in rows:
        assert (row["total"], row["currency"]) == (expected[row["order_id"]], "EUR"), row
    items = await pipeline.query(
        "SELECT order_id, product_id, quantity, unit_price, currency, line_status FROM order_items"
    )
    assert len(items) == sum(len(lines) for lines in orders.values())
    for item in items:
        prices = OLD_PRICES if item["order_id"] in before else NEW_PRICES
        assert item["unit_price"] == prices[item["product_id"]], item
        assert (item["currency"], item["line_status"]) == ("EUR", "COMMITTED"), item
    # HTTP: the same, as exact decimal strings.
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    async with aiohttp.ClientSession() as http:
        for order_id in ("before-0", "after-0"):
            async with http.get(f"{base}/orders/{order_id}") as response:
                body = await response.json()
            assert Decimal(body["total"]) == expected[order_id], body
            assert isinstance(body["total"], str), body
    # The payment agent charged each order its total, once per order.
    charged: dict[str, set[Decimal]] = defaultdict(set)
    for record in await pipeline.read_topic("payment-requests"):
        request = json.loads(record.value)
        if request.get("action", "charge") == "charge":
            charged[request["order_id"]].add(Decimal(request["amount"]))
    assert charged == {order_id: {total} for order_id, total in expected.items()}
    await _assert_conserved(pipeline, orders)


async def _assert_conserved(pipe: Pipeline, orders: dict[str, Order]) -> None:
    """Stock conserved, never negative, sold = the confirmed orders' lines; each order's
    history has seqs 1..n without a gap and one terminal status."""
    statuses = {r["order_id"]: r["status"] for r in await pipe.query("SELECT * FROM orders")}
    sold: dict[str, int] = defaultdict(int)
    for order_id, lines in orders.items():
        if statuses[order_id] == "CONFIRMED":
            for product, quantity in lines:
                sold[product] += quantity
    for level in await pipe.query("SELECT * FROM product_stock"):
        assert min(level["available"], level["reserved"], level["sold"]) >= 0, level
        assert level["available"] + level["reserved"] + level["sold"] == level["total_in"]
        assert level["reserved"] == 0, level
        assert level["sold"] == sold[level["product_id"]], level
    terminal = {"CONFIRMED", "REJECTED", "CANCELLED", "EXPIRED"}
    for row in await pipe.query(
        "SELECT order_id, array_agg(seq ORDER BY seq) AS seqs,"
        " array_agg(status ORDER BY seq) AS statuses FROM order_events GROUP BY 1"
    ):
        assert row["seqs"] == list(range(1, len(row["seqs"]) + 1)), row
        assert len(terminal & set(row["statuses"])) == 1, row
        assert row["statuses"][-1] == statuses[row["order_id"]], row


# Payments slow enough that the reservations are still open when the test cancels one.
SLOW_PAYMENTS = {
    "ORDERSTREAM_RUN_LIFECYCLE": "true",
    "ORDERSTREAM_PAYMENT_SUCCESS_RATE": "1",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "20",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "20",
    "ORDERSTREAM_PAYMENT_TIMEOUT_S": "60",
    # Restarted in place after a kill -9: its partitions come back without a session wait.
    "ORDERSTREAM_WORKER_ID": "limit-test",
}
LIMITED = "sku-limited"


async def test_one_user_holds_at_most_the_limit_and_a_cancel_makes_room(
    pipeline: Pipeline,
) -> None:
    pipeline.start(**SLOW_PAYMENTS)
    await publish_stock_commands(
        pipeline.settings,
        [
            StockCommand(
                product_id=LIMITED, operation=StockOperation.SET, quantity=100, max_per_user=2
            )
        ],
    )
    await pipeline.wait_for_stock(LIMITED, 100)
    # One user, 50 requests of one unit each, from 4 producers at once.
    requests = [(f"l-{i}", request_json(f"l-{i}", "greedy", LIMITED)) for i in range(50)]

    async def send(mine: list[tuple[str, bytes]]) -> None:
        producer = await pipeline.producer()
        try:
            topic = pipeline.topic("order-requests")
            await asyncio.gather(
                *[await producer.send(topic, key=LIMITED.encode(), value=v) for _, v in mine]
            )
        finally:
            await producer.stop()

    await asyncio.gather(*(send(requests[i::4]) for i in range(4)))

    async def decided(count: int) -> bool:
        return await pipeline.count("SELECT count(*) FROM orders") >= count

    await pipeline.wait_for("50 decisions", lambda: decided(50), timeout=60)
    rows = await pipeline.query("SELECT order_id, status, reason FROM orders")
    reserved = sorted(r["order_id"] for r in rows if r["status"] == "RESERVED")
    assert len(reserved) == 2, rows
    assert {(r["status"], r["reason"]) for r in rows if r["order_id"] not in reserved} == {
        ("REJECTED", "LIMIT_EXCEEDED")
    }

    # The count is in the changelog: a worker killed and restarted still knows it.
    pipeline.kill()
    pipeline.start(**SLOW_PAYMENTS)
    await send([("l-50", request_json("l-50", "greedy", LIMITED))])
    await pipeline.wait_for("a decision after the restart", lambda: decided(51), timeout=60)
    [after_restart] = await pipeline.query(
        "SELECT status, reason FROM orders WHERE order_id='l-50'"
    )
    assert (after_restart["status"], after_restart["reason"]) == ("REJECTED", "LIMIT_EXCEEDED")

    # A cancel releases a unit: the user may reserve one more, and no more than that.
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/orders/{reserved[0]}/cancel") as response,
    ):
        assert response.status == 202, await response.text()

    async def cancelled() -> bool:
        return (
            await pipeline.count(
                "SELECT count(*) FROM orders WHERE order_id = %s AND status = 'CANCELLED'",
                (reserved[0],),
            )
            == 1
            and await pipeline.count("SELECT reserved FROM product_stock") == 1
        )

    await pipeline.wait_for("the cancel applied", cancelled, timeout=30)
    await send([("l-51", request_json("l-51", "greedy", LIMITED))])
    await pipeline.wait_for("l-51 decided", lambda: decided(52), timeout=30)
    await send([("l-52", request_json("l-52", "greedy", LIMITED))])
    await pipeline.wait_for("l-52 decided", lambda: decided(53), timeout=30)
    statuses = {
        r["order_id"]: (r["status"], r["reason"])
        for r in await pipeline.query("SELECT order_id, status, reason FROM orders")
    }
    assert statuses["l-51"] == ("RESERVED", None), statuses["l-51"]
    assert statuses["l-52"] == ("REJECTED", "LIMIT_EXCEEDED"), statuses["l-52"]
    # Another user is not limited by this one.
    await send([("other-1", request_json("other-1", "modest", LIMITED))])
    await pipeline.wait_for("other-1 decided", lambda: decided(54), timeout=30)
    [other] = await pipeline.query("SELECT status FROM orders WHERE order_id = 'other-1'")
    assert other["status"] == "RESERVED"

    # The open reservations are paid in the end: every order terminal, stock conserved.
    async def settled() -> bool:
        return (
            await pipeline.count("SELECT count(*) FROM orders WHERE status = 'RESERVED'") == 0
            and await pipeline.count("SELECT reserved FROM product_stock") == 0
        )

    await pipeline.wait_for("every order settled", settled, timeout=90)
    orders: dict[str, Order] = {order_id: [(LIMITED, 1)] for order_id in statuses}
    orders["other-1"] = [(LIMITED, 1)]
    await _assert_conserved(pipeline, orders)
    final = {r["order_id"]: r["status"] for r in await pipeline.query("SELECT * FROM orders")}
    assert sorted(o for o, s in final.items() if s == "CONFIRMED") == sorted(
        [reserved[1], "l-51", "other-1"]
    )


NEW_SALE = "sku-drop"
ADMIN_TOKEN = "new-sale-admin-token"


async def test_a_new_sale_counts_each_user_from_zero_and_keeps_it_through_a_restore(
    pipeline: Pipeline,
) -> None:
    # Payments slow enough that the first sale's reservations are still open to cancel
    # after the restart.
    slower = {"ORDERSTREAM_PAYMENT_DELAY_MIN_S": "40", "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "40"}
    env = {**SLOW_PAYMENTS, **slower, "ORDERSTREAM_ADMIN_TOKEN": ADMIN_TOKEN}
    pipeline.start(**env)
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    await publish_stock_commands(
        pipeline.settings,
        [
            StockCommand(
                product_id=NEW_SALE, operation=StockOperation.SET, quantity=100, max_per_user=2
            )
        ],
    )
    await pipeline.wait_for_stock(NEW_SALE, 100)
    sent = 0

    async def buy(*order_ids: str) -> dict[str, tuple[str, str | None]]:
        """One unit per order for the same user, in order; return their decisions."""
        nonlocal sent
        producer = await pipeline.producer()
        try:
            topic = pipeline.topic("order-requests")
            for order_id in order_ids:
                value = request_json(order_id, "fan", NEW_SALE)
                await producer.send_and_wait(topic, key=NEW_SALE.encode(), value=value)
        finally:
            await producer.stop()
        sent += len(order_ids)

        async def decided() -> bool:
            return await pipeline.count("SELECT count(*) FROM orders") >= sent

        await pipeline.wait_for(f"{sent} decisions", decided, timeout=60)
        rows = await pipeline.query("SELECT order_id, status, reason FROM orders")
        return {
            r["order_id"]: (r["status"], r["reason"]) for r in rows if r["order_id"] in order_ids
        }

    reserved, limited = ("RESERVED", None), ("REJECTED", "LIMIT_EXCEEDED")
    assert await buy("s1-a", "s1-b", "s1-c") == {
        "s1-a": reserved, "s1-b": reserved, "s1-c": limited
    }  # fmt: skip

    # A new sale of the same product: the fan may buy 2 again; the first sale's two
    # reservations keep their units.
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{base}/admin/products/{NEW_SALE}", json={"set": 50, "new_sale": True}, headers=admin
        ) as response,
    ):
        assert response.status == 202, await response.text()
    await pipeline.wait_for_stock(NEW_SALE, 52)  # 50 on sale, the first sale's 2 held
    assert await buy("s2-a", "s2-b", "s2-c") == {
        "s2-a": reserved, "s2-b": reserved, "s2-c": limited
    }  # fmt: skip

    # The count of the new sale is in the changelog: kill -9, restart, still 2.
    pipeline.kill()
    pipeline.start(**env)
    assert await buy("s2-d") == {"s2-d": limited}

    async def cancel(order_id: str) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/orders/{order_id}/cancel") as response,
        ):
            assert response.status == 202, await response.text()

        async def cancelled() -> bool:
            return (
                await pipeline.count(
                    "SELECT count(*) FROM orders WHERE order_id = %s AND status = 'CANCELLED'",
                    (order_id,),
                )
                == 1
            )

        await pipeline.wait_for(f"{order_id} cancelled", cancelled, timeout=30)

    # A line of the first sale given back returns its unit, not a place in this sale.
    await cancel("s1-a")
    assert await buy("s2-e") == {"s2-e": limited}
    # One of this sale's makes room for one more.
    await cancel("s2-a")
    assert await buy("s2-f", "s2-g") == {"s2-f": reserved, "s2-g": limited}

    # The other reservations are given back too, instead of waiting 40 s for their
    # payments: every order ends, nothing stays reserved, the stock is conserved.
    for order_id in ("s1-b", "s2-b", "s2-f"):
        await cancel(order_id)

    async def settled() -> bool:
        return (
            await pipeline.count("SELECT count(*) FROM orders WHERE status = 'RESERVED'") == 0
            and await pipeline.count("SELECT reserved FROM product_stock") == 0
        )

    await pipeline.wait_for("every order settled", settled, timeout=90)
    final = {r["order_id"]: r["status"] for r in await pipeline.query("SELECT * FROM orders")}
    assert sorted(o for o, s in final.items() if s == "CANCELLED") == [
        "s1-a", "s1-b", "s2-a", "s2-b", "s2-f"
    ]  # fmt: skip
    assert {s for o, s in final.items() if s != "CANCELLED"} == {"REJECTED"}
    await _assert_conserved(pipeline, {order_id: [(NEW_SALE, 1)] for order_id in final})


ADDRESS = {
    "name": "Ada Lovelace",
    "line1": "12 Rue de la Paix",
    "postal_code": "75002",
    "city": "Paris",
    "country": "FR",
}


async def test_order_metadata_is_validated_stored_and_returned(pipeline: Pipeline) -> None:
    pipeline.start(**QUICK_PAYMENTS)
    await _catalog(pipeline, {"sku-0": Decimal("3.50"), "sku-1": Decimal("10")}, 100)
    for product in ("sku-0", "sku-1"):
        await pipeline.wait_for_stock(product, 100)
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    notes = "Ring twice.\nLeave it with the concierge if nobody answers."
    bodies = {
        "meta-1": {"user_id": "ada", "product_id": "sku-0", "quantity": 2, "notes": notes},
        "meta-2": {
            "user_id": "ada",
            "items": [
                {"product_id": "sku-0", "quantity": 1},
                {"product_id": "sku-1", "quantity": 1},
            ],
            "shipping_address": ADDRESS,
            "billing_address": ADDRESS | {"line2": "3rd floor", "city": "Lyon"},
            "notes": notes,
        },
    }
    hostile = [
        {"shipping_address": ADDRESS | {"name": "Ada\u0000"}},  # NUL
        {"shipping_address": ADDRESS | {"country": "France"}},
        {"shipping_address": ADDRESS | {"city": "x" * 201}},
        {"shipping_address": {"name": "Ada"}},  # no line1, city, country
        {"notes": "x" * 1001},
        {"notes": "bell \u0007"},
        {"billing_address": "12 Rue de la Paix"},
    ]
    async with aiohttp.ClientSession() as http:
        for order_id, body in bodies.items():
            headers = {"Idempotency-Key": order_id}
            async with http.post(f"{base}/orders", json=body, headers=headers) as response:
                assert response.status == 202, await response.text()
        for n, extra in enumerate(hostile):
            body = {"order_id": f"bad-{n}", "user_id": "ada", "product_id": "sku-0", "quantity": 1}
            async with http.post(f"{base}/orders", json=body | extra) as response:
                assert response.status == 422, (extra, await response.text())
                assert (await response.json())["error"] == "invalid order request"
        # A megabyte of notes is refused before it is parsed.
        big = {"order_id": "bad-big", "user_id": "ada", "product_id": "sku-0", "quantity": 1}
        async with http.post(f"{base}/orders", json=big | {"notes": "x" * 2**20}) as response:
            assert response.status == 413, await response.text()
        # From Kafka too: a line carrying the metadata, and one whose address is invalid.
        producer = await pipeline.producer()
        try:
            topic = pipeline.topic("order-requests")
            good = json.loads(request_json("meta-3", "ada", "sku-1")) | {"notes": "by Kafka"}
            bad = json.loads(request_json("bad-kafka", "ada", "sku-1"))
            bad["shipping_address"] = ADDRESS | {"country": "fr"}
            for value in (good, bad):
                await producer.send_and_wait(topic, key=b"sku-1", value=json.dumps(value).encode())
        finally:
            await producer.stop()

        async def settled() -> bool:
            return (
                await pipeline.count(
                    "SELECT count(*) FROM orders WHERE status IN ('CONFIRMED', 'CANCELLED')"
                )
                == 3
            )

        await pipeline.wait_for("the three orders settled", settled, timeout=60)
        answers = {}
        for order_id in ("meta-1", "meta-2", "meta-3"):
            async with http.get(f"{base}/orders/{order_id}") as response:
                answers[order_id] = await response.json()
    assert answers["meta-1"]["notes"] == notes
    assert answers["meta-1"]["shipping_address"] is None
    assert answers["meta-1"]["total"] == "7.00"  # 2 x 3.50, exact
    two = answers["meta-2"]
    assert two["shipping_address"] == ADDRESS
    assert two["billing_address"] == ADDRESS | {"line2": "3rd floor", "city": "Lyon"}
    assert two["notes"] == notes
    assert two["total"] == "13.50"
    assert answers["meta-3"]["notes"] == "by Kafka"
    # Nothing invalid was decided; the Kafka one is on the dead-letter topic, with why.
    stored = {row["order_id"] for row in await pipeline.query("SELECT order_id FROM orders")}
    assert stored == {"meta-1", "meta-2", "meta-3"}
    [dead] = await pipeline.read_topic("order-requests-dlq")
    reason = dict(dead.headers)["orderstream-dlq-reason"].decode()
    assert "shipping_address.country" in reason, reason
    orders = {"meta-1": [("sku-0", 2)], "meta-2": [("sku-0", 1), ("sku-1", 1)]}
    await _assert_conserved(pipeline, orders | {"meta-3": [("sku-1", 1)]})
