"""Prices, totals, metadata and overrides: from order events and stock changes, through the
sink, to PostgreSQL and GET /orders/{id}.

Events are made by hand and published straight to the sink's topics (only the sink
runs), each twice: a duplicate has the effect of one, a late event never moves an order
back, and what an order once carried (its total, its addresses) is never erased.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from orderstream.domain import LineStatus, OrderStatus, RejectReason
from orderstream.http import create_app
from orderstream.topics import (
    DLQ_REASON_HEADER,
    DLQ_SUFFIX,
    ORDER_EVENTS,
    STOCK_CHANGES,
    Address,
    OrderEvent,
    OrderItem,
    StockChange,
)
from tests.integration.pipeline import Pipeline
from tests.integration.test_replay import sink_caught_up
from tests.integration.test_sink_poison import publish_events

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
HOME = Address(name="Ada Lovelace", line1="12 Rue de la Paix", city="Paris", country="FR")
OFFICE = Address(
    name="Ada Lovelace", line1="1 Quai Ouest", line2="3rd floor", city="Lyon", postal_code="69002",
    country="FR",
)  # fmt: skip
NOTES = "Ring twice.\nLeave it with the concierge\tif nobody answers."
EUR = {"currency": "EUR"}


def event(order_id: str, seq: int, status: OrderStatus, **fields: Any) -> OrderEvent:
    """An order event as the pipeline emits it: two of sku-a unless ``fields`` say otherwise."""
    base: dict[str, Any] = {
        "order_id": order_id,
        "seq": seq,
        "status": status,
        "user_id": "user-1",
        "product_id": "sku-a",
        "quantity": 2,
        "requested_at_ms": NOW_MS,
        "decided_at_ms": NOW_MS + seq,
    }
    return OrderEvent(**(base | fields))


def change(version: int, **catalog: Any) -> StockChange:
    return StockChange(
        product_id="sku-a",
        available=10 - version,
        reserved=version,
        sold=0,
        total_in=10,
        version=version,
        changed_at_ms=NOW_MS + version,
        **catalog,
    )


def line(product_id: str, quantity: int, status: LineStatus, price: str | None) -> OrderItem:
    priced = {} if price is None else {"unit_price": Decimal(price), **EUR}
    return OrderItem(product_id=product_id, quantity=quantity, status=status, **priced)


SINGLE = event(
    "single", 1, OrderStatus.RESERVED, unit_price=Decimal("19.99"), total=Decimal("39.98"), **EUR
)
# An order of two lines, then its confirmation listing them without their prices.
MULTI = event(
    "multi", 1, OrderStatus.RESERVED, unit_price=Decimal("19.99"), total=Decimal("45.48"),
    items=[
        line("sku-a", 2, LineStatus.RESERVED, "19.99"),
        line("sku-b", 1, LineStatus.RESERVED, "5.5"),
    ],
    **EUR,
)  # fmt: skip
MULTI_THEN = event(
    "multi", 2, OrderStatus.CONFIRMED,
    items=[
        line("sku-a", 2, LineStatus.COMMITTED, None),
        line("sku-b", 1, LineStatus.COMMITTED, None),
    ],
)  # fmt: skip
PRICED = {"unit_price": Decimal("19.99"), "total": Decimal("39.98"), **EUR}
METADATA: dict[str, Any] = {"shipping_address": HOME, "billing_address": OFFICE, "notes": NOTES}
# The order's metadata and total come with its first event; its next one lacks them.
META_FIRST = event("meta", 1, OrderStatus.RESERVED, **PRICED, **METADATA)
META_THEN = event("meta", 2, OrderStatus.CONFIRMED)
# The same two in one batch: folded there, with the same outcome.
FOLDED = [
    event("folded", 1, OrderStatus.RESERVED, **PRICED, **METADATA),
    event("folded", 2, OrderStatus.CONFIRMED),
]
# The same, arriving the other way round: the late event fills in, never moves back.
LATE_SECOND = event("late", 2, OrderStatus.CONFIRMED)
LATE_FIRST = event("late", 1, OrderStatus.RESERVED, **PRICED, **METADATA)
# An operator confirms a reserved order: the history says who and why.
OVERRIDE_FIRST = event("override", 1, OrderStatus.RESERVED, **PRICED)
OVERRIDE = event(
    "override", 2, OrderStatus.CONFIRMED, reason=RejectReason.ADMIN_OVERRIDE,
    detail="paid by bank transfer", actor="ops-ann", **PRICED,
)  # fmt: skip
# Valid messages whose totals PostgreSQL does not take as they are: too large for
# numeric(26, 4), and more places than it keeps (it would round them).
POISON = [
    event("poison-large", 1, OrderStatus.RESERVED, total=Decimal("1E+22"), **EUR),
    event("poison-places", 1, OrderStatus.RESERVED, total=Decimal("39.98001"), **EUR),
]
# The catalog: a price and a limit, then another price and no limit of its own.
FIRST_CATALOG = change(1, price=Decimal("19.99"), currency="EUR", max_per_user=2)
LATEST_CATALOG = change(2, price=Decimal("17.5"), currency="EUR")


async def publish_changes(pipe: Pipeline, changes: Sequence[StockChange]) -> None:
    producer = await pipe.producer()
    try:
        for stock in changes:
            await producer.send_and_wait(
                pipe.topic(STOCK_CHANGES),
                key=stock.product_id.encode(),
                value=stock.model_dump_json().encode(),
            )
    finally:
        await producer.stop()


def twice(events: Sequence[OrderEvent]) -> list[OrderEvent]:
    return [e for e in events for _ in range(2)]


async def wait_caught_up(pipe: Pipeline) -> None:
    await pipe.wait_for("the sink to commit", lambda: sink_caught_up(pipe), watch="sink")


async def get_order(pipe: Pipeline, order_id: str) -> dict[str, Any]:
    app = create_app(pipe.settings, CollectorRegistry())
    async with TestClient(TestServer(app)) as client:
        response = await client.get(f"/orders/{order_id}")
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def rows(pipe: Pipeline, sql: str) -> dict[str, dict[str, Any]]:
    return {row.pop("order_id"): row for row in await pipe.query(sql)}


async def test_prices_totals_metadata_and_overrides_land_once_and_never_go_back(
    pipeline: Pipeline,
) -> None:
    first = [SINGLE, MULTI, META_FIRST, LATE_SECOND, OVERRIDE_FIRST, *FOLDED, *POISON]
    await publish_events(pipeline, twice(first), partition=0)
    await publish_changes(pipeline, [LATEST_CATALOG, LATEST_CATALOG])
    pipeline.start("sink")
    await pipeline.wait_for_orders(6, timeout=60)
    await wait_caught_up(pipeline)
    # What an order carried has landed before the events that lack it are published.
    assert (await rows(pipeline, "SELECT order_id, total FROM orders"))["meta"] == {
        "total": Decimal("39.98")
    }

    # The later events, and the late ones, each twice; one earlier event replayed.
    second = [META_THEN, MULTI_THEN, LATE_FIRST, OVERRIDE, SINGLE]
    await publish_events(pipeline, twice(second), partition=1)
    await publish_changes(pipeline, [FIRST_CATALOG, FIRST_CATALOG])
    await wait_caught_up(pipeline)
    assert pipeline.alive("sink"), pipeline.logs()

    orders = await rows(
        pipeline,
        "SELECT order_id, status, reason, seq, total, currency, shipping_address,"
        " billing_address, notes FROM orders",
    )
    assert set(orders) == {"single", "multi", "meta", "folded", "late", "override"}
    home, office = HOME.model_dump(exclude_none=True), OFFICE.model_dump(exclude_none=True)
    metadata = {"shipping_address": home, "billing_address": office, "notes": NOTES}
    no_metadata = dict.fromkeys(("shipping_address", "billing_address", "notes"))
    price = {"total": Decimal("39.98"), "currency": "EUR"}
    assert orders == {
        "single": {"status": "RESERVED", "reason": None, "seq": 1, **price, **no_metadata},
        "multi": {
            "status": "CONFIRMED", "reason": None, "seq": 2, "total": Decimal("45.48"),
            "currency": "EUR", **no_metadata,
        },
        # Kept through an event without them, in a later batch or in the same one...
        "meta": {"status": "CONFIRMED", "reason": None, "seq": 2, **price, **metadata},
        "folded": {"status": "CONFIRMED", "reason": None, "seq": 2, **price, **metadata},
        # ... and filled in by a late one, which moved nothing back.
        "late": {"status": "CONFIRMED", "reason": None, "seq": 2, **price, **metadata},
        "override": {
            "status": "CONFIRMED", "reason": "ADMIN_OVERRIDE", "seq": 2, **price, **no_metadata,
        },
    }  # fmt: skip

    items = await pipeline.query(
        "SELECT order_id, product_id, quantity, status, seq, unit_price, currency"
        " FROM order_items ORDER BY order_id, product_id"
    )
    priced = {"quantity": 2, "unit_price": Decimal("19.99"), "currency": "EUR"}
    assert items == [
        {"order_id": "folded", "product_id": "sku-a", "status": "CONFIRMED", "seq": 2, **priced},
        {"order_id": "late", "product_id": "sku-a", "status": "CONFIRMED", "seq": 2, **priced},
        {"order_id": "meta", "product_id": "sku-a", "status": "CONFIRMED", "seq": 2, **priced},
        {"order_id": "multi", "product_id": "sku-a", "status": "CONFIRMED", "seq": 2, **priced},
        {
            "order_id": "multi", "product_id": "sku-b", "status": "CONFIRMED", "seq": 2,
            "quantity": 1, "unit_price": Decimal("5.5"), "currency": "EUR",
        },
        {"order_id": "override", "product_id": "sku-a", "status": "CONFIRMED", "seq": 2, **priced},
        {"order_id": "single", "product_id": "sku-a", "status": "RESERVED", "seq": 1, **priced},
    ]  # fmt: skip

    committed = await pipeline.query(
        "SELECT line_status FROM order_items WHERE order_id = 'multi' ORDER BY product_id"
    )
    assert committed == [{"line_status": "COMMITTED"}] * 2  # moved on, prices kept

    # The history: each (order, seq) once, whatever the duplicates, with who and why.
    history = await pipeline.query(
        "SELECT order_id, seq, status, detail, actor FROM order_events ORDER BY order_id, seq"
    )
    assert [(row["order_id"], row["seq"]) for row in history] == [
        ("folded", 1), ("folded", 2), ("late", 1), ("late", 2), ("meta", 1), ("meta", 2),
        ("multi", 1), ("multi", 2), ("override", 1), ("override", 2), ("single", 1),
    ]  # fmt: skip
    assert history[9] == {
        "order_id": "override",
        "seq": 2,
        "status": "CONFIRMED",
        "detail": "paid by bank transfer",
        "actor": "ops-ann",
    }
    assert all(row["actor"] is None for row in history if row["order_id"] != "override")

    # The newest catalog snapshot won over the late one, and conservation holds.
    stock = await pipeline.query(
        "SELECT version, available, reserved, sold, total_in, price, currency, max_per_user"
        " FROM product_stock"
    )
    assert stock == [
        {
            "version": 2, "available": 8, "reserved": 2, "sold": 0, "total_in": 10,
            "price": Decimal("17.5000"), "currency": "EUR", "max_per_user": None,
        }
    ]  # fmt: skip

    # Each poison copy was dead-lettered with PostgreSQL's reason; nothing else was.
    dead = await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX)
    assert sorted(record.key.decode() for record in dead) == [
        "poison-large", "poison-large", "poison-places", "poison-places",
    ]  # fmt: skip
    reasons = {
        record.key.decode(): dict(record.headers)[DLQ_REASON_HEADER].decode() for record in dead
    }
    assert reasons["poison-large"].startswith("NumericValueOutOfRange:"), reasons
    assert reasons["poison-places"].startswith("CheckViolation:"), reasons

    await assert_served(pipeline)


async def assert_served(pipe: Pipeline) -> None:
    """GET /orders/{id}: money as exact strings, metadata as stored, nulls where unknown."""
    late = await get_order(pipe, "late")
    assert {name: late[name] for name in ("status", "total", "currency", "notes")} == {
        "status": "CONFIRMED",
        "total": "39.98",
        "currency": "EUR",
        "notes": NOTES,
    }
    assert late["shipping_address"] == HOME.model_dump(mode="json")
    assert late["billing_address"] == OFFICE.model_dump(mode="json")
    assert late["items"] == [
        {
            "product_id": "sku-a",
            "quantity": 2,
            "status": "CONFIRMED",
            "unit_price": "19.99",
            "currency": "EUR",
        }
    ]
    assert [(entry["seq"], entry["status"], entry["actor"]) for entry in late["history"]] == [
        (1, "RESERVED", None),
        (2, "CONFIRMED", None),
    ]

    multi = await get_order(pipe, "multi")
    assert (multi["total"], multi["shipping_address"], multi["notes"]) == ("45.48", None, None)
    assert [(i["product_id"], i["unit_price"]) for i in multi["items"]] == [
        ("sku-a", "19.99"),
        ("sku-b", "5.50"),
    ]

    override = await get_order(pipe, "override")
    assert (override["status"], override["reason"]) == ("CONFIRMED", "ADMIN_OVERRIDE")
    assert override["history"][-1] | {"occurred_at": None} == {
        "seq": 2,
        "status": "CONFIRMED",
        "reason": "ADMIN_OVERRIDE",
        "detail": "paid by bank transfer",
        "actor": "ops-ann",
        "occurred_at": None,
    }
