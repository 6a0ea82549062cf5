"""Run the pg-groupcommit baseline (bench/groupcommit.py) as its own process, and time it.

Two runs per workload, each on its own topic and schema:
- backlog: the whole workload is published first; the clock runs from the writer's
  ``ready`` (every consumer positioned, before the first fetch) to the COMMIT that
  completed the last order;
- live: the writer is ready first, then the workload is published as the same burst
  orderstream gets; the clock runs from the first send to that COMMIT. Then the latency
  phase: requests published open loop at the fixed rate, each timed from its scheduled
  send to its orders row seen by the poller.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from bench.baseline_common import (
    Connection,
    check_final_stock,
    check_orders,
    connect,
    load_products,
    products_stock,
    recreate_schema,
    server_settings,
)
from bench.groupcommit import MAX_BATCH, OFFSETS_DDL
from bench.kafka_load import create_topic, delete_topics, publish_burst, publish_paced
from bench.result import BACKLOG, Latency, Result
from bench.timing import POLL_INTERVAL_S, RowPoller, log, now, wait_for
from bench.workload import Workload, combine
from orderstream.settings import Settings
from orderstream.topics import ORDER_REQUESTS

SYSTEM = "pg-groupcommit"
LIVE = "burst (live)"
READY_TIMEOUT_S = 60.0


class Writer:
    """The group-commit writer process, and what it reported on stdout."""

    def __init__(self, settings: Settings, topic: str, schema: str, log_path: Path) -> None:
        self._command = [
            sys.executable,
            "-m",
            "bench.groupcommit",
            "--bootstrap",
            settings.kafka_bootstrap,
            "--topic",
            topic,
            "--partitions",
            str(settings.partitions),
            "--schema",
            schema,
        ]
        self._env = os.environ | {"BENCH_DATABASE_URL": settings.database_url.get_secret_value()}
        self._log_path = log_path
        self.ready_at: float | None = None
        self.committed = 0
        self.commits: list[tuple[float, int]] = []  # (time, orders committed so far)
        self.largest_batch = 0
        self.redone = 0  # batches redone because they held an order id decided before
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with self._log_path.open("wb") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                *self._command, env=self._env, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )
        self._reader = asyncio.create_task(self._read())
        deadline = now() + READY_TIMEOUT_S
        while self.ready_at is None:
            if self.dead():
                raise RuntimeError(f"{self.dead()}; see {self._log_path}")
            if now() > deadline:
                raise TimeoutError(f"the group-commit writer was not ready in {READY_TIMEOUT_S} s")
            await asyncio.sleep(0.01)

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            kind, at, *rest = line.decode().split()
            if kind == "ready":
                self.ready_at = float(at)
            elif kind == "commit":
                rows = int(rest[1])
                self.committed += rows
                self.largest_batch = max(self.largest_batch, rows)
                self.commits.append((float(at), self.committed))
            elif kind == "redo":
                self.redone += 1

    def dead(self) -> str | None:
        if self._process is not None and self._process.returncode is not None:
            return f"the group-commit writer (exit {self._process.returncode})"
        return None

    def committed_at(self, orders: int) -> float:
        """Return when the COMMIT that brought the count to ``orders`` completed."""
        return next(at for at, total in self.commits if total >= orders)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), 30)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def _check(conn: Connection, settings: Settings, topic: str, workload: Workload) -> list[str]:
    problems, reserved = await check_orders(conn, workload)
    problems += check_final_stock(workload, await products_stock(conn), reserved)
    # Exactly once also means: the offsets in PostgreSQL cover every published record.
    cursor = await conn.execute(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = %s", (topic,)
    )
    stored: dict[int, int] = dict(await cursor.fetchall())
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
    off = {p: (stored.get(p, 0), end) for p, end in ends.items() if stored.get(p, 0) != end}
    if off:
        problems.append(f"stored offsets != end offsets, (stored, end) {off}")
    return problems


async def _run(
    mode: str,
    workload: Workload,
    latency_workload: Workload | None,
    latency_rate: float,
    settings: Settings,
    workdir: Path,
) -> Result:
    run_id = f"g{uuid.uuid4().hex[:8]}"
    topic, schema = f"{run_id}.{ORDER_REQUESTS}", f"bench_{run_id}"
    url = settings.database_url.get_secret_value()
    label = f"{SYSTEM}/{workload.name} {mode}"
    everything = combine(workload, latency_workload) if latency_workload else workload
    await create_topic(settings.kafka_bootstrap, topic, settings.partitions)
    admin = await connect(url, schema)
    writer = Writer(settings, topic, schema, workdir / f"{run_id}-groupcommit.log")
    latency: list[float] = []
    max_send_lag = 0.0
    try:
        await recreate_schema(admin, schema)
        await load_products(admin, everything.stock)
        await admin.execute(OFFSETS_DDL)
        n = len(workload.requests)
        if mode == BACKLOG:
            await publish_burst(
                settings.kafka_bootstrap, topic, settings.partitions, workload.requests, label
            )
            await writer.start()
            assert writer.ready_at is not None
            started = writer.ready_at
        else:
            await writer.start()
            burst = await publish_burst(
                settings.kafka_bootstrap, topic, settings.partitions, workload.requests, label
            )
            started = burst.first_send
        await wait_for(label, "committed", n, lambda: writer.committed, writer.dead)
        elapsed = writer.committed_at(n) - started
        log(label, f"{n:,} committed in {elapsed:.3f} s: {n / elapsed:,.0f}/s")

        if latency_workload is not None:
            poller = RowPoller(url, schema, latency_workload.order_ids(), f"{label} latency")
            await poller.start()
            try:
                log(
                    label,
                    f"latency phase: {len(latency_workload.requests):,} at {latency_rate:,.0f}/s",
                )
                paced = await publish_paced(
                    settings.kafka_bootstrap, topic, latency_workload.requests, latency_rate, label
                )
                await poller.wait(writer.dead)
            finally:
                await poller.stop()
            latency = [poller.seen[o] - due for o, due in paced.scheduled.items()]
            max_send_lag = paced.max_send_lag_s
        problems = await _check(admin, settings, topic, everything)
        pg = await server_settings(admin)
    finally:
        await writer.stop()
        await admin.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        await admin.close()
        await delete_topics(settings.kafka_bootstrap, [topic])
    return Result(
        system=SYSTEM,
        workload=workload.name,
        mode=mode,
        requests=n,
        elapsed_s=elapsed,
        rate_per_s=n / elapsed,
        correct=not problems,
        latency_rate_per_s=latency_rate if latency_workload else None,
        latency_requests=len(latency_workload.requests) if latency_workload else 0,
        latency_to_pg=Latency.of(latency) if latency_workload else None,
        problems=problems,
        settings={
            "partitions": settings.partitions,
            "max_batch": MAX_BATCH,
            "largest_batch": writer.largest_batch,
            "transactions": len(writer.commits),
            "batches_redone_for_duplicates": writer.redone,
            "clock_starts_at": "writer ready" if mode == BACKLOG else "first send",
            **(
                {
                    "poll_interval_ms": POLL_INTERVAL_S * 1000,
                    "max_send_lag_ms": round(max_send_lag * 1000, 1),
                }
                if latency_workload
                else {}
            ),
            **pg,
        },
    )


async def run_pg_groupcommit(
    workload: Workload,
    latency_workload: Workload,
    latency_rate: float,
    settings: Settings,
    workdir: Path,
) -> list[Result]:
    """Measure the group-commit writer on a backlog, then live with a latency phase."""
    workdir.mkdir(parents=True, exist_ok=True)
    backlog = await _run(BACKLOG, workload, None, latency_rate, settings, workdir)
    live = await _run(LIVE, workload, latency_workload, latency_rate, settings, workdir)
    return [live, backlog]
