"""Orders of several lines: published whole by the HTTP intake, persisted whole by the sink.

The stock agent's and the order agent's handling of such orders is tested with them;
here the intake's transaction is read back from Kafka as the stock agent reads it
(read_committed), and the sink is fed order events directly.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from orderstream.domain import LineStatus, OrderStatus
from orderstream.producer import publish_order_lines
from orderstream.topics import MAX_LINE_COUNT, ORDER_EVENTS, ORDER_REQUESTS, OrderEvent, OrderItem
from tests.integration.pipeline import Pipeline
from tests.integration.test_replay import reset_sink_offsets, sink_caught_up, snapshot, truncate

pytestmark = pytest.mark.integration

ITEMS = [("sku-x", 1), ("sku-y", 2), ("sku-z", 3)]


async def read_committed(pipe: Pipeline, name: str) -> list[Any]:
    """Read a topic from its beginning to its last stable offset, as the stock agent does."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=pipe.settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        topic = pipe.topic(name)
        partitions = [TopicPartition(topic, p) for p in range(pipe.settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)  # the last stable offsets
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def lines_body(items: list[tuple[str, int]]) -> dict[str, Any]:
    return {"user_id": "u-multi", "items": [{"product_id": p, "quantity": q} for p, q in items]}


async def test_the_intake_publishes_an_orders_lines_in_one_transaction(
    pipeline: Pipeline,
) -> None:
    pipeline.start()
    base = await pipeline.wait_for_status_service()
    key = {"Idempotency-Key": "o-multi"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/orders", json=lines_body(ITEMS), headers=key) as response:
            assert response.status == 202, await response.text()
            assert await response.json() == {
                "order_id": "o-multi",
                "status_url": "/orders/o-multi",
                "lines": 3,
            }
        # A second order through the same transactional producer.
        again = lines_body(ITEMS[:2]) | {"order_id": "o-multi-2"}
        async with http.post(f"{base}/orders", json=again) as response:
            assert response.status == 202, await response.text()
            assert (await response.json())["lines"] == 2

        refused = await _refused_bodies(http, base)

    records = await read_committed(pipeline, ORDER_REQUESTS)
    lines = [(record.key.decode(), json.loads(record.value)) for record in records]
    first = [(key, line) for key, line in lines if line["order_id"] == "o-multi"]
    assert sorted(key for key, _ in first) == [p for p, _ in ITEMS]
    assert all(line["product_id"] == key for key, line in first)
    assert {(line["product_id"], line["quantity"]) for _, line in first} == set(ITEMS)
    assert {(line["user_id"], line["line_count"]) for _, line in first} == {("u-multi", 3)}
    second = [line for _, line in lines if line["order_id"] == "o-multi-2"]
    assert sorted((line["product_id"], line["line_count"]) for line in second) == [
        ("sku-x", 2),
        ("sku-y", 2),
    ]
    # Nothing of a refused body reached Kafka.
    assert len(lines) == 5, lines
    for name, (status, answer) in refused.items():
        assert status == 422, (name, answer)
    assert pipeline.alive(), pipeline.logs()


async def _refused_bodies(
    http: aiohttp.ClientSession, base: str
) -> dict[str, tuple[int, dict[str, Any]]]:
    """Post bad orders with items; return each answer, after checking its reason."""
    nul = lines_body([("sku-\x00", 1), ("sku-y", 1)])
    cases: dict[str, tuple[dict[str, Any], str, list[Any] | None]] = {
        "a product twice": (
            lines_body([("sku-x", 1), ("sku-y", 1), ("sku-x", 2)]),
            "invalid order request",
            ["items"],
        ),
        "101 items": (
            lines_body([(f"sku-{n}", 1) for n in range(MAX_LINE_COUNT + 1)]),
            "invalid order request",
            ["items"],
        ),
        "no item": (lines_body([]), "invalid order request", ["items"]),
        "quantity 0": (
            lines_body([("sku-x", 1), ("sku-y", 0)]),
            "invalid order request",
            ["items", 1, "quantity"],
        ),
        "NUL in a product id": (nul, "invalid order request", ["items", 0, "product_id"]),
        "items and a product": (
            lines_body(ITEMS) | {"product_id": "sku-x", "quantity": 1},
            "product_id, quantity not allowed",
            None,
        ),
    }
    answers = {}
    for name, (body, reason, loc) in cases.items():
        headers = {"Idempotency-Key": f"o-bad-{len(answers)}"}
        async with http.post(f"{base}/orders", json=body, headers=headers) as response:
            answer = await response.json()
            answers[name] = (response.status, answer)
        assert reason in answer["error"], (name, answer)
        if loc is not None:
            assert [detail["loc"] for detail in answer["details"]] == [loc], (name, answer)
    assert "more than one item" in answers["a product twice"][1]["details"][0]["msg"]
    return answers


async def test_a_tool_publishes_an_orders_lines_whole(pipeline: Pipeline) -> None:
    assert await publish_order_lines(pipeline.settings, "o-tool", "u-tool", ITEMS) == 3
    with pytest.raises(ValueError, match="each product once"):
        await publish_order_lines(pipeline.settings, "o-bad", "u", [("a", 1), ("a", 2)])
    records = await read_committed(pipeline, ORDER_REQUESTS)
    lines = sorted((r.key.decode(), json.loads(r.value)["line_count"]) for r in records)
    assert lines == [(p, 3) for p, _ in ITEMS]


def order_event(seq: int, status: OrderStatus, line: LineStatus) -> bytes:
    items = [OrderItem(product_id=p, quantity=q, status=line) for p, q in ITEMS]
    event = OrderEvent(
        order_id="o-lines",
        seq=seq,
        status=status,
        user_id="u-multi",
        product_id=ITEMS[0][0],
        quantity=ITEMS[0][1],
        requested_at_ms=1_790_000_000_000,
        decided_at_ms=1_790_000_000_000 + seq,
        items=items,
    )
    return event.model_dump_json().encode()


async def test_the_sink_writes_every_line_and_never_moves_one_back(pipeline: Pipeline) -> None:
    pipeline.start("sink")
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.settings.kafka_bootstrap)
    await producer.start()
    topic = pipeline.topic(ORDER_EVENTS)
    reserved = order_event(1, OrderStatus.RESERVED, LineStatus.RESERVED)
    try:
        await producer.send_and_wait(topic, key=b"o-lines", value=reserved)
        await producer.send_and_wait(
            topic,
            key=b"o-lines",
            value=order_event(2, OrderStatus.CONFIRMED, LineStatus.COMMITTED),
        )

        async def confirmed() -> bool:
            rows = await pipeline.query("SELECT status FROM orders WHERE order_id = 'o-lines'")
            return rows == [{"status": "CONFIRMED"}]

        await pipeline.wait_for("the order confirmed", confirmed, watch="sink")
        # A replay of seq 1, in a batch of its own.
        await producer.send_and_wait(topic, key=b"o-lines", value=reserved)
    finally:
        await producer.stop()
    await pipeline.wait_for("the sink to commit", lambda: sink_caught_up(pipeline), watch="sink")

    items = await pipeline.query(
        "SELECT product_id, quantity, status, line_status, seq FROM order_items"
        " WHERE order_id = 'o-lines' ORDER BY product_id"
    )
    assert items == [
        {
            "product_id": p,
            "quantity": q,
            "status": "CONFIRMED",
            "line_status": "COMMITTED",
            "seq": 2,
        }
        for p, q in ITEMS
    ]
    orders = await pipeline.query("SELECT order_id, status, seq FROM orders")
    assert orders == [{"order_id": "o-lines", "status": "CONFIRMED", "seq": 2}]
    history = await pipeline.query(
        "SELECT seq, status, product_id, quantity FROM order_events ORDER BY seq"
    )
    assert history == [
        {"seq": 1, "status": "RESERVED", "product_id": "sku-x", "quantity": 1},
        {"seq": 2, "status": "CONFIRMED", "product_id": "sku-x", "quantity": 1},
    ]

    # Replayed onto emptied tables, the events give the same rows back.
    before = await snapshot(pipeline)
    pipeline.stop("sink")
    await truncate(pipeline)
    reset_sink_offsets(pipeline)
    pipeline.start("sink")
    await pipeline.wait_for("the rebuild", lambda: sink_caught_up(pipeline), watch="sink")
    assert await snapshot(pipeline) == before
