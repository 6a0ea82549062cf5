"""Drive a real orderstream process from a test: start, kill, publish, query, wait."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from psycopg.rows import dict_row

from orderstream.db import connection_kwargs
from orderstream.producer import publish_stock_command
from orderstream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# For tests that kill -9 a process and start another in its place, which gets the dead
# member's partitions once its session times out (10 s by default): 5 s halves that wait
# and stays well above the heartbeats (a fifth of it) on a machine busy with other tests.
# The local stack allows sessions from 2 s (group.min.session.timeout.ms).
SHORT_SESSION_S = 5.0
SHORT_SESSION = {"ORDERSTREAM_SESSION_TIMEOUT_S": str(SHORT_SESSION_S)}


class Pipeline:
    """One test's orderstream deployment: its settings, processes, and probes."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._starts = 0

    # --- processes -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSTREAM_")}
        return env | self.settings.to_env()

    def start(
        self, command: str = "run", name: str | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start ``orderstream COMMAND`` in the background, logging to the test's folder.

        ``name`` (default: the command) tells several processes of one command apart;
        ``env`` adds environment variables (settings) for this process only.
        """
        self._starts += 1
        name = name or command
        log = (self.workdir / f"{name}-{self._starts}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "orderstream", command],
            env=self.env() | env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = process
        return process

    def kill(self, command: str = "run") -> None:
        """kill -9 a process: no shutdown, no final commit."""
        process = self.processes.pop(command)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, command: str = "run") -> None:
        """Stop a process the way an operator does (SIGTERM), and wait for it."""
        process = self.processes.pop(command)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for command in list(self.processes):
            self.kill(command)

    def alive(self, command: str = "run") -> bool:
        return self.processes[command].poll() is None

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}"
            for path in sorted(self.workdir.glob("*.log"))
        )

    # --- Kafka ------------------------------------------------------------------------

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    async def set_stock(self, product_id: str, quantity: int) -> None:
        await publish_stock_command(self.settings, product_id, "set", quantity)

    async def producer(self) -> AIOKafkaProducer:
        """A plain aiokafka producer, as any shop back end would use."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, linger_ms=5)
        await producer.start()
        return producer

    async def publish(
        self, messages: Iterable[tuple[bytes | None, bytes | None]], partition: int | None = None
    ) -> None:
        """Publish (key, value) pairs to order-requests with a plain producer, in order."""
        producer = await self.producer()
        try:
            topic = self.topic("order-requests")
            sends = [
                await producer.send(topic, key=key, value=value, partition=partition)
                for key, value in messages
            ]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    async def read_topic(self, name: str, *, prefixed: bool = True) -> list[Any]:
        """Read a topic from its beginning to its current end (no consumer group).

        ``name`` gets the deployment's topic prefix unless ``prefixed`` is false.
        """
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        try:
            topic = self.topic(name) if prefixed else name
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = [
                    TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
                ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            records: list[Any] = []
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                for items in batch.values():
                    records.extend(items)
            return records
        finally:
            await consumer.stop()

    # --- PostgreSQL -------------------------------------------------------------------

    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        async with (
            await psycopg.AsyncConnection.connect(
                self.settings.database_url.get_secret_value(), **connection_kwargs(self.settings)
            ) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(sql, tuple(params))  # type: ignore[arg-type]
            return await cur.fetchall()

    async def count(self, sql: str, params: Iterable[Any] = ()) -> int:
        rows = await self.query(sql, params)
        return int(next(iter(rows[0].values())))

    async def wait_for(
        self,
        what: str,
        check: Callable[[], Awaitable[bool]],
        timeout: float = 120.0,
        watch: str | None = "run",
    ) -> None:
        """Poll ``check`` until it holds; fail with the processes' logs at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if await check():
                return
            if watch and watch in self.processes and not self.alive(watch):
                raise AssertionError(f"orderstream {watch} died waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}\n{self.logs()}"
                )
            await asyncio.sleep(0.25)

    async def wait_for_status_service(self, timeout: float = 60.0) -> str:
        """Wait until the status service answers /readyz with 200; return its base URL."""
        base = f"http://127.0.0.1:{self.settings.http_port}"

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await self.wait_for("the status service to be ready", ready, timeout)
        return base

    async def wait_for_stock(self, product_id: str, total_in: int, timeout: float = 120.0) -> None:
        async def applied() -> bool:
            rows = await self.query(
                "SELECT total_in FROM product_stock WHERE product_id = %s", (product_id,)
            )
            return bool(rows) and rows[0]["total_in"] == total_in

        await self.wait_for(f"stock of {product_id} to reach {total_in}", applied, timeout)

    async def wait_for_orders(self, count: int, timeout: float = 180.0) -> None:
        async def decided() -> bool:
            return await self.count("SELECT count(*) FROM orders") >= count

        await self.wait_for(f"{count} orders in PostgreSQL", decided, timeout)


def request_json(order_id: str, user_id: str, product_id: str, quantity: int = 1) -> bytes:
    return json.dumps(
        {"order_id": order_id, "user_id": user_id, "product_id": product_id, "quantity": quantity}
    ).encode()
