"""Backpressure at the door: past ORDERSTREAM_HTTP_MAX_IN_FLIGHT unacknowledged publishes,
POST /orders answers 503 with Retry-After at once, and the gauge shows what is in flight.

The producer here is a stand-in whose acknowledgements the test releases: what is under
test is the door's counting, not Kafka (the real stack's tests publish for real).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.structs import RecordMetadata
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from orderstream.http import create_app
from orderstream.http.keys import METRICS
from orderstream.http.publishing import ORDER_PUBLISHER, OrderPublisher
from orderstream.http.stock_view import StockFigures
from orderstream.settings import Settings

LIMIT = 2


class HeldProducer:
    """Accept every record; acknowledge none until ``release``."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[RecordMetadata]] = []
        self._arrived = asyncio.Event()

    async def send(self, topic: str, **record: Any) -> asyncio.Future[RecordMetadata]:
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self._arrived.set()
        return future

    async def sent(self, count: int) -> None:
        """Wait until ``count`` records have been sent in all."""
        while len(self.pending) < count:
            self._arrived.clear()
            await self._arrived.wait()

    def release(self) -> None:
        for offset, future in enumerate(self.pending):
            if not future.done():
                future.set_result(RecordMetadata("t", 3, None, offset, -1, -1, -1))  # type: ignore[arg-type]


class HeldLink:
    def __init__(self, producer: HeldProducer) -> None:
        self._producer = producer

    async def producer(self) -> HeldProducer:
        return self._producer


@pytest.fixture
async def door() -> AsyncIterator[tuple[TestClient[Any, Any], HeldProducer, web.Application]]:
    settings = Settings(http_max_in_flight=LIMIT, rate_limit_user_per_s=0)
    registry = CollectorRegistry()
    pool = AsyncConnectionPool("", open=False)  # never used: no Idempotency-Key here
    app = create_app(settings, registry, pool=pool, stock_figures=StockFigures())
    producer = HeldProducer()

    async def hold_acks(app: web.Application) -> None:
        # After the app's own contexts: its publisher, over the stand-in producer.
        app[ORDER_PUBLISHER] = OrderPublisher(
            HeldLink(producer),  # type: ignore[arg-type]
            LIMIT,
            app[METRICS].publishes_in_flight,
        )

    app.on_startup.append(hold_acks)
    async with TestClient(TestServer(app)) as client:
        yield client, producer, app


def _order(n: int) -> dict[str, Any]:
    return {"order_id": f"o-{n}", "user_id": f"u-{n}", "product_id": "p", "quantity": 1}


async def test_past_the_limit_the_door_answers_503_with_retry_after_at_once(
    door: tuple[TestClient[Any, Any], HeldProducer, web.Application],
) -> None:
    client, producer, app = door
    held = [asyncio.ensure_future(client.post("/orders", json=_order(n))) for n in range(LIMIT)]
    publisher = app[ORDER_PUBLISHER]
    await producer.sent(LIMIT)
    assert publisher.in_flight == LIMIT

    refused = await client.post("/orders", json=_order(LIMIT))
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert await refused.json() == {"error": "too many orders in flight to Kafka: retry after 1 s"}
    metrics = await (await client.get("/metrics")).text()
    assert "orderstream_intake_publishes_in_flight 2.0" in metrics
    assert "orderstream_intake_busy_refusals_total 1.0" in metrics
    assert len(producer.pending) == LIMIT  # the refused one was never sent

    producer.release()
    for response in await asyncio.gather(*held):
        assert response.status == 202
        assert (await response.json())["partition"] == 3
    assert publisher.in_flight == 0
    metrics = await (await client.get("/metrics")).text()
    assert "orderstream_intake_publishes_in_flight 0.0" in metrics

    # Room again: the next order is sent.
    later = asyncio.ensure_future(client.post("/orders", json=_order(LIMIT + 1)))
    await producer.sent(LIMIT + 1)
    producer.release()
    assert (await later).status == 202
