"""Every Kafka client orderstream makes, built from the Settings with its rules written once.

- A durable producer: acknowledged by every in-sync replica, idempotent (a retry never
  reorders or doubles a partition's records, which a changelog's restore relies on).
- A group member: committed by hand after its effects, starting from the earliest
  record, failing over after ``session_timeout_s`` with heartbeats at a fifth of it (at
  most a second): fast without flapping on short pauses.
- A reader: no group, large fetches, no CRC check in Python (the broker checked each
  batch when it was written): for reading a changelog or a topic whole.
- An admin client.

Each takes the connection and security options (kafka_security.py) and whatever a role
adds; a caller's keyword wins over a rule's.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from orderstream.kafka_security import kafka_options
from orderstream.settings import Settings

# A reader's fetch: it is the only thing a restoring partition waits for.
READER_FETCH_BYTES = 16 * 1024**2


def durable_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """Return a producer whose every record is durable and never doubled by a retry."""
    rules: dict[str, Any] = {"acks": "all", "enable_idempotence": True}
    return AIOKafkaProducer(**kafka_options(settings), **(rules | options))


def group_consumer(
    settings: Settings, *topics: str, group_id: str, **options: Any
) -> AIOKafkaConsumer:
    """Return a member of ``group_id`` that commits by hand and fails over fast."""
    rules: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,  # committed once the records' effects are durable
        "auto_offset_reset": "earliest",  # records published before the start count too
        # Kafka's 45 s default leaves a killed member's partitions idle that long.
        "session_timeout_ms": int(settings.session_timeout_s * 1000),
        "heartbeat_interval_ms": int(min(1.0, settings.session_timeout_s / 5) * 1000),
    }
    return AIOKafkaConsumer(*topics, **kafka_options(settings), **(rules | options))


def reader(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """Return a consumer with no group that reads topics whole, a large fetch at a time."""
    rules: dict[str, Any] = {
        "group_id": None,
        "enable_auto_commit": False,
        "fetch_max_bytes": READER_FETCH_BYTES,
        "max_partition_fetch_bytes": READER_FETCH_BYTES,
        "check_crcs": False,
    }
    return AIOKafkaConsumer(*topics, **kafka_options(settings), **(rules | options))


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    """Return an admin client (topics, offsets, groups)."""
    return AIOKafkaAdminClient(**kafka_options(settings))
