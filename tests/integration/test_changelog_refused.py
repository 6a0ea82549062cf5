"""A changelog write the broker refuses stops the stock agent before anything later lands.

Issue 21, item 2: the agent decided batch k+1 on the state holding batch k and sent its
changelog records while k's were on their way. Were k's refused and k+1's taken, a
restore found k+1's stock snapshot counting k's reservations with no hold for them: the
redelivered k was reserved again, units lost for good. Here the changelog topic takes
records of 2,000 bytes at most: a hold carrying an order's long notes is refused, the
small ones after it fit. Every record is a batch of its own (ORDERSTREAM_BATCH_MAX_RECORDS
=1), so the small ones follow in batches of their own. Then the topic takes them again,
and every order must be decided once, with the stock each one's hold says.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from orderstream.tables import stock_changelog
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-refused"
STOCK = 30
SMALL = 20


async def _max_message_bytes(pipe: Pipeline, value: int) -> None:
    """Set the changelog's max.message.bytes; return once the broker shows it."""
    topic = stock_changelog(pipe.settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=pipe.settings.kafka_bootstrap)
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(value)}
        )
        await admin.alter_configs([resource])

        async def shown() -> bool:  # a config change takes a moment to apply
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            [found] = response.to_object()["resources"]
            return any(
                entry["config_names"] == "max.message.bytes" and entry["config_value"] == str(value)
                for entry in found["config_entries"]
            )

        await pipe.wait_for(f"max.message.bytes={value} on {topic}", shown, timeout=30)
    finally:
        await admin.close()


async def test_a_refused_changelog_write_is_never_followed_by_a_later_one(
    pipeline: Pipeline,
) -> None:
    pipeline.start(ORDERSTREAM_BATCH_MAX_RECORDS="1")
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    await _max_message_bytes(pipeline, 2_000)

    big = json.loads(request_json("big", "u-big", PRODUCT))
    big["notes"] = "n" * 1_000  # the longest notes an order may carry: a ~1.3 KB hold
    big["shipping_address"] = {
        "name": "x" * 200, "line1": "y" * 200, "city": "z" * 200, "country": "FR"
    }  # fmt: skip
    small = [(f"small-{n}", request_json(f"small-{n}", f"u-{n}", PRODUCT)) for n in range(SMALL)]
    await pipeline.publish([(PRODUCT.encode(), json.dumps(big).encode())])
    await pipeline.publish((PRODUCT.encode(), value) for _, value in small)

    async def refused_twice() -> bool:  # the agent meets the refusal, restarts, meets it again
        logs = (path.read_text(errors="replace") for path in pipeline.workdir.glob("run-*.log"))
        return any(
            "stock-agent failed (failure 2 in a row): MessageSizeTooLargeError" in log
            for log in logs
        )

    await pipeline.wait_for("the refusal met twice", refused_twice, timeout=60)
    await _max_message_bytes(pipeline, 1_048_588)  # Kafka's default again

    orders = {"big"} | {order_id for order_id, _ in small}
    await pipeline.wait_for_orders(len(orders))
    await asyncio.sleep(2)  # a double reservation would show in a later stock change
    await assert_invariants(pipeline, {PRODUCT: STOCK}, orders)
    level = await pipeline.query("SELECT available, reserved FROM product_stock")
    assert level == [{"available": STOCK - len(orders), "reserved": len(orders)}], level

    # A restart restores from the changelog alone: the same stock, each order once.
    pipeline.stop()
    pipeline.start()
    await pipeline.wait_for_status_service()
    extra = [(f"late-{n}", request_json(f"late-{n}", f"w-{n}", PRODUCT)) for n in range(3)]
    await pipeline.publish((PRODUCT.encode(), value) for _, value in extra)
    orders |= {order_id for order_id, _ in extra}
    await pipeline.wait_for_orders(len(orders))
    await assert_invariants(pipeline, {PRODUCT: STOCK}, orders)
    level = await pipeline.query("SELECT available, reserved FROM product_stock")
    assert level == [{"available": STOCK - len(orders), "reserved": len(orders)}], level
