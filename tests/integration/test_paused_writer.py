"""A stock writer paused past its session (GC, SIGSTOP, a slow disk) is fenced off.

Issue 21, item 3: worker A stops (SIGSTOP) for 15 s mid-sale, past its 10 s session;
worker B takes its partitions over, restores and decides on. A wakes (SIGCONT) and,
before it learns it lost them, appends what it had in hand: holds and stock snapshots
older than B's. Then B is killed (-9) and A takes everything back, restoring from the
changelog. Without fencing, A's stale snapshot, the last in the log, undid B's holds
in that restore: units sold twice. Every record now carries its writer's epoch and a
restore drops a fenced writer's. Checked: no oversell, stock conserved, every order
decided once, and `orderstream audit` passes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.integration.invariants import assert_invariants
from tests.integration.pipeline import Pipeline, request_json
from tests.integration.test_audit import run_audit

# Serial (alone, after the parallel pass): the pause must outlast A's session and B must
# take over within it, timings a machine busy with other tests stretches.
pytestmark = [pytest.mark.integration, pytest.mark.serial]

PRODUCTS = [f"pz-{n}" for n in range(16)]  # spread over every partition
STOCK = 150
RATE = 60  # requests per second over every product, while A runs and while it sleeps
FINAL = len(PRODUCTS) * STOCK  # then enough to take every unit left, and more


async def _owns_partitions(pipe: Pipeline, name: str) -> bool:
    logs = sorted(pipe.workdir.glob(f"{name}-*.log"))
    return bool(logs) and "restored partitions" in logs[-1].read_text(errors="replace")


async def _publish(pipe: Pipeline, first: int, count: int, rate: float | None) -> list[str]:
    """Publish ``count`` single-unit orders over every product, ``rate`` a second (None:
    as fast as they go); return their ids."""
    producer = await pipe.producer()
    topic = pipe.topic("order-requests")
    sent = []
    try:
        started = time.monotonic()
        for i, n in enumerate(range(first, first + count)):
            product, order_id = PRODUCTS[n % len(PRODUCTS)], f"pw-{n}"
            value = request_json(order_id, f"u-{n}", product)
            sent.append(await producer.send(topic, key=product.encode(), value=value))
            if rate is not None:
                await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return [f"pw-{n}" for n in range(first, first + count)]


async def test_a_writer_paused_past_its_session_cannot_undo_the_new_owners_holds(
    pipeline: Pipeline,
) -> None:
    data = pipeline.workdir / "data"
    for worker in ("a", "b"):
        (data / worker).mkdir(parents=True)
    pipeline.start("sink")
    pipeline.start("worker", "worker-a", ORDERSTREAM_DATA_DIR=str(data / "a"))
    for product in PRODUCTS:
        await pipeline.set_stock(product, STOCK)
    for product in PRODUCTS:
        await pipeline.wait_for_stock(product, STOCK)
    pipeline.start("worker", "worker-b", ORDERSTREAM_DATA_DIR=str(data / "b"))
    await pipeline.wait_for(
        "worker B to own partitions", lambda: _owns_partitions(pipeline, "worker-b"), watch=None
    )

    accepted = await _publish(pipeline, 0, 4 * RATE, RATE)  # both deciding
    worker_a = pipeline.processes["worker-a"]
    os.kill(worker_a.pid, signal.SIGSTOP)  # past the 10 s session: B takes A's partitions
    accepted += await _publish(pipeline, len(accepted), 14 * RATE, RATE)
    await asyncio.sleep(4)  # B decides what A left; no request comes after its snapshots
    os.kill(worker_a.pid, signal.SIGCONT)  # A decides what it fetches on its old state
    await asyncio.sleep(3)
    pipeline.kill("worker-b")  # A takes every partition back, restoring from the log
    accepted += await _publish(pipeline, len(accepted), FINAL, None)

    await pipeline.wait_for_orders(len(accepted), timeout=240)
    assert pipeline.alive("worker-a"), pipeline.logs()
    await asyncio.sleep(3)  # the last stock changes reach PostgreSQL
    await assert_invariants(pipeline, dict.fromkeys(PRODUCTS, STOCK), set(accepted))
    levels = await pipeline.query("SELECT product_id, available FROM product_stock")
    assert all(row["available"] == 0 for row in levels), levels  # demand took every unit
    code, report = await run_audit(pipeline)
    assert code == 0, report
