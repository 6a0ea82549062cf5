"""The dedup window: final holds leave the changelog after it, stale requests are refused."""

from __future__ import annotations

import time

import pytest

from orderstream.tables import HOLD_KEY, stock_changelog
from orderstream.topics import DLQ_REASON_HEADER
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import SHORT_SESSION_S, Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-window"
STOCK = 5
ORDERS = 40
WINDOW_S = 3


async def test_holds_expire_and_stale_requests_are_dead_lettered(pipeline: Pipeline) -> None:
    pipeline.settings = pipeline.settings.model_copy(
        update={"dedup_window_s": WINDOW_S, "session_timeout_s": SHORT_SESSION_S}
    )
    pipeline.start()
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    orders = {f"w-{n}" for n in range(ORDERS)}
    await pipeline.publish((PRODUCT.encode(), request_json(o, "u", PRODUCT)) for o in orders)
    await pipeline.wait_for_orders(ORDERS)
    changelog = stock_changelog(pipeline.settings)

    # Every rejection's hold is tombstoned once it is older than the window; the
    # reservations (not final) stay.
    async def rejections_tombstoned() -> bool:
        records = await pipeline.read_topic(changelog, prefixed=False)
        tombstones = {r.key for r in records if r.key.startswith(HOLD_KEY) and r.value is None}
        return len(tombstones) == ORDERS - STOCK

    await pipeline.wait_for("the rejected holds to expire", rejections_tombstoned, timeout=60)

    # A request whose Kafka timestamp is older than the window is never decided.
    stale_ms = int((time.time() - WINDOW_S - 60) * 1000)
    producer = await pipeline.producer()
    try:
        await producer.send_and_wait(
            pipeline.topic("order-requests"),
            key=PRODUCT.encode(),
            value=request_json("stale-1", "u", PRODUCT),
            timestamp_ms=stale_ms,
        )
    finally:
        await producer.stop()

    async def dead_lettered() -> bool:
        return bool(await pipeline.read_topic("order-requests-dlq"))

    await pipeline.wait_for("the stale request's dead letter", dead_lettered)
    [dead] = await pipeline.read_topic("order-requests-dlq")
    assert dict(dead.headers)[DLQ_REASON_HEADER].startswith(b"STALE"), dead.headers

    # A restart restores from the compacted log with tombstones: the stock is intact.
    pipeline.kill()
    pipeline.start()

    # The replacement gets the partitions once the killed member's session times out,
    # longer than this test's window: publish only when it decides again.
    async def restored() -> bool:
        return pipeline.logs().count("restored partitions") >= 2

    await pipeline.wait_for("the replacement's restore", restored)
    await pipeline.publish([(PRODUCT.encode(), request_json("after", "u", PRODUCT))])
    await pipeline.wait_for_orders(ORDERS + 1)
    rows = await pipeline.query("SELECT status, reason FROM orders WHERE order_id = 'after'")
    assert rows == [{"status": "REJECTED", "reason": "OUT_OF_STOCK"}]
    await assert_invariants(pipeline, {PRODUCT: STOCK}, orders | {"after"})
