"""orderstream under load: a worker process and a sink process on the real stack.

Two phases per workload, each on its own topics, group and schema:
1. throughput: publish the whole workload as fast as one producer can while the worker
   runs; the rate is measured over the middle 80 % of decisions (warm-up and tail cut);
2. latency: publish fresh requests at a fixed rate (default: half the measured
   throughput) and time each one from its send to the bench seeing its decision event.
Then: how long until PostgreSQL shows the last decision, worker RSS at start and end,
and the invariants (no oversell, every request decided once) checked in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.result import Result, percentile, summarize
from bench.workload import Request, Workload
from orderstream.admin import all_topic_specs, create_topics
from orderstream.agents.outbox import Outbox
from orderstream.db import connection_kwargs
from orderstream.domain import owner_partition
from orderstream.producer import publish_stock_commands
from orderstream.settings import Settings
from orderstream.sink import migrate
from orderstream.topics import ORDER_EVENTS, ORDER_REQUESTS

PROGRESS_EVERY_S = 5.0
# The row each worker engine gets in the results.
SYSTEM_NAMES = {"faust": "orderstream-faust", "batch": "orderstream-batch"}


def log(message: str) -> None:
    print(f"[orderstream] {message}", file=sys.stderr, flush=True)


@dataclass
class Deployment:
    """One isolated orderstream deployment: settings and its worker and sink processes."""

    settings: Settings
    workdir: Path
    engine: str = "faust"  # ORDERSTREAM_WORKER_ENGINE: "faust" or "batch"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    async def create(cls, base: Settings, workdir: Path, engine: str = "faust") -> Deployment:
        run_id = f"b{uuid.uuid4().hex[:8]}"
        settings = base.model_copy(
            update={
                "topic_prefix": f"{run_id}.",
                "app_id": f"orderstream-{run_id}",
                "sink_group": f"sink-{run_id}",
                "database_schema": run_id,
                "data_dir": workdir / run_id,
                "log_level": "WARNING",
                "worker_engine": engine,
            }
        )
        await create_topics(settings)
        await migrate(settings)
        return cls(settings, workdir, engine)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSTREAM_")}
        return env | self.settings.to_env()

    def start(self, role: str) -> None:
        out = (self.workdir / f"{self.settings.app_id}-{role}.log").open("wb")
        command = [sys.executable, "-m", "orderstream", role]
        profile = os.environ.get("BENCH_PROFILE_WORKER")
        if profile and role == "worker":
            # cProfile writes its stats when the worker exits on SIGTERM (at the end).
            command = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "orderstream", role]
        self.processes[role] = subprocess.Popen(
            command,
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def rss_mib(self, role: str) -> float:
        status = Path(f"/proc/{self.processes[role].pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return kib / 1024

    def alive(self, role: str) -> bool:
        return self.processes[role].poll() is None

    async def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        await self._drop()

    async def _drop(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            names = [spec.name for spec in all_topic_specs(self.settings)]
            await admin.delete_topics(names)
        finally:
            await admin.close()
        async with await psycopg.AsyncConnection.connect(
            self.settings.database_url.get_secret_value(), autocommit=True
        ) as conn:
            await conn.execute(
                psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(
                    psycopg.sql.Identifier(self.settings.database_schema)
                )
            )

    async def scalar(self, sql: str) -> int:
        async with await psycopg.AsyncConnection.connect(
            self.settings.database_url.get_secret_value(), **connection_kwargs(self.settings)
        ) as conn:
            row = await (await conn.execute(sql)).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    async def wait_until(self, what: str, check: Any, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await check():
            for role in self.processes:
                if not self.alive(role):
                    raise RuntimeError(f"orderstream {role} died waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(0.1)


class DecisionWatcher:
    """Read order-events from the start and note when each order's decision arrived."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[str, float] = {}
        # When the worker produced each decision (the record's Kafka timestamp): latency
        # up to here excludes the bench's own consumer, which shares the CPUs.
        self.produced: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=5,  # latency is what we measure: do not let fetches idle
        )
        await self._consumer.start()
        topic = self.settings.topic(ORDER_EVENTS)
        partitions = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=50, max_records=5000)
            now = time.time()
            for records in batches.values():
                for record in records:
                    order_id = record.key.decode()  # order-events are keyed by order id
                    self.seen.setdefault(order_id, now)
                    self.produced.setdefault(order_id, record.timestamp / 1000)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self._consumer.stop()


async def set_stock(deployment: Deployment, stock: dict[str, int]) -> None:
    commands = [(product_id, "set", quantity) for product_id, quantity in stock.items()]
    await publish_stock_commands(deployment.settings, commands)
    await deployment.wait_until(
        "stock to reach PostgreSQL",
        lambda: _count_reaches(deployment, "SELECT count(*) FROM product_stock", len(stock)),
    )


async def _count_reaches(deployment: Deployment, sql: str, expected: int) -> bool:
    return await deployment.scalar(sql) >= expected


def encode(request: Request) -> bytes:
    return json.dumps(
        {
            "order_id": request.order_id,
            "user_id": request.user_id,
            "product_id": request.product_id,
            "quantity": request.quantity,
        }
    ).encode()


async def publish(
    settings: Settings, requests: list[Request], rate_per_s: float | None
) -> dict[str, float]:
    """Publish requests (as fast as possible, or paced); return each one's send time."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=2, max_batch_size=65536
    )
    await producer.start()
    try:
        if rate_per_s is None:
            return await _publish_burst(producer, settings, requests)
        return await _publish_paced(producer, settings, requests, rate_per_s)
    finally:
        await producer.stop()


async def _publish_burst(
    producer: AIOKafkaProducer, settings: Settings, requests: list[Request]
) -> dict[str, float]:
    """A flash-sale burst: whole record batches per partition, as fast as one producer can.

    Building batches (``send_batch``) instead of one ``send`` per record keeps the load
    generator's share of the shared CPUs small; the records are the same.
    """
    topic = settings.topic(ORDER_REQUESTS)
    sent: dict[str, float] = {}
    owners: dict[str, int] = {}
    for start in range(0, len(requests), 5000):
        outbox = Outbox(settings.partitions)
        for request in requests[start : start + 5000]:
            partition = owners.get(request.product_id)
            if partition is None:
                partition = owners[request.product_id] = owner_partition(
                    request.product_id, settings.partitions
                )
            sent[request.order_id] = time.time()
            outbox.add(topic, request.product_id.encode(), encode(request), partition)
        await asyncio.gather(*await outbox.send(producer))
        if start and start % 50_000 == 0:
            log(f"published {start}/{len(requests)}")
    return sent


async def _publish_paced(
    producer: AIOKafkaProducer, settings: Settings, requests: list[Request], rate_per_s: float
) -> dict[str, float]:
    """Publish at a fixed rate, one send per request, timing each from its send."""
    sent: dict[str, float] = {}
    topic = settings.topic(ORDER_REQUESTS)
    started = time.monotonic()
    last_report = started
    pending = []
    for n, request in enumerate(requests):
        # Open-loop pacing: request n leaves at started + n / rate, whatever the worker
        # does, so queueing shows up in the latency instead of hiding.
        delay = started + n / rate_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[request.order_id] = time.time()
        pending.append(
            await producer.send(topic, key=request.product_id.encode(), value=encode(request))
        )
        if len(pending) >= 5000:
            await asyncio.gather(*pending)
            pending.clear()
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            last_report = time.monotonic()
            log(f"published {n + 1}/{len(requests)}")
    await asyncio.gather(*pending)
    return sent


async def wait_for_decisions(
    deployment: Deployment, watcher: DecisionWatcher, expected: int
) -> None:
    last_report = time.monotonic()

    async def done() -> bool:
        nonlocal last_report
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            last_report = time.monotonic()
            log(f"decided {len(watcher.seen)}/{expected}")
        return len(watcher.seen) >= expected

    await deployment.wait_until(f"{expected} decisions", done, timeout_s=900)


def sustained_rate(decided_at: list[float]) -> float:
    """Decisions per second over the middle 80 % (drops warm-up and the tail)."""
    times = sorted(decided_at)
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9) - 1
    span = times[hi] - times[lo]
    return (hi - lo) / span if span > 0 else float("nan")


async def check_correct(deployment: Deployment, workload: Workload, requests: int) -> list[str]:
    problems = []
    orders = await deployment.scalar("SELECT count(*) FROM orders")
    if orders != requests:
        problems.append(f"{orders} orders in PostgreSQL, expected {requests}")
    events = await deployment.scalar("SELECT count(*) FROM order_events")
    if events != requests:
        problems.append(f"{events} order events in PostgreSQL, expected {requests}")
    async with await psycopg.AsyncConnection.connect(
        deployment.settings.database_url.get_secret_value(),
        **connection_kwargs(deployment.settings),
    ) as conn:
        rows = await (
            await conn.execute(
                "SELECT product_id, available, reserved, sold, total_in FROM product_stock"
            )
        ).fetchall()
    expected = workload.expected_reserved()
    for product_id, available, reserved, sold, total_in in rows:
        if product_id not in workload.stock:
            continue
        if (
            available + reserved + sold != workload.stock[product_id]
            or total_in != workload.stock[product_id]
        ):
            problems.append(f"{product_id}: stock not conserved")
        if reserved != expected[product_id]:
            problems.append(f"{product_id}: reserved {reserved}, expected {expected[product_id]}")
    return problems


async def run_orderstream(
    workload: Workload,
    base: Settings,
    workdir: Path,
    latency_requests: int,
    latency_rate: float | None = None,
    engine: str = "faust",
) -> Result:
    """Measure orderstream on ``workload``: throughput, latency at half of it, PG lag."""
    workdir.mkdir(parents=True, exist_ok=True)
    deployment = await Deployment.create(base, workdir, engine)
    watcher = DecisionWatcher(deployment.settings)
    try:
        deployment.start("worker")
        deployment.start("sink")
        log(f"{workload.name}: setting stock of {len(workload.stock)} products")
        await set_stock(deployment, workload.stock)
        rss_start = deployment.rss_mib("worker")
        await watcher.start()

        log(f"{workload.name}: publishing {len(workload.requests)} requests, full speed")
        await publish(deployment.settings, workload.requests, rate_per_s=None)
        await wait_for_decisions(deployment, watcher, len(workload.requests))
        last_decision = max(watcher.seen.values())
        throughput = sustained_rate(list(watcher.seen.values()))
        await deployment.wait_until(
            "the sink to write every decision",
            lambda: _count_reaches(
                deployment, "SELECT count(*) FROM orders", len(workload.requests)
            ),
        )
        pg_visible_s = time.time() - last_decision
        problems = await check_correct(deployment, workload, len(workload.requests))
        log(f"{workload.name}: {throughput:.0f} decisions/s sustained; PG +{pg_visible_s:.2f} s")

        # Latency at a fixed rate, on a fresh product with plenty of stock.
        rate = latency_rate or max(100.0, throughput / 2)
        lat_requests = [
            Request(f"lat-{n}", f"lat-user-{n}", "latency-1") for n in range(latency_requests)
        ]
        await set_stock(deployment, {"latency-1": latency_requests})
        log(f"{workload.name}: latency phase, {latency_requests} requests at {rate:.0f}/s")
        sent = await publish(deployment.settings, lat_requests, rate_per_s=rate)
        await wait_for_decisions(deployment, watcher, len(workload.requests) + latency_requests)
        latencies = [watcher.seen[order_id] - t for order_id, t in sent.items()]
        to_record = sorted(watcher.produced[order_id] - t for order_id, t in sent.items())
        rss_end = deployment.rss_mib("worker")
    finally:
        await watcher.stop()
        await deployment.stop()

    result = summarize(
        SYSTEM_NAMES[engine],
        workload.name,
        latencies,
        elapsed_s=len(workload.requests) / throughput,
        correct=not problems,
        problems=problems,
        settings={
            "partitions": base.partitions,
            "commit_interval_s": base.commit_interval_s,
            "producer_linger_ms": base.producer_linger_ms,
            "latency_rate_per_s": round(rate),
            "latency_requests": latency_requests,
            # Send -> the decision record's timestamp (the worker's clock, same machine).
            "p50_ms_to_decision_record": round(percentile(to_record, 50) * 1000, 1),
            "p99_ms_to_decision_record": round(percentile(to_record, 99) * 1000, 1),
            "pg_visible_after_last_decision_s": round(pg_visible_s, 3),
            "worker_rss_mib_start": round(rss_start, 1),
            "worker_rss_mib_end": round(rss_end, 1),
        },
    )
    result.decisions_per_s = throughput
    result.requests = result.decisions = len(workload.requests)
    return result
