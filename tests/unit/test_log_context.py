"""Log lines about a Kafka record carry where it sits (and its ids) as JSON fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from orderstream.agents.stock.processor import SourceRecord, StockProcessor
from orderstream.dead_letters import MAX_BYTES
from orderstream.domain import StockLevel, owner_partition
from orderstream.logs import JsonFormatter
from orderstream.metrics import SinkMetrics, WorkerMetrics
from orderstream.settings import Settings
from orderstream.sink.base import RecordRejectedError, SinkBatch
from orderstream.sink.runner import SinkRunner
from orderstream.topics import ORDER_EVENTS, ORDER_REQUESTS, STOCK_CHANGES, STOCK_COMMANDS

PARTITIONS = 8
NOW_MS = 10_000_000
PRODUCT = "p1"
OWNER = owner_partition(PRODUCT, PARTITIONS)
ELSEWHERE = (OWNER + 1) % PARTITIONS

JsonLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    """Collect orderstream's log lines, from DEBUG, as the JSON formatter writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("orderstream")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class State:
    """A partition holding PRODUCT's stock and no holds."""

    def level(self, product_id: str) -> StockLevel | None:
        return StockLevel(available=5, total_in=5, version=1) if product_id == PRODUCT else None

    def hold(self, key: bytes) -> bytes | None:
        return None

    def held(self, user_id: str, product_id: str) -> int:
        return 0


def processor() -> StockProcessor:
    # Every value explicit: ORDERSTREAM_* variables of the shell must not leak in.
    settings = Settings(partitions=PARTITIONS, topic_prefix="", dedup_window_s=60)
    return StockProcessor(settings, WorkerMetrics.register(CollectorRegistry()))


REQUEST = b'{"order_id":"o1","user_id":"u1","product_id":"p1","quantity":2}'
RELEASE = b'{"product_id":"p1","operation":"release","order_id":"o1"}'


@pytest.mark.parametrize(
    ("record", "message", "ids"),
    [
        pytest.param(
            SourceRecord(ORDER_REQUESTS, OWNER, 42, NOW_MS, b"p1", b"{not json"),
            "dead letter from",
            {},  # nothing could be read from it
            id="malformed",
        ),
        pytest.param(
            SourceRecord(ORDER_REQUESTS, ELSEWHERE, 43, NOW_MS, b"p1", REQUEST),
            "forwarding",
            {"product_id": PRODUCT},
            id="misrouted",
        ),
        pytest.param(
            SourceRecord(STOCK_COMMANDS, OWNER, 44, NOW_MS, b"p1", RELEASE),
            "stock release of order o1",
            {"order_id": "o1", "product_id": PRODUCT},
            id="settle",
        ),
    ],
)
def test_the_stock_processor_logs_where_the_record_sits(
    json_lines: JsonLines, record: SourceRecord, message: str, ids: dict[str, str]
) -> None:
    processor().process(record, State(), NOW_MS)

    [line] = [line for line in json_lines() if message in line["message"]]
    where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    assert {key: line.get(key) for key in where} == where
    assert {key: line[key] for key in ("order_id", "product_id") if key in line} == ids
    # The human message is unchanged: it still names the record.
    assert f"{record.topic}/{record.partition}@{record.offset}" in line["message"]


class RefusingSink:
    """A sink that refuses every stock change and writes everything else."""

    async def write(self, batch: SinkBatch) -> None:
        if batch.stock_changes:
            raise RecordRejectedError("DataError: value out of range")


class Producer:
    """Stands in for the sink's Kafka producer: keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.values: list[bytes | None] = []

    async def send_and_wait(self, topic: str, **kwargs: Any) -> None:
        self.sent.append(topic)
        self.values.append(kwargs.get("value"))


def consumed(topic: str, partition: int, offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, partition, offset, NOW_MS, 0, b"k", value, None, 1, len(value), [])


async def test_the_sink_logs_where_a_dead_letter_sat(json_lines: JsonLines) -> None:
    # The runner's Kafka clients are created, never started: the producer is replaced,
    # and an unstarted consumer has no assignment, so nothing is committed.
    runner = SinkRunner(
        Settings(topic_prefix="", kafka_bootstrap="localhost:1"),
        RefusingSink(),
        SinkMetrics.register(CollectorRegistry()),
    )
    await runner._producer.stop()  # closed unstarted: it is replaced
    producer = Producer()
    runner._producer = producer  # type: ignore[assignment]
    change = (
        b'{"product_id":"p1","available":1,"reserved":0,"sold":0,"total_in":1,'
        b'"version":1,"changed_at_ms":1}'
    )
    malformed = consumed(ORDER_EVENTS, 2, 7, b"{not json")
    refused = consumed(STOCK_CHANGES, 5, 9, change)

    try:
        await runner._process([malformed, refused])
    finally:
        await runner._consumer.stop()

    assert producer.sent == [ORDER_EVENTS + "-dlq", STOCK_CHANGES + "-dlq"]
    dead = [line for line in json_lines() if line["message"].startswith("dead letter from")]
    assert [(line["topic"], line["partition"], line["offset"]) for line in dead] == [
        (ORDER_EVENTS, 2, 7),
        (STOCK_CHANGES, 5, 9),
    ]


async def test_the_sink_cuts_a_dead_letter_too_large_for_the_broker() -> None:
    # As the stock agent does: a record near Kafka's 1 MiB limit plus our headers would
    # not fit, and a dead letter that cannot be written would stop the sink.
    runner = SinkRunner(
        Settings(topic_prefix="", kafka_bootstrap="localhost:1"),
        RefusingSink(),
        SinkMetrics.register(CollectorRegistry()),
    )
    await runner._producer.stop()  # closed unstarted: it is replaced
    producer = Producer()
    runner._producer = producer  # type: ignore[assignment]
    huge = b"{" + b"x" * (900 * 1024)  # not JSON, and too large to send back whole
    try:
        await runner._process([consumed(ORDER_EVENTS, 0, 1, huge)])
    finally:
        await runner._consumer.stop()
    assert producer.sent == [ORDER_EVENTS + "-dlq"]
    assert producer.values == [huge[: MAX_BYTES // 2]]
