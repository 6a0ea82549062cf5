"""Every Kafka client orderstream makes, built from the Settings with its rules written once.

- A durable producer: acknowledged by every in-sync replica, idempotent (a retry never
  reorders or doubles a partition's records, which a changelog's restore relies on).
- A group member: committed by hand after its effects, starting from the earliest
  record, failing over after ``session_timeout_s`` with heartbeats at a fifth of it (at
  most a second): fast without flapping on short pauses.
- A reader: no group, large fetches, no CRC check in Python (the broker checked each
  batch when it was written): for reading a changelog or a topic whole.
- An admin client.
- A fetch pacer for a group member that keeps up with a busy topic.

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
# What a paced fetch waits for: hundreds of order records, a few ms of a busy sale.
PACED_FETCH_BYTES = 64 * 1024


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


class FetchPacer:
    """Fetch a batch at a time while records flow, and at once when they start again.

    A consumer that keeps up fetches as soon as anything is there (Kafka's
    ``fetch_min_bytes`` of 1), so at a few thousand records a second each fetch carries a
    handful of them, and the broker's work per request (its metrics and purgatory, not
    the records: Java Flight Recorder on the local broker during a sale) becomes the
    largest CPU cost of the pipeline. While polls return records, the pacer asks the
    broker to hold each fetch until ``wait_ms`` have passed or ``PACED_FETCH_BYTES`` are
    there; after an empty poll it restores the consumer's own settings, so an idle
    consumer still waits in long fetches instead of asking every few milliseconds.

    aiokafka reads both settings from its fetcher each time it builds a fetch request;
    they are not public, hence the one place that sets them.
    """

    def __init__(self, consumer: AIOKafkaConsumer, wait_ms: int) -> None:
        self._fetcher = getattr(consumer, "_fetcher", None)
        self._wait_ms = wait_ms
        self._paced = False
        # The consumer's own (wait, bytes), restored after an empty poll.
        self._idle = (
            (self._fetcher._fetch_max_wait_ms, self._fetcher._fetch_min_bytes)
            if self._fetcher is not None
            else None
        )

    def polled(self, got_records: bool) -> None:
        """Tell the pacer whether the last poll returned records."""
        paced = got_records and self._wait_ms > 0
        if paced == self._paced or self._fetcher is None or self._idle is None:
            return
        fetcher = self._fetcher
        if paced:
            fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = self._wait_ms, PACED_FETCH_BYTES
        else:
            fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = self._idle
        self._paced = paced
