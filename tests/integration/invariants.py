"""The invariants of docs/contract.md, checked against PostgreSQL and the order-events topic."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping

from orderstream.topics import ORDER_EVENTS
from tests.integration.pipeline import Pipeline

DECIDED = {"RESERVED", "REJECTED"}  # what the stock agent decides in one hop


async def assert_invariants(
    pipe: Pipeline, stock_in: Mapping[str, int], accepted_orders: set[str]
) -> None:
    """Check stock conservation, no oversell, one decision per order, no extra orders.

    ``stock_in``: per product, initial stock + restocks. ``accepted_orders``: every
    distinct valid order id that was published.
    """
    stock = {
        row["product_id"]: row
        for row in await pipe.query(
            "SELECT product_id, available, reserved, sold, total_in FROM product_stock"
        )
    }
    reserved_by_orders: dict[str, int] = defaultdict(int)
    for row in await pipe.query(
        "SELECT i.product_id, sum(i.quantity) AS q FROM orders o"
        " JOIN order_items i USING (order_id) WHERE o.status = 'RESERVED'"
        " GROUP BY i.product_id"
    ):
        reserved_by_orders[row["product_id"]] = int(row["q"])
    for product_id, total_in in stock_in.items():
        level = stock[product_id]
        assert min(level["available"], level["reserved"], level["sold"]) >= 0, level
        # Conserved: everything put in is available, reserved or sold.
        assert level["available"] + level["reserved"] + level["sold"] == total_in, level
        assert level["total_in"] == total_in, level
        # No oversell, and PostgreSQL's orders agree with the stock figure.
        assert reserved_by_orders[product_id] == level["reserved"] <= total_in, (
            product_id,
            reserved_by_orders[product_id],
            level,
        )

    orders = await pipe.query("SELECT order_id, status FROM orders")
    assert {row["order_id"] for row in orders} == accepted_orders
    assert all(row["status"] in DECIDED for row in orders)
    history = await pipe.query("SELECT order_id, count(*) AS n FROM order_events GROUP BY 1")
    assert {row["order_id"]: row["n"] for row in history} == dict.fromkeys(accepted_orders, 1)

    # On the topic, an order may be re-sent (a duplicate request re-emits the recorded
    # decision) but never decided two different ways.
    decisions: dict[str, set[str]] = defaultdict(set)
    for record in await pipe.read_topic(ORDER_EVENTS):
        event = json.loads(record.value)
        decisions[event["order_id"]].add(f"{event['seq']}:{event['status']}")
    assert set(decisions) == accepted_orders
    conflicting = {order: seen for order, seen in decisions.items() if len(seen) != 1}
    assert not conflicting, conflicting
