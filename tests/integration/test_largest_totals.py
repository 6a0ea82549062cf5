"""The largest amounts the rules accept reach PostgreSQL exact, on the real broker and database.

A product priced at the largest price a stock command takes, ordered at the largest
quantity a line takes: alone, and on every line of an order of the most lines. The
sink must store each total as the order agent computed it and the payment agent charged
it; a column too narrow for it dead-letters the order's every event instead.
"""

from __future__ import annotations

import json
from decimal import Decimal

import aiohttp
import pytest

from orderstream.domain import PRICE_DIGITS, PRICE_PLACES, StockOperation
from orderstream.producer import OrderLinesPublisher, order_lines, publish_stock_commands
from orderstream.topics import (
    DLQ_REASON_HEADER,
    DLQ_SUFFIX,
    MAX_LINE_COUNT,
    MAX_QUANTITY,
    ORDER_EVENTS,
    PAYMENT_REQUESTS,
    StockCommand,
)
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json
from tests.integration.test_replay import sink_caught_up

pytestmark = pytest.mark.integration

# 9999999999.9999: every digit a price may have.
MAX_PRICE = Decimal(10 ** (PRICE_DIGITS - PRICE_PLACES)) - Decimal(1).scaleb(-PRICE_PLACES)
SINGLE = "max-single"
MANY = "max-lines"
SINGLE_PRODUCT = "sku-max"
LINE_PRODUCTS = [f"sku-max-{n:03d}" for n in range(MAX_LINE_COUNT)]
TOTALS = {
    SINGLE: MAX_PRICE * MAX_QUANTITY,
    MANY: MAX_PRICE * MAX_QUANTITY * MAX_LINE_COUNT,
}
# The lifecycle runs (an order of several lines is assembled and charged by it), but the
# payment takes minutes: both orders stay RESERVED, one decision each, while checked. A
# line may ask for as much as the schema allows (the default setting allows 10).
SETTINGS = {
    "ORDERSTREAM_MAX_LINE_QUANTITY": str(MAX_QUANTITY),
    "ORDERSTREAM_RUN_LIFECYCLE": "true",
    "ORDERSTREAM_PAYMENT_SUCCESS_RATE": "1",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "300",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "300",
    "ORDERSTREAM_PAYMENT_TIMEOUT_S": "600",
}


async def _charges(pipe: Pipeline) -> dict[str, Decimal]:
    return {
        request["order_id"]: Decimal(request["amount"])
        for request in map(json.loads, (r.value for r in await pipe.read_topic(PAYMENT_REQUESTS)))
    }


async def _decided(pipe: Pipeline) -> set[str]:
    return {json.loads(r.value)["order_id"] for r in await pipe.read_topic(ORDER_EVENTS)}


async def test_the_largest_price_quantity_and_line_count_land_with_exact_totals(
    pipeline: Pipeline,
) -> None:
    products = [SINGLE_PRODUCT, *LINE_PRODUCTS]
    pipeline.start(**SETTINGS)
    await publish_stock_commands(
        pipeline.settings,
        [
            StockCommand(
                product_id=product,
                operation=StockOperation.SET,
                quantity=MAX_QUANTITY,
                price=MAX_PRICE,
                currency="EUR",
                max_per_user=MAX_QUANTITY,
            )
            for product in products
        ],
    )

    async def stocked() -> bool:
        return await pipeline.count(
            "SELECT count(*) FROM product_stock WHERE total_in = %s", (MAX_QUANTITY,)
        ) == len(products)

    await pipeline.wait_for("every product stocked", stocked, timeout=120)

    await pipeline.publish(
        [(SINGLE_PRODUCT.encode(), request_json(SINGLE, "u-single", SINGLE_PRODUCT, MAX_QUANTITY))]
    )
    publisher = OrderLinesPublisher(pipeline.settings)
    try:
        await publisher.publish(
            order_lines(MANY, "u-many", [(product, MAX_QUANTITY) for product in LINE_PRODUCTS])
        )
    finally:
        await publisher.close()

    # Both orders decided and charged, and the sink past every event (stored or dead).
    async def charged() -> bool:
        return set(await _charges(pipeline)) == set(TOTALS)

    async def decided() -> bool:
        return await _decided(pipeline) == set(TOTALS)

    await pipeline.wait_for("both orders charged", charged, timeout=60)
    await pipeline.wait_for("both orders decided", decided, timeout=60)
    await pipeline.wait_for("the sink to commit", lambda: sink_caught_up(pipeline), timeout=60)
    assert pipeline.alive(), pipeline.logs()

    # The shopper is charged the exact total, and no event of the order was refused.
    assert await _charges(pipeline) == TOTALS
    dead = await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX)
    assert not dead, [
        (r.key.decode(), dict(r.headers)[DLQ_REASON_HEADER].decode()[:200]) for r in dead
    ]

    orders = await pipeline.query("SELECT order_id, status, total, currency FROM orders")
    assert {row["order_id"]: (row["status"], row["total"], row["currency"]) for row in orders} == {
        order_id: ("RESERVED", total, "EUR") for order_id, total in TOTALS.items()
    }
    items = await pipeline.query(
        "SELECT order_id, product_id, quantity, unit_price FROM order_items"
    )
    assert sorted((i["order_id"], i["product_id"]) for i in items) == sorted(
        [(SINGLE, SINGLE_PRODUCT), *((MANY, product) for product in LINE_PRODUCTS)]
    )
    assert {(i["quantity"], i["unit_price"]) for i in items} == {(MAX_QUANTITY, MAX_PRICE)}
    prices = await pipeline.query("SELECT DISTINCT price, currency FROM product_stock")
    assert prices == [{"price": MAX_PRICE, "currency": "EUR"}]

    # HTTP answers the same amount, as an exact string.
    base = f"http://127.0.0.1:{pipeline.settings.http_port}"
    async with aiohttp.ClientSession() as http, http.get(f"{base}/orders/{MANY}") as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["total"] == "2147483646999978525163.53"

    await assert_invariants(pipeline, dict.fromkeys(products, MAX_QUANTITY), set(TOTALS))
