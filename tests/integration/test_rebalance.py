"""Scale out and back in mid-sale: partitions move between workers, invariants hold."""

from __future__ import annotations

import random
import re

import pytest

from orderstream.producer import publish_stock_command
from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import SHORT_SESSION, Pipeline, request_json

pytestmark = pytest.mark.integration

PRODUCTS = [f"sku-{n}" for n in range(16)]  # spread over every partition
STOCK = 40
RESTOCK = 15
CHUNK = 1200  # requests per phase: ~75 per product, more than any product's stock


def requests(phase: int) -> list[tuple[str, bytes, bytes]]:
    """Return (order id, key, value) triples for one phase, over every product."""
    rng = random.Random(phase)
    chosen = []
    for i in range(CHUNK):
        product = rng.choice(PRODUCTS)
        order = f"p{phase}-order-{i}"
        chosen.append((order, product.encode(), request_json(order, f"user-{i}", product)))
    return chosen


async def test_partitions_move_between_workers_mid_sale(pipeline: Pipeline) -> None:
    data = pipeline.workdir / "data"
    for worker in ("a", "b"):  # each worker its own local store
        (data / worker).mkdir(parents=True)
    pipeline.start("sink")
    pipeline.start("worker", "worker-a", ORDERSTREAM_DATA_DIR=str(data / "a"))
    for product in PRODUCTS:
        await pipeline.set_stock(product, STOCK)
    for product in PRODUCTS:
        await pipeline.wait_for_stock(product, STOCK)
    phases = [requests(n) for n in range(3)]
    accepted: set[str] = set()

    async def publish(phase: int) -> None:
        await pipeline.publish([(key, value) for _, key, value in phases[phase]])
        accepted.update(order for order, _, _ in phases[phase])

    await publish(0)
    await pipeline.wait_for_orders(CHUNK // 2)
    # Scale out: a second worker joins and takes half of the partitions mid-sale.
    pipeline.start("worker", "worker-b", ORDERSTREAM_DATA_DIR=str(data / "b"))
    await publish(1)
    await pipeline.wait_for_orders(CHUNK + CHUNK // 2)
    # Scale in: the first worker leaves; the second takes its partitions over.
    pipeline.stop("worker-a")
    restocked = PRODUCTS[::4]
    for product in restocked:
        await publish_stock_command(pipeline.settings, product, "add", RESTOCK)
    for product in restocked:
        await pipeline.wait_for_stock(product, STOCK + RESTOCK)
    await publish(2)
    await pipeline.wait_for_orders(len(accepted))

    stock_in = {p: STOCK + (RESTOCK if p in restocked else 0) for p in PRODUCTS}
    levels = await pipeline.query("SELECT product_id, available FROM product_stock")
    assert all(row["available"] == 0 for row in levels), levels  # demand exceeded stock
    await assert_invariants(pipeline, stock_in, accepted)


async def test_a_standby_takes_a_killed_workers_partitions_over_from_where_it_read(
    pipeline: Pipeline,
) -> None:
    data = pipeline.workdir / "data"
    standby = {"ORDERSTREAM_STANDBY_REPLICAS": "1"} | SHORT_SESSION
    for worker in ("a", "b"):
        (data / worker).mkdir(parents=True)
    pipeline.start("sink")
    pipeline.start("worker", "worker-a", ORDERSTREAM_DATA_DIR=str(data / "a"), **standby)
    pipeline.start("worker", "worker-b", ORDERSTREAM_DATA_DIR=str(data / "b"), **standby)

    def log_of(worker: str) -> str:
        paths = pipeline.workdir.glob(f"{worker}-*.log")
        return "\n".join(path.read_text(errors="replace") for path in paths)

    async def both_own_partitions() -> bool:
        return all("restored partitions [" in log_of(w) for w in ("worker-a", "worker-b"))

    # Each owns half the partitions and stands by for the other half.
    await pipeline.wait_for("both workers owning partitions", both_own_partitions, timeout=60)
    for product in PRODUCTS:
        await pipeline.set_stock(product, STOCK)
    for product in PRODUCTS:
        await pipeline.wait_for_stock(product, STOCK)
    phases = [requests(n) for n in range(10, 12)]
    accepted: set[str] = set()

    async def publish(phase: int) -> None:
        await pipeline.publish([(key, value) for _, key, value in phases[phase]])
        accepted.update(order for order, _, _ in phases[phase])

    await publish(0)
    await pipeline.wait_for_orders(CHUNK)
    # kill -9: worker-b takes every partition over, each from a store it kept: those it
    # stood by for from the standby's offset, its own (given up in the rebalance, kept
    # as standbys) from where it had written them; none from the changelog's start.
    pipeline.kill("worker-a")
    await publish(1)
    await pipeline.wait_for_orders(2 * CHUNK)
    takeovers = [
        line for line in log_of("worker-b").splitlines() if "from their standbys at" in line
    ]
    assert takeovers, pipeline.logs()
    taken = dict(re.findall(r"(\d+): (\d+)", takeovers[-1].rsplit("offsets", 1)[1]))
    assert sorted(map(int, taken)) == list(range(pipeline.settings.partitions)), takeovers[-1]
    assert all(int(offset) > 0 for offset in taken.values()), takeovers[-1]
    levels = await pipeline.query("SELECT product_id, available FROM product_stock")
    assert all(row["available"] == 0 for row in levels), levels  # demand exceeded stock
    await assert_invariants(pipeline, dict.fromkeys(PRODUCTS, STOCK), accepted)
