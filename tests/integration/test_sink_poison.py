"""The sink never dies on a record: refused ones are dead-lettered, outages waited out."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from orderstream.db import connection_kwargs
from orderstream.domain import OrderStatus
from orderstream.topics import (
    DLQ_REASON_HEADER,
    DLQ_SOURCE_HEADER,
    DLQ_SUFFIX,
    ORDER_EVENTS,
    OrderEvent,
    StockChange,
)
from tests.integration.pipeline import Pipeline
from tests.integration.test_replay import sink_caught_up

pytestmark = pytest.mark.integration

PRODUCT = "sku-poison"
STOCK = 5000
UNAVAILABLE = r"PostgreSQL unavailable \(UndefinedTable: relation \"orders\" does not exist\)"


def order_event(order_id: str, n: int, detail: str | None = None) -> OrderEvent:
    """The event the stock agent emits for a reserved single-line order, with its stock."""
    now_ms = int(time.time() * 1000)
    stock = StockChange(
        product_id=PRODUCT,
        available=STOCK - n,
        reserved=n,
        sold=0,
        total_in=STOCK,
        version=n,
        changed_at_ms=now_ms,
    )
    return OrderEvent(
        order_id=order_id,
        seq=1,
        status=OrderStatus.RESERVED,
        detail=detail,
        user_id=f"user-{n % 13}",
        product_id=PRODUCT,
        quantity=1,
        requested_at_ms=now_ms - 5,
        decided_at_ms=now_ms,
        stock=stock,
    )


async def publish_events(
    pipe: Pipeline, events: Sequence[OrderEvent], partition: int | None = None
) -> list[Any]:
    """Publish events to order-events as the stock agent does; return their metadata."""
    producer = await pipe.producer()
    try:
        topic = pipe.topic(ORDER_EVENTS)
        sends = [
            await producer.send(
                topic,
                key=event.order_id.encode(),
                value=event.model_dump_json().encode(),
                partition=partition,
            )
            for event in events
        ]
        return list(await asyncio.gather(*sends))
    finally:
        await producer.stop()


async def execute(pipe: Pipeline, statement: str) -> None:
    """Run one statement in the test's schema and commit it."""
    async with await psycopg.AsyncConnection.connect(
        pipe.settings.database_url.get_secret_value(), **connection_kwargs(pipe.settings)
    ) as conn:
        await conn.execute(statement.encode())
        await conn.commit()


async def assert_landed_once(pipe: Pipeline, orders: set[str], last_stock_version: int) -> None:
    """Each order exactly once in orders, order_items and order_events; nothing else."""
    rows = await pipe.query("SELECT order_id, status FROM orders")
    assert {row["order_id"] for row in rows} == orders
    assert all(row["status"] == "RESERVED" for row in rows)
    items = await pipe.query("SELECT order_id, count(*) AS n FROM order_items GROUP BY 1")
    assert {row["order_id"]: row["n"] for row in items} == dict.fromkeys(orders, 1)
    history = await pipe.query("SELECT order_id, count(*) AS n FROM order_events GROUP BY 1")
    assert {row["order_id"]: row["n"] for row in history} == dict.fromkeys(orders, 1)
    stock = await pipe.query("SELECT version, available, reserved, total_in FROM product_stock")
    assert stock == [
        {
            "version": last_stock_version,
            "available": STOCK - last_stock_version,
            "reserved": last_stock_version,
            "total_in": STOCK,
        }
    ]
    # And the sink's group committed everything: no partition is stuck behind a record.
    assert await sink_caught_up(pipe)


def sink_log(pipe: Pipeline, name: str = "sink") -> str:
    """Every line process ``name`` logged, over its restarts (pipe.logs() keeps only tails)."""
    paths = sorted(pipe.workdir.glob(f"{name}-[0-9]*.log"))
    return "".join(path.read_text(errors="replace") for path in paths)


async def wait_for_log(
    pipe: Pipeline, pattern: str, count: int = 1, name: str = "sink", timeout: float = 60
) -> None:
    async def logged() -> bool:
        return len(re.findall(pattern, sink_log(pipe, name))) >= count

    await pipe.wait_for(f"{count} lines of {name} matching {pattern!r}", logged, timeout, name)


def poison_with_nul_detail() -> OrderEvent | None:
    """An event that validates but that PostgreSQL cannot store (NUL in a text column)."""
    try:
        return order_event("nul-1", 500, detail="held\x00back")
    except ValidationError:
        return None  # OrderEvent refuses it at the door now


@pytest.mark.parametrize("refusal", ["check-violation", "nul-byte"])
async def test_a_record_postgresql_refuses_is_dead_lettered_and_the_rest_lands(
    pipeline: Pipeline, refusal: str
) -> None:
    if refusal == "check-violation":
        # A rule of the database that the event's schema does not know about.
        await execute(
            pipeline,
            "ALTER TABLE orders ADD CONSTRAINT no_poison CHECK (order_id NOT LIKE 'poison%')",
        )
        poison = order_event("poison-1", 500)
        expected_reason = ('CheckViolation: new row for relation "orders"', "no_poison")
    else:
        nul_poison = poison_with_nul_detail()
        if nul_poison is None:
            pytest.skip("OrderEvent refuses a NUL in detail: PostgreSQL never sees one")
        poison = nul_poison
        expected_reason = ("DataError: ", "NUL")
    events = [order_event(f"good-{n}", n) for n in range(1, 1001)]
    events[499] = poison  # one poison among 999 good ones, mid-batch
    good = {event.order_id for event in events} - {poison.order_id}

    # Published before the sink starts, on one partition: the sink reads them as one batch.
    sent = await publish_events(pipeline, events, partition=0)
    pipeline.start("sink")
    dlq = pipeline.topic(ORDER_EVENTS + DLQ_SUFFIX)

    async def dead_lettered() -> bool:
        return len(await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX)) >= 1

    await pipeline.wait_for(f"a record on {dlq}", dead_lettered, watch="sink")
    await pipeline.wait_for_orders(len(good), timeout=60)
    assert pipeline.alive("sink"), pipeline.logs()
    # The refusal was found by halving a batch, not by luck of a one-record fetch.
    batch_sizes = [
        int(n) for n in re.findall(r"PostgreSQL refused 1 of a batch of (\d+)", sink_log(pipeline))
    ]
    assert batch_sizes, pipeline.logs()
    assert max(batch_sizes) > 1

    (dead,) = await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX)
    assert dead.key == poison.order_id.encode()
    assert dead.value == poison.model_dump_json().encode()  # the original bytes
    headers = {name: value.decode() for name, value in dead.headers}
    for fragment in expected_reason:
        assert fragment in headers[DLQ_REASON_HEADER], headers
    assert "\n" not in headers[DLQ_REASON_HEADER]
    assert len(headers[DLQ_REASON_HEADER]) <= 500
    poison_offset = sent[499].offset
    assert headers[DLQ_SOURCE_HEADER] == f"{pipeline.topic(ORDER_EVENTS)}/0/{poison_offset}"

    # The partition moved on: a later good record lands, and nothing else is dead-lettered.
    await publish_events(pipeline, [order_event("late-1", 1001)], partition=0)
    await pipeline.wait_for_orders(len(good) + 1, timeout=60)
    await pipeline.wait_for("the sink to commit", lambda: sink_caught_up(pipeline), watch="sink")
    assert pipeline.alive("sink"), pipeline.logs()
    assert len(await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX)) == 1
    await assert_landed_once(pipeline, good | {"late-1"}, last_stock_version=1001)
    absent = await pipeline.count(
        "SELECT count(*) FROM order_events WHERE order_id = %s", (poison.order_id,)
    )
    assert absent == 0


async def test_a_database_that_takes_no_writes_is_waited_for_and_sigterm_still_stops(
    pipeline: Pipeline,
) -> None:
    pipeline.start("sink")
    await publish_events(pipeline, [order_event(f"before-{n}", n) for n in range(1, 101)])
    await pipeline.wait_for_orders(100, timeout=60)

    # Every write now fails whatever its records: not their fault, so wait, never DLQ.
    await execute(pipeline, "ALTER TABLE orders RENAME TO orders_away")
    await publish_events(pipeline, [order_event(f"during-{n}", n) for n in range(101, 301)])
    # Six failures: 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s of backoff, polling while paused; the
    # seventh attempt, 6.4 s later, finds the table back.
    await wait_for_log(pipeline, UNAVAILABLE, count=6)
    assert pipeline.alive("sink"), pipeline.logs()
    # Nothing of the failing batch was half-written.
    assert await pipeline.count("SELECT count(*) FROM order_events") == 100
    await execute(pipeline, "ALTER TABLE orders_away RENAME TO orders")
    await pipeline.wait_for_orders(300, timeout=60)
    await wait_for_log(pipeline, r"PostgreSQL is back after \d+ failed attempts")
    assert pipeline.alive("sink"), pipeline.logs()

    # Down again, and the operator stops the sink: it exits well inside 30 s, and what it
    # could not write is written by the next sink.
    await execute(pipeline, "ALTER TABLE orders RENAME TO orders_away")
    await publish_events(pipeline, [order_event(f"stopped-{n}", n) for n in range(301, 351)])
    await wait_for_log(
        pipeline, UNAVAILABLE, count=len(re.findall(UNAVAILABLE, sink_log(pipeline))) + 2
    )
    process = pipeline.processes.pop("sink")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, 30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"the sink ignored SIGTERM for 30 s\n{pipeline.logs()}") from None
    assert time.monotonic() - started < 30
    await execute(pipeline, "ALTER TABLE orders_away RENAME TO orders")
    pipeline.start("sink")
    await pipeline.wait_for_orders(350, timeout=60)
    await pipeline.wait_for("the sink to commit", lambda: sink_caught_up(pipeline), watch="sink")

    assert pipeline.alive("sink"), pipeline.logs()
    assert await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX) == []
    published = (
        {f"before-{n}" for n in range(1, 101)}
        | {f"during-{n}" for n in range(101, 301)}
        | {f"stopped-{n}" for n in range(301, 351)}
    )
    await assert_landed_once(pipeline, published, last_stock_version=350)


async def test_a_rebalance_while_paused_loses_nothing(pipeline: Pipeline) -> None:
    pipeline.start("sink")
    await publish_events(pipeline, [order_event(f"before-{n}", n) for n in range(1, 51)])
    await pipeline.wait_for_orders(50, timeout=60)
    await execute(pipeline, "ALTER TABLE orders RENAME TO orders_away")
    await publish_events(pipeline, [order_event(f"during-{n}", n) for n in range(51, 251)])
    await wait_for_log(pipeline, UNAVAILABLE, count=3)

    # A second sink joins the group while the first is paused: the partitions are split,
    # the first keeps polling through the rebalance, and both wait for PostgreSQL.
    pipeline.start("sink", name="sink-b")
    await wait_for_log(pipeline, UNAVAILABLE, name="sink-b")
    await wait_for_log(pipeline, "Setting newly assigned partitions", count=2)
    # ... and the first sink is still down, and still waiting, on its new assignment.
    failed = len(re.findall(UNAVAILABLE, sink_log(pipeline)))
    await wait_for_log(pipeline, UNAVAILABLE, count=failed + 1)
    assert pipeline.alive("sink"), pipeline.logs()
    await execute(pipeline, "ALTER TABLE orders_away RENAME TO orders")

    await pipeline.wait_for_orders(250, timeout=60)
    await pipeline.wait_for("the sinks to commit", lambda: sink_caught_up(pipeline), watch="sink")
    assert pipeline.alive("sink"), pipeline.logs()
    assert pipeline.alive("sink-b"), pipeline.logs()
    assert await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX) == []
    published = {f"before-{n}" for n in range(1, 51)} | {f"during-{n}" for n in range(51, 251)}
    await assert_landed_once(pipeline, published, last_stock_version=250)


async def test_sigterm_while_a_write_hangs_on_a_lock_exits_in_time(pipeline: Pipeline) -> None:
    pipeline.start("sink")
    await publish_events(pipeline, [order_event(f"before-{n}", n) for n in range(1, 21)])
    await pipeline.wait_for_orders(20, timeout=60)

    # PostgreSQL up but the write blocked: no error to retry on, so stop() must cut it.
    async with await psycopg.AsyncConnection.connect(
        pipeline.settings.database_url.get_secret_value(), **connection_kwargs(pipeline.settings)
    ) as locker:
        await locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        await publish_events(pipeline, [order_event(f"blocked-{n}", n) for n in range(21, 41)])

        async def sink_blocked() -> bool:
            waiting = await pipeline.count(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (locker.info.backend_pid,),
            )
            return waiting > 0

        await pipeline.wait_for("the sink's write to wait on the lock", sink_blocked, watch="sink")
        process = pipeline.processes.pop("sink")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"the sink ignored SIGTERM for 30 s\n{pipeline.logs()}") from None
        stopped_in = time.monotonic() - started
        await locker.rollback()
    assert stopped_in < 30

    pipeline.start("sink")
    await pipeline.wait_for_orders(40, timeout=60)
    await pipeline.wait_for("the sink to commit", lambda: sink_caught_up(pipeline), watch="sink")
    assert await pipeline.read_topic(ORDER_EVENTS + DLQ_SUFFIX) == []
    published = {f"before-{n}" for n in range(1, 21)} | {f"blocked-{n}" for n in range(21, 41)}
    await assert_landed_once(pipeline, published, last_stock_version=40)
