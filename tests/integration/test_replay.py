"""Replaying the sink with Kafka's own tool rebuilds the same tables."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from orderstream.db import connection_kwargs
from orderstream.topics import ORDER_EVENTS, STOCK_CHANGES
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import REPO, Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCTS = {"sku-a": 40, "sku-b": 7}
TABLES = {
    "orders": "order_id",
    "order_items": "order_id, product_id",
    "order_events": "order_id, seq",
    "product_stock": "product_id",
}


async def snapshot(pipe: Pipeline) -> dict[str, list[dict[str, Any]]]:
    return {
        table: await pipe.query(f"SELECT * FROM {table} ORDER BY {key}")
        for table, key in TABLES.items()
    }


def reset_sink_offsets(pipe: Pipeline, repo: Path = REPO) -> str:
    """Rewind the sink's group with Kafka's kafka-consumer-groups tool, as an operator would
    (the tool of ``repo``, the checkout whose stack holds Kafka's jars)."""
    result = subprocess.run(
        [
            "bash",
            str(repo / "scripts" / "kafka-tool.sh"),
            "kafka-consumer-groups",
            "--bootstrap-server",
            pipe.settings.kafka_bootstrap,
            "--group",
            pipe.settings.sink_group,
            "--reset-offsets",
            "--to-earliest",
            "--topic",
            pipe.topic(ORDER_EVENTS),
            "--topic",
            pipe.topic(STOCK_CHANGES),
            "--execute",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def sink_caught_up(pipe: Pipeline) -> bool:
    """Whether the sink group's committed offsets reached the end of its topics."""
    topics = [pipe.topic(ORDER_EVENTS), pipe.topic(STOCK_CHANGES)]
    admin = AIOKafkaAdminClient(bootstrap_servers=pipe.settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=pipe.settings.kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(pipe.settings.sink_group)
        partitions = [TopicPartition(t, p) for t in topics for p in range(pipe.settings.partitions)]
        ends = await consumer.end_offsets(partitions)
        return all(
            tp in committed and committed[tp].offset >= end for tp, end in ends.items() if end
        )
    finally:
        await consumer.stop()
        await admin.close()


async def test_reset_to_earliest_rebuilds_the_same_tables(pipeline: Pipeline) -> None:
    pipeline.start()
    for product_id, quantity in PRODUCTS.items():
        await pipeline.set_stock(product_id, quantity)
    for product_id, quantity in PRODUCTS.items():
        await pipeline.wait_for_stock(product_id, quantity)
    messages = [
        (p.encode(), request_json(f"order-{p}-{n}", f"user-{n % 13}", p))
        for n in range(60)
        for p in PRODUCTS
    ]
    await pipeline.publish(messages + messages[:30])  # 30 exact duplicates
    await pipeline.wait_for_orders(120)
    await pipeline.wait_for("the sink to commit", lambda: sink_caught_up(pipeline))
    pipeline.stop()  # an inactive group is what the reset tool requires
    before = await snapshot(pipeline)
    assert len(before["orders"]) == 120

    # Replay onto the existing tables: nothing changes, nothing is duplicated.
    output = reset_sink_offsets(pipeline)
    assert pipeline.topic(ORDER_EVENTS) in output
    assert not await sink_caught_up(pipeline)
    pipeline.start("sink")
    await pipeline.wait_for("the replay", lambda: sink_caught_up(pipeline), watch="sink")
    assert await snapshot(pipeline) == before
    pipeline.stop("sink")

    # Replay onto empty tables: the same tables come back.
    await truncate(pipeline)
    reset_sink_offsets(pipeline)
    pipeline.start("sink")
    await pipeline.wait_for("the rebuild", lambda: sink_caught_up(pipeline), watch="sink")
    assert await snapshot(pipeline) == before
    await assert_invariants(pipeline, PRODUCTS, {row["order_id"] for row in before["orders"]})


async def truncate(pipe: Pipeline) -> None:
    async with await psycopg.AsyncConnection.connect(
        pipe.settings.database_url.get_secret_value(), **connection_kwargs(pipe.settings)
    ) as conn:
        await conn.execute("TRUNCATE orders, order_items, order_events, product_stock")
        await conn.commit()
