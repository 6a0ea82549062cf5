"""orderstream under load: a worker process and a sink process on the real stack.

Two phases per workload, in one deployment with its own topics, groups and schema:
1. throughput: the whole workload is published as a burst while the worker runs. The
   rate is requests / (first send -> the poller first sees every order in PostgreSQL);
   beside it, requests / (first send -> the bench's consumer sees the last decision
   event on order-events), labelled as the rate at the decision topic;
2. latency: fresh requests of the same shape, published open loop at the fixed rate, each
   timed from its scheduled send to its orders row seen by the poller, and to its
   decision event seen by the bench's consumer.
Then worker RSS at start and end, and the invariants (no oversell, every request decided
once, stock conserved) checked in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.kafka_load import publish_burst, publish_paced
from bench.result import Latency, Result
from bench.timing import POLL_INTERVAL_S, RowPoller, log, now, wait_for
from bench.workload import Workload, combine
from orderstream.admin import create_topics, delete_topics
from orderstream.db import connection_kwargs
from orderstream.domain import StockOperation
from orderstream.producer import publish_stock_commands
from orderstream.settings import Settings
from orderstream.sink import drop_schema, migrate
from orderstream.topics import ORDER_EVENTS, ORDER_REQUESTS, StockCommand

SYSTEM = "orderstream"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
    utime, stime = fields.split()[11:13]  # fields 14 and 15 of proc(5)
    return float(int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def orderstream_family(pid: int) -> dict[int, str]:
    """Return process ``pid`` and every process it started, each with its orderstream
    command (``orderstream run`` starts the lifecycle as ``orderstream orders``)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue  # gone meanwhile
    family: dict[int, str] = {}
    todo = [pid]
    while todo:
        member = todo.pop()
        todo += [child for child, parent in parents.items() if parent == member]
        try:
            argv = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
            family[member] = argv[argv.index(b"orderstream") + 1].decode()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not an orderstream process
    return family


async def lifecycle_partitions_ready(port: int) -> float:
    """Return the order partitions the lifecycle serving metrics on ``port`` has
    restored (its readiness gauge); 0 while it does not answer."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
    except aiohttp.ClientError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("orderstream_lifecycle_partitions_ready ")
    )


def isolated(base: Settings, run_id: str, workdir: Path, **updates: Any) -> Settings:
    """Return ``base`` with topics, groups, schema and data of run ``run_id`` alone (and
    ``updates``): a throwaway deployment beside any other on the same stack."""
    own = {
        "topic_prefix": f"{run_id}.",
        "app_id": f"orderstream-{run_id}",
        "sink_group": f"sink-{run_id}",
        "database_schema": run_id,
        "data_dir": workdir / run_id,
    }
    return base.model_copy(update=own | updates)


@dataclass
class Deployment:
    """One isolated orderstream deployment: settings and its worker and sink processes."""

    settings: Settings
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    async def create(cls, base: Settings, workdir: Path) -> Deployment:
        settings = isolated(base, f"b{uuid.uuid4().hex[:8]}", workdir, log_level="WARNING")
        await create_topics(settings)
        await migrate(settings)
        return cls(settings, workdir)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSTREAM_")}
        return env | self.settings.to_env()

    def start(self, role: str) -> None:
        out = self.log(role).open("wb")
        command = [sys.executable, "-m", "orderstream", role]
        # BENCH_PROFILE=<file> (BENCH_PROFILE_ROLE: worker unless set): cProfile one role.
        profile = os.environ.get("BENCH_PROFILE")
        if profile and role == os.environ.get("BENCH_PROFILE_ROLE", "worker"):
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

    def cpu_s(self, role: str) -> float:
        """Return the CPU seconds (user + system) a role's process has used so far."""
        return _cpu_s(self.processes[role].pid)

    def cpu_by_command(self, role: str) -> dict[str, float]:
        """Return the CPU seconds of a role's process and of each process it started,
        by their orderstream command (``orderstream run`` starts one per role)."""
        spent: dict[str, float] = {}
        for pid, command in orderstream_family(self.processes[role].pid).items():
            try:
                spent[command] = spent.get(command, 0.0) + _cpu_s(pid)
            except (OSError, ValueError):
                continue  # gone meanwhile
        return spent

    def alive(self, role: str) -> bool:
        return self.processes[role].poll() is None

    def dead(self) -> str | None:
        """Name a process of the deployment that has exited, if one has."""
        for role, process in self.processes.items():
            if process.poll() is not None:
                return f"orderstream {role} (exit {process.returncode}; see {self.log(role)})"
        return None

    def log(self, role: str) -> Path:
        return self.workdir / f"{self.settings.app_id}-{role}.log"

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
        await drop_deployment(self.settings)

    async def scalar(self, sql: str) -> int:
        async with await psycopg.AsyncConnection.connect(
            self.settings.database_url.get_secret_value(), **connection_kwargs(self.settings)
        ) as conn:
            row = await (await conn.execute(sql)).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    async def lifecycle_ready(self) -> bool:
        """Whether the lifecycle owns every order partition, its table restored (its
        readiness gauge, as an operator would wait for it before a drop)."""
        ready = await lifecycle_partitions_ready(self.settings.orders_metrics_port)
        return ready >= self.settings.partitions

    async def wait_until(self, what: str, check: Any, timeout_s: float = 300.0) -> None:
        deadline = now() + timeout_s
        while not await check():
            for role in self.processes:
                if not self.alive(role):
                    raise RuntimeError(f"orderstream {role} died waiting for {what}")
            if now() > deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(0.1)


class DecisionWatcher:
    """Read order-events from the start and note when the bench first saw each order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[str, float] = {}
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
            seen_at = now()
            for records in batches.values():
                for record in records:
                    # order-events are keyed by order id; an order's first event is its
                    # decision (the benchmark runs no payment, so there is one per order).
                    self.seen.setdefault(record.key.decode(), seen_at)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


async def set_stock(deployment: Deployment, stock: dict[str, int]) -> None:
    commands = [
        StockCommand(product_id=product_id, operation=StockOperation.SET, quantity=quantity)
        for product_id, quantity in stock.items()
    ]
    await publish_stock_commands(deployment.settings, commands)
    await deployment.wait_until(
        "stock to reach PostgreSQL",
        lambda: _count_reaches(deployment, "SELECT count(*) FROM product_stock", len(stock)),
    )


async def _count_reaches(deployment: Deployment, sql: str, expected: int) -> bool:
    return await deployment.scalar(sql) >= expected


async def check_correct(deployment: Deployment, workload: Workload) -> list[str]:
    """Check PostgreSQL against the workload: one order and one event per request, stock."""
    problems = []
    requests = len(workload.requests)
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
    found = set()
    for product_id, available, reserved, sold, total_in in rows:
        if product_id not in workload.stock:
            continue
        found.add(product_id)
        if (
            available + reserved + sold != workload.stock[product_id]
            or total_in != workload.stock[product_id]
        ):
            problems.append(f"{product_id}: stock not conserved")
        if reserved != expected[product_id]:
            problems.append(f"{product_id}: reserved {reserved}, expected {expected[product_id]}")
    if len(found) != len(workload.stock):
        problems.append(f"{len(workload.stock) - len(found)} products missing in product_stock")
    return problems


async def run_orderstream(
    workload: Workload,
    latency_workload: Workload,
    latency_rate: float,
    base: Settings,
    workdir: Path,
) -> Result:
    """Measure orderstream on ``workload``: rate to PostgreSQL, then latency at a fixed rate."""
    workdir.mkdir(parents=True, exist_ok=True)
    label = f"{SYSTEM}/{workload.name}"
    everything = combine(workload, latency_workload)
    n, n_lat = len(workload.requests), len(latency_workload.requests)
    deployment = await Deployment.create(base, workdir)
    settings = deployment.settings
    url = settings.database_url.get_secret_value()
    topic = settings.topic(ORDER_REQUESTS)
    watcher = DecisionWatcher(settings)
    pollers: list[RowPoller] = []
    try:
        deployment.start("worker")
        deployment.start("sink")
        log(label, f"setting stock of {len(everything.stock)} products")
        await set_stock(deployment, everything.stock)
        rss_start = deployment.rss_mib("worker")
        await watcher.start()
        # The sink is the orders table's one writer, a transaction at a time: new rows
        # are the heap's new tuples, read without reading the earlier ones again.
        throughput = RowPoller(
            url, settings.database_schema, workload.order_ids(), label, appended=True
        )
        pollers.append(throughput)
        await throughput.start()

        cpu_start = {role: deployment.cpu_s(role) for role in ("worker", "sink")}
        burst = await publish_burst(
            settings.kafka_bootstrap, topic, settings.partitions, workload.requests, label
        )
        await wait_for(label, "decision events", n, lambda: len(watcher.seen), deployment.dead)
        last_decision = max(watcher.seen[order_id] for order_id in workload.order_ids())
        pg_done = await throughput.wait(deployment.dead)
        elapsed, to_topic_s = pg_done - burst.first_send, last_decision - burst.first_send
        # CPU per order of each process over the burst: less at the mercy of what else
        # runs on the machine than a rate is.
        cpu_us = {
            role: (deployment.cpu_s(role) - start) * 1e6 / n for role, start in cpu_start.items()
        }
        log(
            label,
            f"{n / elapsed:,.0f}/s to PostgreSQL ({elapsed:.2f} s), "
            f"{n / to_topic_s:,.0f}/s to the decision topic ({to_topic_s:.2f} s); "
            f"CPU per order: worker {cpu_us['worker']:.1f} us, sink {cpu_us['sink']:.1f} us",
        )

        latency = RowPoller(url, settings.database_schema, latency_workload.order_ids(), label)
        pollers.append(latency)
        await latency.start()
        log(label, f"latency phase: {n_lat:,} requests at {latency_rate:,.0f}/s")
        paced = await publish_paced(
            settings.kafka_bootstrap, topic, latency_workload.requests, latency_rate, label
        )
        await wait_for(
            label, "decision events", n + n_lat, lambda: len(watcher.seen), deployment.dead
        )
        await latency.wait(deployment.dead)
        to_pg = [latency.seen[o] - due for o, due in paced.scheduled.items()]
        to_decision = [watcher.seen[o] - due for o, due in paced.scheduled.items()]
        rss_end = deployment.rss_mib("worker")
        problems = await check_correct(deployment, everything)
    finally:
        for poller in pollers:
            await poller.stop()
        await watcher.stop()
        await deployment.stop()

    return Result(
        system=SYSTEM,
        workload=workload.name,
        mode="burst (live)",
        requests=n,
        elapsed_s=elapsed,
        rate_per_s=n / elapsed,
        correct=not problems,
        decision_rate_per_s=n / to_topic_s,
        latency_rate_per_s=latency_rate,
        latency_requests=n_lat,
        latency_to_pg=Latency.of(to_pg),
        latency_to_decision=Latency.of(to_decision),
        problems=problems,
        settings={
            "partitions": base.partitions,
            "batch_max_records": base.batch_max_records,
            "commit_interval_s": base.commit_interval_s,
            "sink_batch_max": base.sink_batch_max,
            "sink_batch_wait_ms": base.sink_batch_wait_ms,
            "poll_interval_ms": POLL_INTERVAL_S * 1000,
            # Rows the pollers read (out-of-order rows are read again): their load on PG.
            "poll_rows_read": [poller.rows_read for poller in pollers],
            "polls": [poller.polls for poller in pollers],
            # Rows the throughput phase's appended reads missed (found by id, late): 0.
            "poll_rows_swept": throughput.swept,
            "burst_publish_s": round(burst.last_acked - burst.first_send, 3),
            "pg_after_last_decision_event_s": round(pg_done - last_decision, 3),
            "max_send_lag_ms": round(paced.max_send_lag_s * 1000, 1),
            "worker_cpu_us_per_order": round(cpu_us["worker"], 1),
            "sink_cpu_us_per_order": round(cpu_us["sink"], 1),
            "worker_rss_mib_start": round(rss_start, 1),
            "worker_rss_mib_end": round(rss_end, 1),
        },
    )


async def drop_deployment(settings: Settings) -> None:
    """Delete a deployment's topics (those that exist) and its PostgreSQL schema."""
    await delete_topics(settings)
    await drop_schema(settings)
