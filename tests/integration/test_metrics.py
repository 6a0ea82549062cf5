"""A worker and a sink run apart each serve their own /metrics, for Prometheus to scrape."""

from __future__ import annotations

import socket
from collections import defaultdict

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.pipeline import Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCT = "sku-metrics"
STOCK = 3
ORDERS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Return sample name -> labels -> value from http://127.0.0.1:PORT/metrics ({} if down)."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    except aiohttp.ClientConnectionError:
        return {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_a_worker_and_a_sink_run_apart_serve_their_own_metrics(pipeline: Pipeline) -> None:
    worker_port, sink_port = free_port(), free_port()
    pipeline.start("worker", ORDERSTREAM_WORKER_METRICS_PORT=str(worker_port))
    pipeline.start("sink", ORDERSTREAM_SINK_METRICS_PORT=str(sink_port))
    await pipeline.set_stock(PRODUCT, STOCK)
    await pipeline.wait_for_stock(PRODUCT, STOCK)
    await pipeline.publish(
        (PRODUCT.encode(), request_json(f"order-{n}", f"user-{n}", PRODUCT)) for n in range(ORDERS)
    )
    await pipeline.wait_for_orders(ORDERS, timeout=120)

    worker: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

    async def decisions_counted() -> bool:
        worker.clear()
        worker.update(await scrape(worker_port))
        return sum(worker.get("orderstream_decisions_total", {}).values()) == ORDERS

    await pipeline.wait_for("the worker's /metrics to count 5 decisions", decisions_counted)
    decisions = worker["orderstream_decisions_total"]
    assert decisions[(("outcome", "reserved"), ("reason", ""))] == STOCK
    assert decisions[(("outcome", "rejected"), ("reason", "OUT_OF_STOCK"))] == ORDERS - STOCK
    assert worker["orderstream_decision_latency_seconds_count"][()] == ORDERS
    assert (
        worker["orderstream_stock_commands_total"][(("operation", "set"), ("result", "applied"))]
        == 1
    )

    sink: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

    async def batches_counted() -> bool:
        sink.clear()
        sink.update(await scrape(sink_port))
        # Every order event and stock change written, in one batch or several.
        return sink.get("orderstream_sink_batch_records_sum", {}).get((), 0) >= ORDERS + 1

    await pipeline.wait_for("the sink's /metrics to count its batches", batches_counted)
    assert sink["orderstream_sink_batch_records_count"][()] >= 1
    assert (("topic", pipeline.topic("order-events")),) in sink["orderstream_sink_records_total"]

    # Each process serves its own registry: no role's metrics appear in the other's.
    assert not any(name.startswith("orderstream_sink_") for name in worker)
    assert "orderstream_decisions_total" not in sink
    assert pipeline.alive("worker"), pipeline.logs()
    assert pipeline.alive("sink"), pipeline.logs()


async def test_the_lifecycle_serves_its_readiness_and_its_lag(pipeline: Pipeline) -> None:
    """The lifecycle's own metrics: partitions ready once its table is restored, and its
    group's lag (issue 18), back to 0 once the sale is settled."""
    port = free_port()
    pipeline.start()
    pipeline.start(
        "orders",
        ORDERSTREAM_ORDERS_METRICS_PORT=str(port),
        # One slow payment at a time: the charge requests wait, uncommitted, for ~10 s.
        ORDERSTREAM_PAYMENT_DELAY_MIN_S="2",
        ORDERSTREAM_PAYMENT_DELAY_MAX_S="2",
        ORDERSTREAM_PAYMENT_CONCURRENCY="1",
        ORDERSTREAM_PAYMENT_TIMEOUT_S="5",
    )
    await pipeline.set_stock("sku-lag", 5)
    await pipeline.wait_for_stock("sku-lag", 5)
    partitions = pipeline.settings.partitions

    async def gauge(name: str) -> float | None:
        try:
            samples = await scrape(port)
        except aiohttp.ClientError:
            return None
        return samples.get(name, {}).get((), None)

    async def ready() -> bool:
        return await gauge("orderstream_lifecycle_partitions_ready") == partitions

    await pipeline.wait_for("the lifecycle to own every partition", ready, 90, watch="orders")
    await pipeline.publish(
        [(b"sku-lag", request_json(f"lag-{n}", f"u-{n}", "sku-lag")) for n in range(8)]
    )

    async def lagging() -> bool:
        return (await gauge("orderstream_lifecycle_lag_messages") or 0) > 0

    await pipeline.wait_for("the lifecycle's lag while payments wait", lagging, 60)

    async def settled() -> bool:
        final = await pipeline.count(
            "SELECT count(*) FROM orders WHERE status IN ('CONFIRMED', 'CANCELLED', 'REJECTED')"
        )
        return final == 8 and await gauge("orderstream_lifecycle_lag_messages") == 0

    await pipeline.wait_for("the sale settled and the lifecycle's lag 0", settled, 90)
    # Stock conserved, nothing reserved, each order final (5 units, 8 orders).
    [level] = await pipeline.query("SELECT available, reserved, sold FROM product_stock")
    confirmed = await pipeline.count("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'")
    assert level["reserved"] == 0, level
    assert level["available"] + level["sold"] == 5, level
    assert level["sold"] == confirmed, level
    assert await pipeline.count("SELECT count(*) FROM orders WHERE status = 'REJECTED'") == 3
