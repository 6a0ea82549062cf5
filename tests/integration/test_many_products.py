"""Many products at once: every product sells min(stock, demand), stock conserved."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCTS = 20
REQUESTS = 10_000


async def test_each_product_sells_min_of_stock_and_demand(pipeline: Pipeline) -> None:
    rng = random.Random(23)
    stock = {f"sku-{i}": rng.randint(0, 600) for i in range(PRODUCTS)}
    pipeline.start()
    for product_id, quantity in stock.items():
        await pipeline.set_stock(product_id, quantity)
    for product_id, quantity in stock.items():
        await pipeline.wait_for_stock(product_id, quantity)

    # Skewed demand, so some products sell out and some do not.
    weights = [1 / (rank + 1) for rank in range(PRODUCTS)]
    chosen = rng.choices(list(stock), weights=weights, k=REQUESTS)
    demand = Counter(chosen)
    await pipeline.publish(
        (p.encode(), request_json(f"order-{n}", f"user-{rng.randrange(2000)}", p))
        for n, p in enumerate(chosen)
    )

    await pipeline.wait_for_orders(REQUESTS)
    reserved = {
        row["product_id"]: row["reserved"]
        for row in await pipeline.query("SELECT product_id, reserved FROM product_stock")
    }
    expected = {p: min(stock[p], demand[p]) for p in stock}
    assert reserved == expected
    assert any(demand[p] > stock[p] for p in stock), "the test should sell some products out"
    assert any(demand[p] < stock[p] for p in stock), "and leave some with stock"
    await assert_invariants(pipeline, stock, {f"order-{n}" for n in range(REQUESTS)})
