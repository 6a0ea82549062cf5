"""Records grouped by topic and partition, handed to the producer as whole Kafka batches.

The batch engine decides hundreds of records at once; sending each through
``AIOKafkaProducer.send`` costs a future, a partitioner call and a lookup per record, and
with no linger the producer ships tiny requests. Building one Kafka record batch per
(topic, partition) and submitting it with ``send_batch`` costs an append per record and
needs no linger at all: the batch is complete when it is handed over.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from orderstream.domain import key_partition

Headers = list[tuple[str, bytes]]  # aiokafka's C batch builder takes a list, nothing else
_NO_HEADERS: Headers = []  # shared, never mutated


class RecordBatcher:
    """Records waiting to be sent, in order per (topic, partition)."""

    def __init__(self, partitions: int) -> None:
        self._partitions = partitions  # of every topic (checked at start)
        self._records: dict[
            tuple[str, int], list[tuple[bytes | None, bytes | None, Headers, int | None]]
        ]
        self._records = {}

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        *,
        headers: Headers | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue a record; with no partition, Kafka's default partitioner picks it by key.

        With no timestamp, the record is stamped when it is sent.
        """
        if partition is None:
            partition = key_partition(key, self._partitions) if key is not None else 0
        self._records.setdefault((topic, partition), []).append(
            (key, value, headers or _NO_HEADERS, timestamp_ms)
        )

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    async def send(self, producer: AIOKafkaProducer) -> list[asyncio.Future[Any]]:
        """Submit every queued record; return the futures of their delivery."""
        sent = []
        for (topic, partition), records in self._records.items():
            builder = producer.create_batch()
            for key, value, headers, ts in records:
                if builder.append(timestamp=ts, key=key, value=value, headers=headers) is None:
                    sent.append(await _submit(producer, builder, topic, partition))
                    builder = producer.create_batch()
                    if builder.append(timestamp=ts, key=key, value=value, headers=headers) is None:
                        raise MessageSizeTooLargeError(f"a record for {topic} exceeds a batch")
            sent.append(await _submit(producer, builder, topic, partition))
        self._records.clear()
        return sent


async def _submit(
    producer: AIOKafkaProducer, builder: Any, topic: str, partition: int
) -> asyncio.Future[Any]:
    # A closed batch is complete: the producer sends it at once instead of lingering.
    builder.close()
    sent: asyncio.Future[Any] = await producer.send_batch(builder, topic, partition=partition)
    return sent
