"""The stock gauges: the busiest products only, their label set replaced at every update."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from orderstream.agents.stock.agent import StockAgent
from orderstream.agents.stock.store import PartitionStore
from orderstream.domain import StockLevel
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings


def level(available: int, reserved: int = 0, sold: int = 0) -> StockLevel:
    return StockLevel(
        available=available, reserved=reserved, sold=sold, total_in=available + reserved + sold
    )


def shown(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """Return gauge -> product -> value, for the stock gauges."""
    gauges: dict[str, dict[str, float]] = {}
    for family in registry.collect():
        if family.name.startswith("orderstream_stock_") and family.type == "gauge":
            gauges[family.name] = {s.labels["product"]: s.value for s in family.samples}
    return gauges


def test_the_gauges_show_the_products_given_and_no_other() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics.register(registry)
    metrics.show_stock({"a": level(5, 2, 3), "b": level(0, 1, 9)})
    assert shown(registry) == {
        "orderstream_stock_available": {"a": 5, "b": 0},
        "orderstream_stock_reserved": {"a": 2, "b": 1},
        "orderstream_stock_sold": {"a": 3, "b": 9},
    }
    metrics.show_stock({"c": level(7)})
    assert shown(registry)["orderstream_stock_available"] == {"c": 7}
    metrics.show_stock({})
    assert shown(registry) == {
        f"orderstream_stock_{name}": {} for name in ("available", "reserved", "sold")
    }


def test_the_agent_shows_the_ten_busiest_products_of_its_partitions(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    agent = StockAgent(Settings(topic_prefix=""), WorkerMetrics.register(registry))
    stores = [PartitionStore(tmp_path / str(partition)) for partition in (0, 1)]
    try:
        for n in range(50):
            stores[n % 2].stock[f"p{n}"] = level(n)
        agent._stores = dict(enumerate(stores))
        agent._busy = {f"p{n}": n for n in range(50)}  # batches that changed each product
        agent._show_busiest_stock(0.0)
        busiest = {f"p{n}": n for n in range(40, 50)}
        assert shown(registry)["orderstream_stock_available"] == busiest
        # Idle: the same products stay, at their current stock.
        stores[0].stock["p40"] = level(1)
        agent._show_busiest_stock(5.0)
        assert shown(registry)["orderstream_stock_available"] == {**busiest, "p40": 1}
        # A partition revoked: its products leave the gauges.
        del agent._stores[1]
        agent._busy = {"p0": 3, "p1": 2}
        agent._show_busiest_stock(10.0)
        assert shown(registry)["orderstream_stock_available"] == {"p0": 0}
    finally:
        for store in stores:
            store.close()
