"""A sale during a fault: one deployment of the fault matrix (bench/faults.py), its
publisher and prober, and the check of its books in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from tests.integration.pipeline import Pipeline, request_json

from bench.orderstream_bench import drop_deployment
from orderstream.admin import create_topics
from orderstream.settings import Settings
from orderstream.sink import migrate
from orderstream.topics import ORDER_EVENTS, ORDER_REQUESTS

PRODUCTS = [f"sku-{n}" for n in range(20)]
STOCK = 100
PACE_PER_S = 1_500  # requests/s: a 5,000-request sale lasts ~3.5 s, long enough to hit
HOSTILE = [
    request_json("nul\x00order", "u", PRODUCTS[0]),
    request_json("o-nul-user", "nul\x00user", PRODUCTS[0]),
    json.dumps({"order_id": "o-huge", "user_id": "u", "product_id": PRODUCTS[0],
                "quantity": 9223372036854775808}).encode(),
    request_json("m" * 1_000_000, "u", PRODUCTS[0]),
    b"\xff\xfenot json",
]  # fmt: skip


@dataclass
class Outcome:
    """One run of one fault."""

    requests: int = 0
    decided: int = 0
    lost: int = 0
    duplicated: int = 0
    oversold: int = 0
    recover_s: float | None = None
    problems: list[str] = field(default_factory=list)


class Sale:
    """One deployment and its sale: start the roles, publish, probe, check the books."""

    def __init__(self, base: Settings, workdir: Path, requests: int) -> None:
        run_id = f"f{uuid.uuid4().hex[:8]}"
        self.settings = base.model_copy(
            update={
                "topic_prefix": f"{run_id}.",
                "app_id": f"orderstream-{run_id}",
                "sink_group": f"sink-{run_id}",
                "database_schema": run_id,
                "data_dir": workdir / run_id,
                "worker_metrics_port": 0,  # two workers at once in one fault
                "sink_metrics_port": 0,
            }
        )
        (workdir / run_id).mkdir(parents=True)
        self.pipe = Pipeline(self.settings, workdir / run_id)  # its logs in a folder of its own
        self.orders = [f"o-{n}" for n in range(requests)]
        self.accepted: set[str] = set()
        self.probes = 0
        self._probe: asyncio.Task[float]

    async def setup(self) -> None:
        await create_topics(self.settings)
        await migrate(self.settings)
        for product in PRODUCTS:
            await self.pipe.set_stock(product, STOCK)

    async def ready(self) -> None:
        """Wait until the worker decided the stock and the sink wrote it: both are up, so
        a fault lands on a running pipeline."""

        async def stocked() -> bool:
            return await self.pipe.count("SELECT count(*) FROM product_stock") == len(PRODUCTS)

        await self.pipe.wait_for("the stock in PostgreSQL", stocked, 120, watch=None)

    def start(self, role: str, name: str | None = None, **env: str) -> None:
        data = self.settings.data_dir / (name or role)
        data.mkdir(parents=True, exist_ok=True)
        self.pipe.start(role, name, ORDERSTREAM_DATA_DIR=str(data), **env)

    async def publish(
        self,
        copies: int = 1,
        hostile_every: int = 0,
        at: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """Publish the sale at a steady pace; ``at(fraction)`` runs as it passes 30 %."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all")
        await producer.start()
        topic = self.settings.topic(ORDER_REQUESTS)
        fired = at is None
        started = time.monotonic()
        try:
            for n, order in enumerate(self.orders):
                product = PRODUCTS[n % len(PRODUCTS)]
                value = request_json(order, f"user-{n % 997}", product)
                for _ in range(copies):
                    await producer.send(topic, key=product.encode(), value=value)
                self.accepted.add(order)
                if hostile_every and n % hostile_every == 0:
                    bad = HOSTILE[(n // hostile_every) % len(HOSTILE)]
                    await producer.send(topic, key=PRODUCTS[0].encode(), value=bad)
                if not fired and n >= len(self.orders) * 0.3 and at is not None:
                    fired = True
                    await producer.flush()
                    await at(time.monotonic())
                delay = started + (n + 1) / PACE_PER_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await producer.flush()
        finally:
            await producer.stop()

    def probe_from(self, since: float) -> None:
        """Start a probe now, timed from ``since``; ``probed()`` waits for it."""
        self._probe = asyncio.create_task(self.probe(since))

    async def probed(self) -> float:
        return await self._probe

    async def probe(self, since: float, timeout_s: float = 120.0) -> float:
        """Publish one request per product; return seconds from ``since`` to the last
        decision event."""
        self.probes += 1
        orders = {f"probe-{self.probes}-{p}": p for p in PRODUCTS}
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap)
        await producer.start()
        try:
            for order, product in orders.items():
                await producer.send(
                    self.settings.topic(ORDER_REQUESTS),
                    key=product.encode(),
                    value=request_json(order, "prober", product),
                )
            await producer.flush()
        finally:
            await producer.stop()
        self.accepted.update(orders)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = {
                r.key.decode() for r in await self.pipe.read_topic(ORDER_EVENTS) if r.key
            } & set(orders)
            if len(seen) == len(orders):
                return time.monotonic() - since
            await asyncio.sleep(0.2)
        raise TimeoutError(f"probe {self.probes} not decided within {timeout_s} s")

    async def drained(self, timeout_s: float = 300.0) -> None:
        async def all_there() -> bool:
            return await self.pipe.count("SELECT count(*) FROM orders") >= len(self.accepted)

        await self.pipe.wait_for("every order in PostgreSQL", all_there, timeout_s, watch=None)

    async def settled(self, outcome: Outcome, timeout_s: float = 300.0) -> None:
        """With the lifecycle running: wait until every order is final and nothing is
        reserved, then check that each product sold what its CONFIRMED orders bought."""
        terminal = "('CONFIRMED', 'REJECTED', 'CANCELLED', 'EXPIRED')"

        async def all_final() -> bool:
            open_ = await self.pipe.count(
                f"SELECT count(*) FROM orders WHERE status NOT IN {terminal}"
            )
            held = await self.pipe.count("SELECT count(*) FROM product_stock WHERE reserved > 0")
            known = await self.pipe.count("SELECT count(*) FROM orders")
            return known >= len(self.accepted) and not open_ and not held

        await self.pipe.wait_for("every order final", all_final, timeout_s, watch=None)
        confirmed = {
            row["product_id"]: int(row["q"])
            for row in await self.pipe.query(
                "SELECT i.product_id, sum(i.quantity) AS q FROM orders o JOIN order_items i"
                " USING (order_id) WHERE o.status = 'CONFIRMED' GROUP BY 1"
            )
        }
        for row in await self.pipe.query("SELECT product_id, sold FROM product_stock"):
            if row["sold"] != confirmed.get(row["product_id"], 0):
                outcome.oversold += 1
                outcome.problems.append(
                    f"{row['product_id']}: sold {row['sold']}, CONFIRMED"
                    f" {confirmed.get(row['product_id'], 0)}"
                )

    async def books(self, outcome: Outcome) -> None:
        """Check what PostgreSQL shows against what was published."""
        outcome.requests = len(self.accepted)
        rows = await self.pipe.query("SELECT order_id FROM orders")
        seen = [row["order_id"] for row in rows]
        outcome.decided = len(set(seen) & self.accepted)
        outcome.lost = len(self.accepted - set(seen))
        outcome.duplicated = (len(seen) - len(set(seen))) + len(set(seen) - self.accepted)
        # An order's status twice in its history: decided, or settled, twice (with the
        # lifecycle an order has several events, each status once).
        events = await self.pipe.count(
            "SELECT count(DISTINCT order_id) FROM (SELECT order_id FROM order_events"
            " GROUP BY order_id, status HAVING count(*) > 1) AS twice"
        )
        outcome.duplicated += events
        reserved = {
            row["product_id"]: int(row["q"])
            for row in await self.pipe.query(
                "SELECT i.product_id, sum(i.quantity) AS q FROM orders o JOIN order_items i"
                " USING (order_id) WHERE o.status = 'RESERVED' GROUP BY 1"
            )
        }
        for row in await self.pipe.query("SELECT * FROM product_stock"):
            level = (row["available"], row["reserved"], row["sold"])
            balanced = sum(level) == row["total_in"] == STOCK and min(level) >= 0
            if not balanced or row["reserved"] != reserved.get(row["product_id"], 0):
                outcome.oversold += 1
                outcome.problems.append(f"{row['product_id']}: {row} vs {reserved}")
        audit = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orderstream",
            "audit",
            env=self.pipe.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await audit.communicate()
        if audit.returncode:
            lines = output.decode().splitlines()
            failed = [line for line in lines if line.startswith("FAIL")] or lines[-3:]
            outcome.problems.append("orderstream audit: " + "; ".join(failed)[:2000])

    async def drop(self) -> None:
        self.pipe.stop_all()
        await drop_deployment(self.settings)
