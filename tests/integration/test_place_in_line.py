"""Place in line (issue 17, item 3): the 202 of POST /orders names the request's partition
and offset; GET on its status_url answers QUEUED with what is ahead until it is decided."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from orderstream.domain import owner_partition
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-queue"
STOCK = 1_000
BURST = 5_000


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_a_queued_orders_ahead_only_shrinks_until_it_is_decided(pipeline: Pipeline) -> None:
    pipeline.start("worker", ORDERSTREAM_WORKER_METRICS_PORT="0")
    pipeline.start("sink", ORDERSTREAM_SINK_METRICS_PORT="0")
    pipeline.start("serve")
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    base = await pipeline.wait_for_status_service()
    pipeline.stop("worker")  # the line forms while nobody decides

    burst = [f"b-{n}" for n in range(BURST)]
    await pipeline.publish(
        (PRODUCT.encode(), request_json(order_id, f"u-{n}", PRODUCT))
        for n, order_id in enumerate(burst)
    )
    async with aiohttp.ClientSession() as http:
        body = {"order_id": "sampled", "user_id": "me", "product_id": PRODUCT, "quantity": 1}
        async with http.post(f"{base}/orders", json=body) as response:
            assert response.status == 202
            published = await response.json()
        assert published["partition"] == owner_partition(PRODUCT, pipeline.settings.partitions)
        assert published["offset"] >= BURST
        url = base + published["status_url"]
        status, first = await _get(http, url)
        assert status == 200, first
        assert first["status"] == "QUEUED", first
        assert first["ahead"] >= BURST, first  # every request of the burst is ahead
        assert first["available"] == STOCK, first
        # Without its place, the order is not known yet: 404 as before.
        assert (await _get(http, f"{base}/orders/sampled"))[0] == 404

        # Small batches, committed often: the line moves in steps a poll can see.
        pipeline.start(
            "worker",
            ORDERSTREAM_WORKER_METRICS_PORT="0",
            ORDERSTREAM_COMMIT_INTERVAL_S="0.05",
            ORDERSTREAM_BATCH_MAX_RECORDS="20",
        )
        aheads = [first["ahead"]]
        for _ in range(1_200):  # up to a minute
            status, answer = await _get(http, url)
            assert status == 200, answer
            if answer["status"] != "QUEUED":
                break
            aheads.append(answer["ahead"])
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"never decided; ahead went {aheads[:5]} ... {aheads[-5:]}")
    print("ahead as polled:", aheads)
    assert aheads == sorted(aheads, reverse=True), aheads  # it never grows
    assert aheads[-1] < aheads[0]  # and it was seen shrinking (then decided)
    assert answer["status"] == "REJECTED", answer  # 1,000 units, 5,000 ahead of it
    await pipeline.wait_for_orders(BURST + 1)
    await assert_invariants(pipeline, {PRODUCT: STOCK}, {*burst, "sampled"})
