"""A sale during a fault: one deployment of the fault matrix (bench/faults.py), its
publisher and prober, and what is checked once the fault is over (``Sale.settle``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from tests.integration.pipeline import Pipeline, request_json

from bench.orderstream_bench import (
    drop_deployment,
    isolated,
    lifecycle_partitions_ready,
    orderstream_family,
)
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
TERMINAL = "('CONFIRMED', 'REJECTED', 'CANCELLED', 'EXPIRED')"
# How long every order of a sale may take to be final once the fault is over.
SETTLE_TIMEOUT_S = 300.0


def log(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Outcome:
    """One run of one fault."""

    requests: int = 0
    decided: int = 0
    lost: int = 0
    duplicated: int = 0
    oversold: int = 0  # products out of balance, or sold != CONFIRMED (Sale.books)
    recover_s: float | None = None
    final: bool | None = None  # every order in a terminal state, nothing reserved
    final_s: float | None = None  # from the fault to every order final
    audit_ok: bool | None = None
    audit: str = ""  # `orderstream audit`'s verdict
    problems: list[str] = field(default_factory=list)


class Sale:
    """One deployment and its sale: `orderstream run` processes on their defaults (the
    order lifecycle in a child process, paying quickly), the publisher, the probes, and
    after the fault the settled books and the audit."""

    def __init__(self, base: Settings, workdir: Path, requests: int, stack_root: Path) -> None:
        run_id = f"f{uuid.uuid4().hex[:8]}"
        self.settings = isolated(
            base,
            run_id,
            workdir,
            http_host="127.0.0.1",
            http_processes=1,
            run_lifecycle=True,
            # The mock provider answers in 50-300 ms (90 % paid, the default): a sale
            # settles within seconds of its last decision.
            payment_delay_min_s=0.05,
            payment_delay_max_s=0.3,
        )
        (workdir / run_id).mkdir(parents=True)
        self.pipe = Pipeline(self.settings, workdir / run_id)  # its logs in a folder of its own
        self.stack_root = stack_root
        self.orders = [f"o-{n}" for n in range(requests)]
        self.accepted: set[str] = set()
        self.probes = 0
        self.fault_at: float | None = None
        # Each process's lifecycle child serves its readiness on a port of its own.
        self.lifecycle_ports: dict[str, int] = {}
        self._probe: asyncio.Task[float]

    async def setup(self) -> None:
        await create_topics(self.settings)
        await migrate(self.settings)
        for product in PRODUCTS:
            await self.pipe.set_stock(product, STOCK)

    def stack(self, command: str) -> None:
        """Run ``scripts/stack.sh COMMAND`` of the checkout whose stack serves the sale."""
        subprocess.run(["bash", str(self.stack_root / "scripts" / "stack.sh"), command], check=True)

    def start(self, name: str = "run") -> None:
        """Start `orderstream run` as ``name``, with a data dir and ports of its own."""
        data = self.settings.data_dir / name
        data.mkdir(parents=True, exist_ok=True)
        self.lifecycle_ports[name] = free_port()
        self.pipe.start(
            "run",
            name,
            ORDERSTREAM_DATA_DIR=str(data),
            ORDERSTREAM_HTTP_PORT=str(free_port()),
            ORDERSTREAM_ORDERS_METRICS_PORT=str(self.lifecycle_ports[name]),
        )

    def fault(self) -> float:
        """Note that the fault happens now; return the time."""
        self.fault_at = time.monotonic()
        return self.fault_at

    async def lifecycle_ready(self) -> bool:
        """Whether the running processes' lifecycles own every order partition, restored."""
        ready = [
            await lifecycle_partitions_ready(port)
            for name, port in self.lifecycle_ports.items()
            if name in self.pipe.processes
        ]
        return sum(ready) >= self.settings.partitions

    async def ready(self) -> None:
        """Wait until the worker decided the stock, the sink wrote it and the lifecycle
        restored its partitions: a fault lands on a running pipeline."""

        async def stocked() -> bool:
            return await self.pipe.count("SELECT count(*) FROM product_stock") == len(PRODUCTS)

        await self.pipe.wait_for("the stock in PostgreSQL", stocked, 120, watch=None)
        await self.pipe.wait_for("the order lifecycle", self.lifecycle_ready, 120, watch=None)

    def family(self, name: str = "run") -> dict[int, str]:
        """Return the pids of process ``name`` and its children, with their commands."""
        return orderstream_family(self.pipe.processes[name].pid)

    def kill_lifecycle(self, name: str = "run") -> int:
        """kill -9 the lifecycle child (`orderstream orders`) of process ``name``; return
        its pid."""
        [pid] = [pid for pid, command in self.family(name).items() if command == "orders"]
        os.kill(pid, signal.SIGKILL)
        return pid

    async def lifecycle_restored(self, since: float, killed: int, name: str = "run") -> float:
        """Wait until a new lifecycle child of ``name`` (not ``killed``) has restored
        every order partition; return the seconds from ``since``."""

        async def restored() -> bool:
            children = [pid for pid, command in self.family(name).items() if command == "orders"]
            return bool(children) and killed not in children and await self.lifecycle_ready()

        await self.pipe.wait_for("the lifecycle restarted", restored, 120, watch=None)
        return time.monotonic() - since

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
        """Wait until every accepted order has its row in PostgreSQL (decided, maybe not
        final)."""

        async def all_there() -> bool:
            return await self.pipe.count("SELECT count(*) FROM orders") >= len(self.accepted)

        await self.pipe.wait_for("every order in PostgreSQL", all_there, timeout_s, watch=None)

    async def pending(self) -> dict[str, int]:
        """Return what keeps the sale from being settled: orders not in PostgreSQL yet,
        orders not final, products with stock still reserved (all 0 when settled)."""
        [row] = await self.pipe.query(
            "SELECT (SELECT count(*) FROM orders) AS known,"
            f" (SELECT count(*) FROM orders WHERE status NOT IN {TERMINAL}) AS open,"
            " (SELECT count(*) FROM product_stock WHERE reserved <> 0) AS held"
        )
        return {
            "orders missing": max(len(self.accepted) - int(row["known"]), 0),
            "orders not final": int(row["open"]),
            "products with stock reserved": int(row["held"]),
        }

    async def all_final(self, timeout_s: float = SETTLE_TIMEOUT_S) -> dict[str, int]:
        """Wait until every order is final and nothing is reserved, or the deadline, or a
        process of the sale exits; return what was still pending then."""
        deadline = time.monotonic() + timeout_s
        while True:
            pending = await self.pending()
            if not any(pending.values()) or time.monotonic() > deadline:
                return pending
            for name, process in self.pipe.processes.items():
                if process.poll() is not None:
                    pending[f"orderstream {name} exited {process.returncode}"] = 1
                    return pending
            await asyncio.sleep(0.25)

    async def settle(self, outcome: Outcome) -> None:
        """Once the fault is over: wait until every order is final, check the books, run
        `orderstream audit`; every fault ends here."""
        pending = await self.all_final()
        outcome.final = not any(pending.values())
        if outcome.final:
            outcome.final_s = time.monotonic() - (self.fault_at or time.monotonic())
        else:
            left = ", ".join(f"{what}: {n}" for what, n in pending.items() if n)
            # Where the lifecycle left them: RESERVED (no payment answer), PAID (no commit).
            for row in await self.pipe.query(
                f"SELECT status, count(*) AS n FROM orders WHERE status NOT IN {TERMINAL}"
                " GROUP BY status ORDER BY status"
            ):
                left += f", {row['status']}: {row['n']}"
            outcome.problems.append(
                f"not every order final within {SETTLE_TIMEOUT_S:.0f} s ({left})"
            )
        await self.books(outcome)
        await self.audit(outcome)

    async def books(self, outcome: Outcome) -> None:
        """Check what PostgreSQL shows against what was published: every order once, in
        one terminal state; each product's stock conserved, none reserved, and sold =
        the quantity its CONFIRMED lines bought."""
        outcome.requests = len(self.accepted)
        rows = await self.pipe.query("SELECT order_id FROM orders")
        seen = [row["order_id"] for row in rows]
        outcome.decided = len(set(seen) & self.accepted)
        outcome.lost = len(self.accepted - set(seen))
        outcome.duplicated = (len(seen) - len(set(seen))) + len(set(seen) - self.accepted)
        # Decided, or settled, twice: a status twice in an order's history (each of its
        # events has a status of its own), or two terminal states.
        outcome.duplicated += await self.pipe.count(
            "SELECT count(DISTINCT order_id) FROM ("
            " SELECT order_id FROM order_events GROUP BY order_id, status HAVING count(*) > 1"
            f" UNION SELECT order_id FROM order_events WHERE status IN {TERMINAL}"
            " GROUP BY order_id HAVING count(*) > 1) AS twice"
        )
        confirmed = {
            row["product_id"]: int(row["q"])
            for row in await self.pipe.query(
                "SELECT i.product_id, sum(i.quantity) AS q FROM orders o JOIN order_items i"
                " USING (order_id) WHERE o.status = 'CONFIRMED' GROUP BY 1"
            )
        }
        for row in await self.pipe.query("SELECT * FROM product_stock ORDER BY product_id"):
            level = (row["available"], row["reserved"], row["sold"])
            bought = confirmed.get(row["product_id"], 0)
            figures = (
                f"(available {level[0]}, reserved {level[1]}, sold {level[2]},"
                f" put in {row['total_in']})"
            )
            wrong = [
                *([] if sum(level) == row["total_in"] == STOCK else ["stock not conserved"]),
                *(["a figure negative"] if min(level) < 0 else []),
                *([f"sold {row['sold']}, CONFIRMED {bought}"] if row["sold"] != bought else []),
            ]
            if wrong:
                outcome.oversold += 1
                outcome.problems.append(f"{row['product_id']}: {', '.join(wrong)} {figures}")
            elif row["reserved"]:  # an order not final: the "every order final" column
                outcome.problems.append(
                    f"{row['product_id']}: {row['reserved']} reserved {figures}"
                )

    async def audit(self, outcome: Outcome) -> None:
        """Run `orderstream audit` on the deployment; note its exit and verdict."""
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
        lines = output.decode().splitlines()
        checks = [line for line in lines if line.startswith(("ok ", "FAIL "))]
        failed = [line for line in checks if line.startswith("FAIL")]
        outcome.audit_ok = audit.returncode == 0
        outcome.audit = (
            f"exit {audit.returncode}, {len(checks) - len(failed)} of {len(checks)} checks ok"
        )
        if not outcome.audit_ok:
            outcome.problems.append("orderstream audit: " + "; ".join(failed or lines[-3:])[:2000])

    async def drop(self) -> None:
        self.pipe.stop_all()
        await drop_deployment(self.settings)
