"""The status service when Kafka does not answer: clear 503s, and PostgreSQL still served."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from orderstream.http import create_app
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration


async def test_kafka_down_gives_json_503s_and_reads_still_work(pipeline: Pipeline) -> None:
    # Nothing listens on port 1: the service must start anyway and say what is wrong.
    settings = pipeline.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    app = create_app(settings, CollectorRegistry())
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/readyz")
        assert response.status == 503
        body = await response.json()
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["kafka"].startswith("failed")

        order = {"order_id": "k1", "user_id": "u", "product_id": "p", "quantity": 1}
        response = await client.post("/orders", json=order)
        assert response.status == 503
        assert (await response.json())["error"] == "Kafka unavailable, retry later"

        response = await client.get("/orders/k1")
        assert response.status == 404
        assert (await response.json()) == {"error": "order not found", "order_id": "k1"}
        assert (await client.get("/healthz")).status == 200
