"""Sold out at the door: the status service's live stock view, on the real stack.

The view follows stock-changes; POST /orders refuses a product it knows has none left
(409 SOLD_OUT, nothing published) and lets it through again once restocked; GET
/products answers from it. A Kafka producer's request still gets its REJECTED event.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from orderstream.http import create_app
from orderstream.http.schemas import ISO_TIMESTAMP_PATTERN
from orderstream.http.stock_view import StockFigures
from orderstream.producer import publish_stock_commands
from orderstream.topics import ORDER_EVENTS, StockCommand, StockOperation
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-door"
STOCK = 3
RESTOCK = 2
POLL_S = 0.05
# The issue asks for a second; a loaded CI machine gets slack, the figure is printed.
BOUND_S = 5.0


class Shop:
    """A shop front end talking to the status service of the pipeline under test."""

    def __init__(self, pipe: Pipeline, http: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{pipe.settings.http_port}"
        self.http = http
        self.accepted: set[str] = set()
        self._orders = 0

    async def order(self, n: int | None = None, *, keyed: bool = False) -> tuple[int, Any]:
        """Post order ``n`` (default: a new one) of one unit of PRODUCT, by user ``n``.

        ``keyed``: with the order id as Idempotency-Key. The order is remembered if accepted.
        """
        if n is None:
            self._orders += 1
            n = self._orders
        order_id = f"o-{n}"
        body = {"user_id": f"u-{n}", "product_id": PRODUCT, "quantity": 1}
        if keyed:
            post = self.http.post(
                f"{self.base}/orders", json=body, headers={"Idempotency-Key": order_id}
            )
        else:
            post = self.http.post(f"{self.base}/orders", json=body | {"order_id": order_id})
        async with post as answer:
            if answer.status == 202:
                self.accepted.add(order_id)
            return answer.status, await answer.json()

    async def product(self, product_id: str = PRODUCT) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.base}/products/{product_id}") as answer:
            return answer.status, await answer.json()

    async def poll_orders_until(self, status: int) -> tuple[float, dict[str, Any]]:
        """Post an order every POLL_S until one is answered ``status``; return when, and it."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answered, body = await self.order()
            if answered == status:
                return time.monotonic(), body
            assert answered in (202, 409), (answered, body)
            await asyncio.sleep(POLL_S)
        raise AssertionError(f"no {status} to POST /orders within 30 s")


async def test_sold_out_at_the_door_and_open_again_after_a_restock(pipeline: Pipeline) -> None:
    pipeline.start()
    async with aiohttp.ClientSession() as http:
        shop = Shop(pipeline, http)
        await pipeline.wait_for_status_service()
        put_on_sale = StockCommand(
            product_id=PRODUCT,
            operation=StockOperation.SET,
            quantity=STOCK,
            price=Decimal("12.50"),
            currency="EUR",
        )
        await publish_stock_commands(pipeline.settings, [put_on_sale])

        async def on_sale_live() -> bool:
            status, body = await shop.product()
            return status == 200 and body["source"] == "live" and body["total_in"] == STOCK

        await pipeline.wait_for("the view to show the stock", on_sale_live, timeout=60)

        for _ in range(STOCK):
            status, body = await shop.order(keyed=True)
            assert status == 202, body
        last_unit_sold = time.monotonic()
        sold_out_at, refusal = await shop.poll_orders_until(409)
        sold_out_s = sold_out_at - last_unit_sold
        assert refusal == {"error": "product sold out", "reason": "SOLD_OUT", "product_id": PRODUCT}
        # A retry of the last unit's order with its key gets its 202, not a refusal; the
        # same retry without the key published nothing (and need not: it was accepted).
        assert await shop.order(STOCK, keyed=True) == (
            202,
            {"order_id": f"o-{STOCK}", "status_url": f"/orders/o-{STOCK}", "lines": 1},
        )
        assert (await shop.order(STOCK))[0] == 409
        # The door's refusals and the view's state are on /metrics, for an operator.
        async with http.get(f"{shop.base}/metrics") as answer:
            scraped = await answer.text()
        refusals = re.search(r"^orderstream_sold_out_refusals_total (\S+)$", scraped, re.M)
        assert refusals is not None, scraped
        assert float(refusals.group(1)) >= 2  # the poll's refusal and the keyless retry
        assert re.search(r"^orderstream_stock_view_caught_up 1\.0$", scraped, re.M), scraped
        assert re.search(r"^orderstream_stock_view_products 1\.0$", scraped, re.M), scraped

        status, live = await shop.product()
        assert status == 200
        assert {k: v for k, v in live.items() if k not in ("version", "updated_at", "age_ms")} == {
            "product_id": PRODUCT,
            "available": 0,
            "reserved": STOCK,  # the lifecycle is off: the orders stay RESERVED
            "sold": 0,
            "total_in": STOCK,
            "price": "12.50",
            "currency": "EUR",
            "max_per_user": None,
            "source": "live",
        }
        assert live["version"] >= 1 + STOCK  # the set, then a reservation per unit
        assert re.fullmatch(ISO_TIMESTAMP_PATTERN, live["updated_at"]), live
        assert 0 <= live["age_ms"] < 60_000

        # A Kafka producer is not turned away at a door: the stock agent rejects it.
        await pipeline.publish([(PRODUCT.encode(), request_json("k-1", "u-kafka", PRODUCT))])
        shop.accepted.add("k-1")
        await _assert_rejected_on_the_topic(pipeline, "k-1")

        # A service whose view has not caught up publishes, and answers from PostgreSQL.
        await _assert_database_fallback(pipeline, shop)

        restock = StockCommand(product_id=PRODUCT, operation=StockOperation.ADD, quantity=RESTOCK)
        await publish_stock_commands(pipeline.settings, [restock])
        restocked = time.monotonic()
        open_at, published = await shop.poll_orders_until(202)
        open_s = open_at - restocked
        assert published["lines"] == 1

        status, unknown = await shop.product("sku-nobody-sells")
        assert (status, unknown) == (
            404,
            {"error": "product not found", "product_id": "sku-nobody-sells"},
        )

    print(f"409 SOLD_OUT {sold_out_s * 1000:.0f} ms after the last unit's 202")
    print(f"202 again {open_s * 1000:.0f} ms after the restock was acknowledged")
    assert sold_out_s < BOUND_S
    assert open_s < BOUND_S

    total_in = STOCK + RESTOCK
    await pipeline.wait_for_stock(PRODUCT, total_in)
    await pipeline.wait_for_orders(len(shop.accepted))

    async def stock_settled() -> bool:
        # The sink has written the last change: the reservation of the order that got in.
        rows = await pipeline.query(
            "SELECT reserved FROM product_stock WHERE product_id = %s", (PRODUCT,)
        )
        return rows[0]["reserved"] == STOCK + 1

    await pipeline.wait_for("the last reservation in PostgreSQL", stock_settled)
    await assert_invariants(pipeline, {PRODUCT: total_in}, shop.accepted)
    rejected = await pipeline.count(
        "SELECT count(*) FROM orders WHERE status = 'REJECTED' AND reason = 'OUT_OF_STOCK'"
    )
    assert rejected == len(shop.accepted) - STOCK - 1
    assert pipeline.alive(), pipeline.logs()


async def _assert_rejected_on_the_topic(pipe: Pipeline, order_id: str) -> None:
    async def rejected() -> bool:
        for record in await pipe.read_topic(ORDER_EVENTS):
            event = json.loads(record.value)
            if event["order_id"] == order_id:
                assert (event["status"], event["reason"]) == ("REJECTED", "OUT_OF_STOCK"), event
                return True
        return False

    await pipe.wait_for(f"{order_id}'s REJECTED event on order-events", rejected, timeout=60)


async def _assert_database_fallback(pipe: Pipeline, shop: Shop) -> None:
    """A second service, whose figures nothing feeds: never caught up, it hints nothing."""
    app = create_app(pipe.settings, CollectorRegistry(), stock_figures=StockFigures())
    async with TestClient(TestServer(app)) as client:
        order = {"order_id": "o-behind", "user_id": "u-behind", "product_id": PRODUCT}
        response = await client.post("/orders", json=order | {"quantity": 1})
        assert response.status == 202, await response.text()
        shop.accepted.add("o-behind")

        async def from_database() -> bool:
            response = await client.get(f"/products/{PRODUCT}")
            body = await response.json()
            assert body["source"] == "database", body
            return bool(body["reserved"] == STOCK and body["price"] == "12.50")

        await pipe.wait_for("the stock in PostgreSQL", from_database)
        body = await (await client.get(f"/products/{PRODUCT}")).json()
        assert (body["available"], body["total_in"], body["currency"]) == (0, STOCK, "EUR")
        assert body["age_ms"] >= 0
