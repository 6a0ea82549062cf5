"""`orderstream audit`: passes on a sale, tolerates a sink behind, names what was corrupted."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from orderstream.db import connection_kwargs
from orderstream.topics import ORDER_EVENTS, ORDER_REQUESTS, STOCK_CHANGES, STOCK_COMMANDS
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

STOCK = {"sku-audit-a": 10, "sku-audit-b": 10}
A, B = STOCK
C = "sku-audit-c"
# `orderstream run` with the order lifecycle in it, every payment paid, quickly.
LIFECYCLE_ENV = {
    "ORDERSTREAM_RUN_LIFECYCLE": "true",
    "ORDERSTREAM_PAYMENT_SUCCESS_RATE": "1",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.05",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.2",
    "ORDERSTREAM_ORDERS_METRICS_PORT": "0",
}


async def run_audit(pipe: Pipeline) -> tuple[int, str]:
    """Run `orderstream audit` as an operator would; return its exit status and report."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orderstream",
        "audit",
        env=pipe.env(),
        cwd=pipe.workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    report = out.decode()
    print(report, err.decode())  # shown when the test fails
    assert process.returncode is not None
    return process.returncode, report


async def execute(pipe: Pipeline, *statements: str) -> None:
    """Run statements in the test's schema and commit them."""
    async with await psycopg.AsyncConnection.connect(
        pipe.settings.database_url.get_secret_value(), **connection_kwargs(pipe.settings)
    ) as conn:
        for statement in statements:
            await conn.execute(statement.encode())
        await conn.commit()


async def caught_up(pipe: Pipeline, group: str, topics: Iterable[str]) -> bool:
    """Whether ``group`` committed offsets at the end of every partition of ``topics``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=pipe.settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=pipe.settings.kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets(
            [
                TopicPartition(pipe.topic(t), p)
                for t in topics
                for p in range(pipe.settings.partitions)
            ]
        )
        return all(
            tp in committed and committed[tp].offset >= end for tp, end in ends.items() if end
        )
    finally:
        await consumer.stop()
        await admin.close()


async def settled(pipe: Pipeline) -> bool:
    return await caught_up(
        pipe, pipe.settings.app_id, [ORDER_REQUESTS, STOCK_COMMANDS]
    ) and await caught_up(pipe, pipe.settings.sink_group, [ORDER_EVENTS, STOCK_CHANGES])


def orders(product_id: str, first: int, count: int) -> list[tuple[bytes, bytes]]:
    return [
        (product_id.encode(), request_json(f"{product_id}-{n}", f"user-{n}", product_id))
        for n in range(first, first + count)
    ]


async def test_audit_passes_on_a_sale_allows_a_sink_behind_and_names_corruption(
    pipeline: Pipeline,
) -> None:
    pipeline.start()
    for product_id, quantity in STOCK.items():
        await pipeline.set_stock(product_id, quantity)
    for product_id, quantity in STOCK.items():
        await pipeline.wait_for_stock(product_id, quantity)
    # A sells out (5 rejected), B keeps stock.
    await pipeline.publish(orders(A, 0, 15) + orders(B, 0, 3))
    await pipeline.wait_for_orders(18)
    await pipeline.wait_for(
        "the worker and the sink to commit everything", lambda: settled(pipeline)
    )

    code, report = await run_audit(pipeline)
    assert code == 0, report
    assert "consumer lag before reading: stock agent 0, sink 0 records" in report
    verdicts = [line for line in report.splitlines() if line.startswith(("ok ", "FAIL "))]
    assert len(verdicts) == 9
    assert all(line.startswith("ok ") for line in verdicts), report
    assert "ok    stock conserved in PostgreSQL: 2 products" in report
    assert "ok    one row per order, with a known status: 18 orders" in report
    assert "note:" not in report
    assert report.splitlines()[-1] == "audit: ok"

    # The sink stops; the stock agent decides two more orders of B. PostgreSQL is behind
    # the stock agent for B: said, not a violation.
    pipeline.stop("run")
    pipeline.start("worker", ORDERSTREAM_WORKER_METRICS_PORT="0")

    async def decided(count: int) -> bool:
        events = await pipeline.read_topic(ORDER_EVENTS)
        return len({json.loads(record.value)["order_id"] for record in events}) >= count

    await pipeline.publish(orders(B, 3, 2))
    await pipeline.wait_for("2 more decisions on order-events", lambda: decided(20), watch="worker")
    code, report = await run_audit(pipeline)
    assert code == 0, report
    assert f"sink behind for 1 products, not compared: {B!r} (version " in report
    assert report.splitlines()[-1] == "audit: ok"

    # Corrupt PostgreSQL: a unit of A appears from nowhere (its row stays self-consistent,
    # so only the stock agent's figure shows it), and an order loses its history.
    await execute(
        pipeline,
        "UPDATE product_stock SET available = available + 1, total_in = total_in + 1"
        f" WHERE product_id = '{A}'",
    )
    await execute(pipeline, f"DELETE FROM order_events WHERE order_id = '{A}-0'")
    code, report = await run_audit(pipeline)
    assert code == 1, report
    assert "FAIL  PostgreSQL stock = the stock agent's changelog: 1 of 2 products" in report
    assert f"product {A!r}: PostgreSQL has available 1, reserved 10, sold 0, total_in 11" in report
    assert f"order '{A}-0': status at seq 1 but no events" in report
    assert "ok    stock conserved in PostgreSQL" in report
    assert report.splitlines()[-1] == "audit: 2 violation(s)"


async def test_audit_names_an_order_or_product_whose_lifecycle_is_broken(
    pipeline: Pipeline,
) -> None:
    pipeline.start(**LIFECYCLE_ENV)
    await pipeline.set_stock(C, 4)
    await pipeline.wait_for_stock(C, 4)
    await pipeline.publish(orders(C, 0, 6))  # 4 are paid and CONFIRMED, 2 REJECTED

    async def sold_out() -> bool:
        statuses = await pipeline.query("SELECT status, count(*) AS n FROM orders GROUP BY 1")
        (stock,) = await pipeline.query("SELECT sold FROM product_stock") or [{"sold": 0}]
        return {r["status"]: r["n"] for r in statuses} == {"CONFIRMED": 4, "REJECTED": 2} and (
            stock["sold"] == 4
        )

    await pipeline.wait_for("4 orders confirmed and sold, 2 rejected", sold_out, 60)
    await pipeline.wait_for(
        "the worker and the sink to commit everything", lambda: settled(pipeline)
    )
    confirmed = [
        r["order_id"]
        for r in await pipeline.query(
            "SELECT order_id FROM orders WHERE status = 'CONFIRMED' ORDER BY order_id"
        )
    ]
    (rejected,) = [
        r["order_id"]
        for r in await pipeline.query(
            "SELECT order_id FROM orders WHERE status = 'REJECTED' ORDER BY order_id LIMIT 1"
        )
    ]
    code, report = await run_audit(pipeline)
    assert code == 0, report
    assert "ok    one terminal state per order, nothing after it: 6 orders" in report
    assert "ok    no line sold twice: " in report
    assert "ok    no order both CONFIRMED and released: 6 orders" in report
    assert "ok    sold stock = quantities of COMMITTED order lines: 1 products" in report

    # Each corruption in turn, undone before the next: the audit names the order or product.
    paid, released, bigger = confirmed[:3]
    corruptions = [
        (  # a CONFIRMED order cancelled afterwards: two terminal states
            [
                "INSERT INTO order_events SELECT order_id, 4, 'CANCELLED', 'CANCELLED_BY_USER',"
                " product_id, quantity, requested_at, occurred_at, kafka_partition, kafka_offset"
                f" FROM order_events WHERE order_id = '{paid}' AND seq = 3"
            ],
            [f"DELETE FROM order_events WHERE order_id = '{paid}' AND seq = 4"],
            [
                "FAIL  one terminal state per order, nothing after it: 1 of 6 orders",
                f"order '{paid}': RESERVED -> PAID -> CONFIRMED -> CANCELLED",
            ],
        ),
        (  # its line sold a second time (the primary key dropped to let it in)
            [
                "ALTER TABLE order_items DROP CONSTRAINT order_items_pkey",
                f"INSERT INTO order_items SELECT * FROM order_items WHERE order_id = '{paid}'",
            ],
            [
                "DELETE FROM order_items a USING order_items b WHERE a.order_id = b.order_id"
                " AND a.product_id = b.product_id AND a.ctid > b.ctid",
                "ALTER TABLE order_items ADD PRIMARY KEY (order_id, product_id)",
            ],
            [
                "FAIL  no line sold twice: ",
                f"order '{paid}': product '{C}' COMMITTED 2 times",
                f"product '{C}': sold 4, COMMITTED order lines 5",
            ],
        ),
        (  # a line sold by an order that was rejected
            [f"UPDATE order_items SET line_status = 'COMMITTED' WHERE order_id = '{rejected}'"],
            [f"UPDATE order_items SET line_status = NULL WHERE order_id = '{rejected}'"],
            [
                "FAIL  no line sold twice: ",
                f"order '{rejected}': REJECTED, with 1 COMMITTED lines",
            ],
        ),
        (  # a CONFIRMED order's line given back
            [f"UPDATE order_items SET line_status = 'RELEASED' WHERE order_id = '{released}'"],
            [f"UPDATE order_items SET line_status = NULL WHERE order_id = '{released}'"],
            [
                "FAIL  no order both CONFIRMED and released: 1 of 6 orders",
                f"order '{released}': CONFIRMED, lines {C} RELEASED",
            ],
        ),
        (  # a COMMITTED line's quantity grown: sold no longer adds up
            [f"UPDATE order_items SET quantity = 2 WHERE order_id = '{bigger}'"],
            [f"UPDATE order_items SET quantity = 1 WHERE order_id = '{bigger}'"],
            [
                "FAIL  sold stock = quantities of COMMITTED order lines: 1 of 1 products",
                f"product '{C}': sold 4, COMMITTED order lines 5",
            ],
        ),
    ]
    for corrupt, undo, named in corruptions:
        await execute(pipeline, *corrupt)
        code, report = await run_audit(pipeline)
        assert code == 1, report
        for line in named:
            assert line in report, report
        await execute(pipeline, *undo)

    code, report = await run_audit(pipeline)
    assert code == 0, report
    assert report.splitlines()[-1] == "audit: ok"
