"""Commit and release on the real broker and database: each line settles once, across kill -9."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from orderstream.domain import owner_partition
from orderstream.topics import DLQ_REASON_HEADER
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import SHORT_SESSION, Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-settle"
STOCK = 12
ORDERS = 14  # quantities 1 and 2 in turn: 21 units asked for, 12 on sale


def settle_json(operation: str, order_id: str, quantity: int | None = None) -> bytes:
    command: dict[str, Any] = {"product_id": PRODUCT, "operation": operation, "order_id": order_id}
    if quantity is not None:
        command["quantity"] = quantity
    return json.dumps(command).encode()


async def publish_commands(pipe: Pipeline, values: list[bytes]) -> None:
    """Publish stock commands as the order agent will: plain JSON, keyed by product."""
    producer = await pipe.producer()
    try:
        for value in values:
            await producer.send_and_wait(
                pipe.topic("stock-commands"), key=PRODUCT.encode(), value=value
            )
    finally:
        await producer.stop()


async def stock_row(pipe: Pipeline) -> dict[str, Any]:
    [row] = await pipe.query(
        "SELECT available, reserved, sold, total_in FROM product_stock WHERE product_id = %s",
        (PRODUCT,),
    )
    return row


async def wait_for_figures(
    pipe: Pipeline, what: str, available: int, reserved: int, sold: int
) -> None:
    expected = {"available": available, "reserved": reserved, "sold": sold, "total_in": STOCK}

    async def shown() -> bool:
        return await stock_row(pipe) == expected

    await pipe.wait_for(f"{what}: product_stock {expected}", shown)


def assert_conserved(row: dict[str, Any]) -> None:
    assert min(row["available"], row["reserved"], row["sold"]) >= 0, row
    assert row["available"] + row["reserved"] + row["sold"] == row["total_in"] == STOCK, row


async def counted(pipe: Pipeline) -> dict[tuple[str, str], float]:
    """Return orderstream_stock_commands_total by (operation, result), from /metrics."""
    url = f"http://127.0.0.1:{pipe.settings.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("orderstream_stock_commands_total{"):
            labels, value = line.removeprefix("orderstream_stock_commands_total").rsplit(" ", 1)
            parsed = dict(part.split("=") for part in labels.strip("{}").split(","))
            key = (parsed["operation"].strip('"'), parsed["result"].strip('"'))
            counts[key] = float(value)
    return counts


async def test_commit_and_release_settle_each_line_once_across_a_kill(pipeline: Pipeline) -> None:
    pipeline.start(**SHORT_SESSION)
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    await pipeline.publish(
        (PRODUCT.encode(), request_json(f"s-{n}", f"u-{n}", PRODUCT, quantity=1 + n % 2))
        for n in range(ORDERS)
    )
    await pipeline.wait_for_orders(ORDERS)
    rows = await pipeline.query(
        "SELECT o.order_id, o.status, i.quantity FROM orders o JOIN order_items i USING (order_id)"
        " ORDER BY o.order_id"
    )
    reserved = {row["order_id"]: row["quantity"] for row in rows if row["status"] == "RESERVED"}
    rejected = sorted(row["order_id"] for row in rows if row["status"] == "REJECTED")
    assert sum(reserved.values()) == STOCK  # in order: 1+2+1+2+... fills the stock exactly
    assert rejected
    held = sorted(reserved)
    commits, releases, kept = held[:3], held[3:5], held[5:]
    assert kept  # some lines stay reserved through the kill
    sold = sum(reserved[o] for o in commits)
    still_reserved = sum(reserved[o] for o in kept)

    commands = [
        *(settle_json("commit", o) for o in commits),
        *(settle_json("release", o) for o in releases),
        # Duplicates of each, one naming the right quantity: nothing moves twice.
        *(settle_json("commit", o) for o in commits),
        settle_json("release", releases[0], quantity=reserved[releases[0]]),
        settle_json("release", releases[1]),
        # Lines never reserved: a rejected order, an order never requested.
        settle_json("commit", rejected[0]),
        settle_json("release", rejected[0]),
        settle_json("commit", "never-requested"),
        settle_json("release", "never-requested"),
        # Settled the other way already.
        settle_json("release", commits[0]),
        # A quantity that is not the line's: a dead letter, the line stays reserved.
        settle_json("commit", kept[0], quantity=reserved[kept[0]] + 1),
    ]
    await publish_commands(pipeline, commands)
    await wait_for_figures(
        pipeline,
        "commits and releases applied",
        available=STOCK - still_reserved - sold,
        reserved=still_reserved,
        sold=sold,
    )
    assert_conserved(await stock_row(pipeline))

    async def dead_lettered() -> bool:
        return bool(await pipeline.read_topic("stock-commands-dlq"))

    await pipeline.wait_for("the mismatched commit's dead letter", dead_lettered)
    [dead] = await pipeline.read_topic("stock-commands-dlq")
    assert dead.value == commands[-1]
    reason = dict(dead.headers)[DLQ_REASON_HEADER].decode()
    assert reason == (
        f"commit of quantity {reserved[kept[0]] + 1} for order {kept[0]!r},"
        f" whose line holds {reserved[kept[0]]}"
    )
    # Counted when decided, before the dead letter (the last command) was sent.
    expected_counts = {
        ("commit", "applied"): 3,
        ("release", "applied"): 2,
        ("commit", "already_applied"): 3,
        ("release", "already_applied"): 2,
        ("commit", "not_reserved"): 2,
        ("release", "not_reserved"): 2,
        ("release", "conflicting"): 1,
    }
    metrics = await counted(pipeline)
    assert {key: metrics.get(key) for key in expected_counts} == expected_counts
    # The order agent moves the orders; the stock agent announced nothing for a command.
    statuses = await pipeline.query("SELECT status, count(*) AS n FROM orders GROUP BY 1")
    assert {row["status"]: row["n"] for row in statuses} == {
        "RESERVED": len(reserved),
        "REJECTED": len(rejected),
    }

    # kill -9 and restart: the holds and the stock come back from the changelog as they were.
    pipeline.kill()
    pipeline.start(**SHORT_SESSION)

    async def restored() -> bool:
        return pipeline.logs().count("restored partitions") >= 2

    await pipeline.wait_for("the replacement's restore", restored)
    # The restored holds remember what was settled: redelivered commands change nothing.
    await publish_commands(
        pipeline, [settle_json("commit", commits[0]), settle_json("release", releases[0])]
    )
    await pipeline.publish([(PRODUCT.encode(), request_json("after", "u-after", PRODUCT))])
    await pipeline.wait_for_orders(ORDERS + 1)
    [after] = await pipeline.query("SELECT status FROM orders WHERE order_id = 'after'")
    assert after == {"status": "RESERVED"}  # the released units are on sale again
    await wait_for_figures(
        pipeline,
        "one more reservation after the restore",
        available=STOCK - still_reserved - sold - 1,
        reserved=still_reserved + 1,
        sold=sold,
    )
    assert_conserved(await stock_row(pipeline))
    # The restarted process also got every command since the last offset committed before
    # the kill again: each one found its line settled, none applied a second time.
    metrics = await counted(pipeline)
    assert metrics.get(("commit", "already_applied"), 0) >= 1
    assert metrics.get(("release", "already_applied"), 0) >= 1
    assert not metrics.get(("commit", "applied"))
    assert not metrics.get(("release", "applied"))


async def test_a_stock_command_that_lands_twice_is_applied_once_by_its_id(
    pipeline: Pipeline,
) -> None:
    """Issue 21, item 4: an `add` forwarded again after a crash, or sent twice by its
    producer, lands at a second offset; deduplicated by offset, it added twice."""
    product = "sku-restock"
    partitions = pipeline.settings.partitions
    owner = owner_partition(product, partitions)
    pipeline.start()
    await pipeline.set_stock(product, 10)
    await pipeline.wait_for_stock(product, 10)

    restock = {"product_id": product, "operation": "add", "quantity": 5, "command_id": "r-1"}
    value = json.dumps(restock).encode()
    commands = pipeline.topic("stock-commands")
    producer = await pipeline.producer()
    try:
        await producer.send_and_wait(commands, key=product.encode(), value=value)
        # The same command keyless on a partition that does not own it: forwarded, it
        # reaches the owner at a third offset, as a forward re-sent after a crash does.
        await producer.send_and_wait(commands, value=value, partition=(owner + 1) % partitions)
        await producer.send_and_wait(commands, key=product.encode(), value=value)
        marker = restock | {"quantity": 1, "command_id": "r-2"}
        await producer.send_and_wait(
            commands, key=product.encode(), value=json.dumps(marker).encode()
        )
    finally:
        await producer.stop()
    await pipeline.wait_for_stock(product, 16)  # 10 + 5 once + 1 (the marker)
    # Every copy applied or skipped: the forwarder committed past the keyless copy (so
    # its forward is on the owner's partition), then the owner past everything.
    await _wait_caught_up(pipeline, (owner + 1) % partitions)
    await _wait_caught_up(pipeline, owner)
    [level] = await pipeline.query("SELECT available, total_in FROM product_stock")
    assert level == {"available": 16, "total_in": 16}, level

    # The ids survive a restart (the changelog's snapshot keeps them): sent again, no-op.
    pipeline.stop()
    pipeline.start()
    await pipeline.wait_for_status_service()
    producer = await pipeline.producer()
    try:
        await producer.send_and_wait(commands, key=product.encode(), value=value)
    finally:
        await producer.stop()
    orders = {f"rs-{n}" for n in range(20)}
    await pipeline.publish(
        (product.encode(), request_json(order_id, f"u-{order_id}", product))
        for order_id in sorted(orders)
    )
    await pipeline.wait_for_orders(len(orders))
    await assert_invariants(pipeline, {product: 16}, orders)
    [level] = await pipeline.query("SELECT available, reserved, total_in FROM product_stock")
    assert level == {"available": 0, "reserved": 16, "total_in": 16}, level


async def _wait_caught_up(pipe: Pipeline, partition: int) -> None:
    """Wait until the stock agent has committed a stock-commands partition to its end."""
    topic = pipe.topic("stock-commands")
    await pipe.wait_for(
        f"the stock agent to commit {topic}/{partition}",
        lambda: _caught_up(pipe, pipe.settings.app_id, topic, partition),
    )


async def _caught_up(pipe: Pipeline, group: str, topic: str, partition: int) -> bool:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=pipe.settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        end = (await consumer.end_offsets([tp]))[tp]
        return (await consumer.committed(tp) or 0) >= end
    finally:
        await consumer.stop()
