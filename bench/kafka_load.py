"""Publish a workload's requests on ``order-requests``: a burst, or open loop at a fixed rate.

Both Kafka-fed systems (orderstream and pg-groupcommit) get their requests from these two
functions: the same keys, partitions and JSON as any producer of the public contract.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.timing import Progress, at, log, now
from bench.workload import Request
from orderstream.agents.stock.batcher import RecordBatcher
from orderstream.domain import owner_partition

BURST_CHUNK = 5_000


def encode(request: Request) -> bytes:
    """Return the request's ``order-requests`` value (the public JSON contract)."""
    return json.dumps(
        {
            "order_id": request.order_id,
            "user_id": request.user_id,
            "product_id": request.product_id,
            "quantity": request.quantity,
        }
    ).encode()


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, max_batch_size=65536)


@dataclass
class Burst:
    """When a burst's first request was handed to the producer, and its last acknowledged."""

    first_send: float
    last_acked: float


async def publish_burst(
    bootstrap: str, topic: str, partitions: int, requests: list[Request], label: str
) -> Burst:
    """Publish a flash-sale burst: whole record batches per partition, as fast as possible.

    Building batches (``send_batch``) instead of one ``send`` per record keeps the load
    generator's share of the shared CPUs small; the records are the same.
    """
    producer = _producer(bootstrap)
    await producer.start()
    try:
        owners: dict[str, int] = {}
        first_send = now()
        for start in range(0, len(requests), BURST_CHUNK):
            batcher = RecordBatcher(partitions)
            for request in requests[start : start + BURST_CHUNK]:
                partition = owners.get(request.product_id)
                if partition is None:
                    partition = owners[request.product_id] = owner_partition(
                        request.product_id, partitions
                    )
                batcher.add(topic, request.product_id.encode(), encode(request), partition)
            await asyncio.gather(*await batcher.send(producer))
        last_acked = now()
    finally:
        await producer.stop()
    log(label, f"published {len(requests):,} requests in {last_acked - first_send:.2f} s (burst)")
    return Burst(first_send, last_acked)


@dataclass
class Paced:
    """The scheduled send time of each request, and how late the publisher ever was."""

    scheduled: dict[str, float]
    max_send_lag_s: float


async def publish_paced(
    bootstrap: str, topic: str, requests: list[Request], rate_per_s: float, label: str
) -> Paced:
    """Publish open loop at a fixed rate: request n is due at start + n / rate.

    Latency is counted from the due time, not from when the send happened, so a load
    generator that falls behind shows up in the figures instead of hiding them.
    """
    producer = _producer(bootstrap)
    await producer.start()
    scheduled: dict[str, float] = {}
    pending: list[asyncio.Future[Any]] = []
    max_lag = 0.0
    try:
        start = now() + 0.05
        n = 0
        async with Progress(label, "sent", len(requests), lambda: n):
            while n < len(requests):
                await at(start + n / rate_per_s)
                # Send every request that is due: a late wake-up never drops the rate.
                while n < len(requests) and (due := start + n / rate_per_s) <= now():
                    request = requests[n]
                    scheduled[request.order_id] = due
                    max_lag = max(max_lag, now() - due)
                    pending.append(
                        await producer.send(
                            topic, key=request.product_id.encode(), value=encode(request)
                        )
                    )
                    n += 1
                if len(pending) >= BURST_CHUNK:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return Paced(scheduled, max_lag)


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create one topic and wait until its metadata shows every partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        for _ in range(150):
            described = await admin.describe_topics([topic])
            if (
                described
                and not described[0]["error_code"]
                and len(described[0]["partitions"]) == partitions
            ):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"topic {topic} did not appear with {partitions} partitions")
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete topics that a run created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()
