"""The order agent's local store on the real stack: its own, and dropped at every start.

Faust keeps tables under ``<datadir>/v1/tables`` whatever the app id. A cache that is not
the app's own, or that holds offsets its changelog no longer has, stops the worker with
Faust's ``ConsistencyError`` (a persisted offset above the changelog's high water) or,
worse, serves another deployment's orders. `orderstream run` decides and persists,
`orderstream orders` runs the lifecycle beside it, so a test can stop the lifecycle alone.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from orderstream.admin import create_topics
from orderstream.agents.lifecycle.faust_app import lifecycle_datadir
from orderstream.services import ORDER_LIFECYCLE
from orderstream.sink import migrate
from orderstream.tables import ORDERS_TABLE, orders_changelog
from orderstream.topics import PAYMENT_RESULTS
from tests.integration.conftest import _drop, _free_port
from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-s"
STOCK = 100  # more than every test sells: each order is paid and confirmed
# Payments always succeed, quickly: every order ends CONFIRMED within a second or so.
LIFECYCLE_ENV = {
    "ORDERSTREAM_PAYMENT_SUCCESS_RATE": "1",
    "ORDERSTREAM_PAYMENT_DELAY_MIN_S": "0.01",
    "ORDERSTREAM_PAYMENT_DELAY_MAX_S": "0.05",
}


@pytest.fixture
async def neighbour(pipeline: Pipeline, tmp_path: Path) -> AsyncIterator[Pipeline]:
    """Return a second deployment with ids of its own and ``pipeline``'s data directory."""
    run_id = f"t{uuid.uuid4().hex[:10]}"
    settings = pipeline.settings.model_copy(
        update={
            "topic_prefix": f"{run_id}.",
            "app_id": f"orderstream-{run_id}",
            "sink_group": f"sink-{run_id}",
            "database_schema": run_id,
            "http_port": _free_port(),
        }
    )
    assert settings.data_dir == pipeline.settings.data_dir
    await create_topics(settings)
    await migrate(settings)
    workdir = tmp_path / "neighbour"  # its own logs: both deployments name them alike
    workdir.mkdir()
    pipe = Pipeline(settings, workdir)
    try:
        yield pipe
    finally:
        pipe.stop_all()
        await _drop(settings)


async def _start(pipe: Pipeline) -> None:
    """Start the stock agent, the sink and the lifecycle; put the stock in."""
    pipe.start()
    pipe.start("orders", **LIFECYCLE_ENV)
    await pipe.set_stock(PRODUCT, STOCK)
    await pipe.wait_for_stock(PRODUCT, STOCK)


async def _start_stock_path(pipe: Pipeline) -> None:
    """Start the stock agent and the sink only; put the stock in."""
    pipe.start()
    await pipe.set_stock(PRODUCT, STOCK)
    await pipe.wait_for_stock(PRODUCT, STOCK)


async def _sell(pipe: Pipeline, prefix: str, count: int) -> set[str]:
    """Publish ``count`` single-line orders and wait until each is CONFIRMED."""
    order_ids = [f"{prefix}-{i}" for i in range(count)]
    await pipe.publish(
        (PRODUCT.encode(), request_json(order_id, f"u-{order_id}", PRODUCT))
        for order_id in order_ids
    )

    async def confirmed() -> bool:
        return (
            await pipe.count(
                "SELECT count(*) FROM orders WHERE status = 'CONFIRMED' AND order_id = ANY(%s)",
                (order_ids,),
            )
            == count
        )

    await pipe.wait_for(f"orders {prefix}-* confirmed", confirmed, timeout=30, watch="orders")
    return set(order_ids)


def _assert_cached(pipe: Pipeline) -> Path:
    """Check that the stopped lifecycle left its table cache on disk; return the directory."""
    datadir = lifecycle_datadir(pipe.settings)
    tables = datadir / "v1" / "tables"
    assert any(tables.glob(f"{ORDERS_TABLE}-*")), f"no table cache in {tables}"
    return datadir


def _assert_lifecycle_never_failed(pipe: Pipeline) -> None:
    """Check the whole logs: the lifecycle started the first time, every time."""
    for path in pipe.workdir.glob("*.log"):
        text = path.read_text(errors="replace")
        assert "ConsistencyError" not in text, f"{path.name}\n{pipe.logs()}"
        assert f"role {ORDER_LIFECYCLE} failed" not in text, f"{path.name}\n{pipe.logs()}"


async def _assert_settled(pipe: Pipeline, order_ids: set[str]) -> None:
    """Check that every order is CONFIRMED once in PostgreSQL and the stock is conserved."""
    orders = await pipe.query("SELECT order_id, status FROM orders")
    assert {row["order_id"] for row in orders} == order_ids
    assert {row["status"] for row in orders} == {"CONFIRMED"}
    histories = await pipe.query(
        "SELECT order_id, array_agg(status ORDER BY seq) AS statuses,"
        " array_agg(seq ORDER BY seq) AS seqs FROM order_events GROUP BY 1"
    )
    assert len(histories) == len(order_ids)
    for row in histories:
        assert row["statuses"] == ["RESERVED", "PAID", "CONFIRMED"], row
        assert row["seqs"] == [1, 2, 3], row
    [level] = await pipe.query(
        "SELECT available, reserved, sold, total_in FROM product_stock WHERE product_id = %s",
        (PRODUCT,),
    )
    assert min(level["available"], level["reserved"], level["sold"]) >= 0, level
    assert level["available"] + level["reserved"] + level["sold"] == STOCK, level
    assert level["total_in"] == STOCK, level
    assert level["reserved"] == 0, level
    assert level["sold"] == len(order_ids), level


# Serial: the restarted lifecycle has 30 s to settle its new orders; alone it keeps that
# timing on a 2-core machine (it once caught the same stall as test_settle's kill -9).
@pytest.mark.serial
async def test_two_deployments_share_a_data_dir_and_not_their_tables(
    pipeline: Pipeline, neighbour: Pipeline
) -> None:
    started = time.monotonic()
    await asyncio.gather(_start(pipeline), _start_stock_path(neighbour))
    first = await _sell(pipeline, "o", 8)
    pipeline.stop("orders")
    first_cache = _assert_cached(pipeline)

    # The same order ids land on the same changelog partitions: a table read across
    # deployments would find offsets its own (empty) changelog never reached.
    neighbour.start("orders", **LIFECYCLE_ENV)
    second = await _sell(neighbour, "o", 20)
    second_cache = _assert_cached(neighbour)
    assert first_cache != second_cache
    assert first_cache.parent == second_cache.parent == pipeline.settings.data_dir

    # Back with the neighbour's cache beside its own, the neighbour still running. Sold
    # at once, while it recovers, partly on partitions where it never committed an offset.
    pipeline.start("orders", **LIFECYCLE_ENV)
    first |= await _sell(pipeline, "p", 8)

    await _assert_settled(pipeline, first)
    await _assert_settled(neighbour, second)
    # Each lifecycle paid its own orders, and no other deployment's.
    for pipe, sold in ((pipeline, first), (neighbour, second)):
        paid = {json.loads(r.value)["order_id"] for r in await pipe.read_topic(PAYMENT_RESULTS)}
        assert paid == sold
        assert pipe.alive("orders")
        _assert_lifecycle_never_failed(pipe)
    assert time.monotonic() - started < 60, time.monotonic() - started


async def _recreate_empty(pipe: Pipeline, topic: str) -> None:
    """Delete ``topic``, wait until it is gone, and create it again with its partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=pipe.settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])

        async def deleted() -> bool:
            return topic not in await admin.list_topics()

        await pipe.wait_for(f"{topic} deleted", deleted, timeout=30)
    finally:
        await admin.close()
    assert await create_topics(pipe.settings) == [topic]


async def test_lifecycle_restarts_on_a_changelog_recreated_empty(pipeline: Pipeline) -> None:
    started = time.monotonic()
    changelog = orders_changelog(pipeline.settings)
    await _start(pipeline)
    first = await _sell(pipeline, "o", 10)
    pipeline.stop("orders")
    _assert_cached(pipeline)
    assert await pipeline.read_topic(changelog, prefixed=False)

    await _recreate_empty(pipeline, changelog)
    assert not await pipeline.read_topic(changelog, prefixed=False)
    # The cache's offsets are above the new changelog's high water: trusted, the
    # worker would stop with Faust's ConsistencyError.
    pipeline.start("orders", **LIFECYCLE_ENV)
    second = await _sell(pipeline, "n", 10)

    assert pipeline.alive("orders")
    _assert_lifecycle_never_failed(pipeline)
    await _assert_settled(pipeline, first | second)
    # The new orders' states are in the new changelog.
    assert await pipeline.read_topic(changelog, prefixed=False)
    assert time.monotonic() - started < 60, time.monotonic() - started
