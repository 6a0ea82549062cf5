"""kill -9 the worker in the middle of a flash sale; the restarted one keeps every invariant."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import SHORT_SESSION, Pipeline
from tests.integration.test_flash_sale import (
    PRODUCT,
    STOCK,
    flash_sale_requests,
    publish_concurrently,
)

# Large enough that the kill lands mid-sale: the stock agent decides 5,000 requests in
# well under a second.
DISTINCT = 40_000

pytestmark = pytest.mark.integration


async def test_kill_9_mid_sale_keeps_invariants(pipeline: Pipeline) -> None:
    pipeline.start(**SHORT_SESSION)
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    requests, distinct = flash_sale_requests(seed=29, distinct=DISTINCT, resends=4_000)

    publishing = asyncio.create_task(publish_concurrently(pipeline, requests))

    async def some_decided() -> bool:
        return await pipeline.count("SELECT count(*) FROM orders") >= 200

    await pipeline.wait_for("the sale to be under way", some_decided)
    decided_before = await pipeline.count("SELECT count(*) FROM orders")
    pipeline.kill()  # SIGKILL: no shutdown, no final commit, no producer flush
    assert decided_before < DISTINCT, "the kill should land mid-sale"

    await publishing
    pipeline.start(**SHORT_SESSION)  # same data dir: the local cache is dropped and rebuilt
    await pipeline.wait_for_orders(DISTINCT)

    counts = await pipeline.query("SELECT status, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1")
    assert counts == [
        {"status": "REJECTED", "n": DISTINCT - STOCK},
        {"status": "RESERVED", "n": STOCK},
    ]
    await assert_invariants(pipeline, {PRODUCT: STOCK}, distinct)
