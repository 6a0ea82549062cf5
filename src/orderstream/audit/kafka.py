"""Read Kafka for the audit: the consumer groups' lag, the stock agent's changelog."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from orderstream.consumer_lag import group_lag
from orderstream.domain import StockLevel
from orderstream.settings import Settings
from orderstream.tables import (
    NO_EPOCH,
    STOCK_KEY,
    lifecycle_app_id,
    record_epoch,
    stock_changelog,
)
from orderstream.topics import (
    LINE_OUTCOMES,
    ORDER_COMMANDS,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    PAYMENT_REQUESTS,
    PAYMENT_RESULTS,
    STOCK_CHANGES,
    STOCK_COMMANDS,
)

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 5.0


async def consumer_lag(
    settings: Settings, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer
) -> dict[str, int]:
    """Return the records each group has not consumed yet: the stock agent's, the sink's,
    and the order lifecycle's where it runs (a group that never committed is left out:
    a deployment without the lifecycle has line outcomes nobody reads)."""
    groups = {
        "stock agent": (settings.app_id, (ORDER_REQUESTS, STOCK_COMMANDS)),
        "sink": (settings.sink_group, (ORDER_EVENTS, STOCK_CHANGES)),
        "order lifecycle": (
            lifecycle_app_id(settings),
            (LINE_OUTCOMES, ORDER_COMMANDS, PAYMENT_RESULTS, PAYMENT_REQUESTS),
        ),
    }
    lag = {}
    for role, (group, topics) in groups.items():
        partitions = _partitions(settings, (settings.topic(t) for t in topics))
        behind = await group_lag(admin, consumer, group, partitions)
        if behind is None and role == "order lifecycle":
            continue  # not running here
        lag[role] = behind or 0
    return lag


def _partitions(settings: Settings, topics: Iterable[str]) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for topic in topics for p in range(settings.partitions)]


async def read_changelog(
    settings: Settings, consumer: AIOKafkaConsumer
) -> tuple[dict[str, StockLevel | str], int]:
    """Return the last stock snapshot per product (or why it cannot be read), and the
    number of changelog records read, from the beginning to the current end offsets."""
    partitions = _partitions(settings, [stock_changelog(settings)])
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    starts = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    total = sum(ends[tp] - starts[tp] for tp in partitions)
    log.info("reading the stock changelog %s: ~%d records", stock_changelog(settings), total)
    last: dict[bytes, bytes | None] = {}  # only stock snapshots: holds are skipped
    # Per partition, the highest writer epoch read: a record below it was written by a
    # writer fenced off (paused past its session), which a restore drops too.
    epochs: dict[int, int] = {}
    read = 0
    started = last_progress = time.monotonic()
    remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
    while remaining:
        for tp, records in (await consumer.getmany(*remaining, timeout_ms=500)).items():
            for record in records:
                epoch = record_epoch(record.headers)
                if epoch < epochs.get(tp.partition, NO_EPOCH):
                    continue
                epochs[tp.partition] = epoch
                key = record.key
                if record.offset < ends[tp] and key is not None and key[:1] == STOCK_KEY:
                    last[key] = record.value
            read += len(records)
        remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        now = time.monotonic()
        if now - last_progress >= _PROGRESS_EVERY_S:
            last_progress = now
            rate = read / (now - started)
            eta = f"about {(total - read) / rate:.0f} s left" if rate else "no progress yet"
            log.info("stock changelog: %d of ~%d records, %.0f/s, %s", read, total, rate, eta)
    snapshots: dict[str, StockLevel | str] = {}
    for key, value in last.items():
        if value is None:
            continue  # a tombstone: the product's stock was deleted
        product_id = key[len(STOCK_KEY) :].decode(errors="replace")
        try:
            snapshots[product_id] = StockLevel.model_validate_json(value)
        except ValidationError as exc:
            snapshots[product_id] = f"undecodable snapshot ({exc.error_count()} errors)"
    return snapshots, min(read, total)
