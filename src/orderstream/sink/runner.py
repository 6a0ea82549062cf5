"""The sink's consume loop: read a batch, write it, then commit the Kafka offsets.

Offsets are committed only after the database transaction commits, in the sink's own
consumer group; so a crash replays at most one batch (harmless: writes are idempotent),
and `kafka-consumer-groups --reset-offsets --to-earliest` rebuilds the same tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError

from orderstream.errors import InvalidMessageError
from orderstream.metrics import SinkMetrics
from orderstream.settings import Settings
from orderstream.sink.base import LocatedEvent, Sink, SinkBatch
from orderstream.topics import (
    DLQ_SUFFIX,
    ORDER_EVENTS,
    STOCK_CHANGES,
    OrderEvent,
    StockChange,
    dead_letter_headers,
    decode,
)

log = logging.getLogger(__name__)

_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 10.0


class SinkRunner:
    """Move records from the event topics into a Sink, batch by batch.

    Create it inside the running event loop: aiokafka clients bind to it.
    """

    def __init__(self, settings: Settings, sink: Sink, metrics: SinkMetrics) -> None:
        self._settings = settings
        self._sink = sink
        self._metrics = metrics
        self._events_topic = settings.topic(ORDER_EVENTS)
        self._stock_topic = settings.topic(STOCK_CHANGES)
        self._consumer = AIOKafkaConsumer(
            self._events_topic,
            self._stock_topic,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.sink_group,
            enable_auto_commit=False,  # we commit after PostgreSQL does
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=1000,
        )
        self._producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Connect to Kafka."""
        await self._producer.start()
        await self._consumer.start()

    async def stop(self) -> None:
        """Ask the loop to finish its batch, then disconnect."""
        self._stopping.set()
        await self._consumer.stop()
        await self._producer.stop()

    async def run(self) -> None:
        """Consume until stop() is called."""
        while not self._stopping.is_set():
            fetched = await self._consumer.getmany(
                timeout_ms=self._settings.sink_batch_wait_ms,
                max_records=self._settings.sink_batch_max,
            )
            records = [record for batch in fetched.values() for record in batch]
            if records:
                await self._process(records)
            await self._update_lag()

    async def _process(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        batch = SinkBatch()
        for record in records:
            try:
                self._add(batch, record)
            except InvalidMessageError as exc:
                await self._dead_letter(record, exc.reason)
        if batch:
            await self._write_with_retry(batch)
            for topic, count in Counter(record.topic for record in records).items():
                self._metrics.records.labels(topic).inc(count)
        try:
            await self._consumer.commit()
        except CommitFailedError:
            # A rebalance took the partitions away: the new owner rewrites this batch,
            # which the idempotent writes make harmless.
            log.warning("offset commit failed after a rebalance; the batch will be replayed")

    def _add(self, batch: SinkBatch, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.topic == self._events_topic:
            event = decode(OrderEvent, record.value)
            batch.order_events.append(LocatedEvent(event, record.partition, record.offset))
            if event.stock is not None:
                batch.stock_changes.append(event.stock)
        else:
            batch.stock_changes.append(decode(StockChange, record.value))

    async def _write_with_retry(self, batch: SinkBatch) -> None:
        delay = _RETRY_FIRST_S
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await self._sink.write(batch)
            except psycopg.OperationalError as exc:
                # PostgreSQL down or restarting: nothing was committed, so try the same
                # batch again; offsets stay where they were until it lands.
                log.warning("PostgreSQL write failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            self._metrics.batch_size.observe(len(batch))
            self._metrics.batch_seconds.observe(asyncio.get_running_loop().time() - started)
            return

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        log.warning(
            "dead letter from %s/%d@%d: %s", record.topic, record.partition, record.offset, reason
        )
        await self._producer.send_and_wait(
            record.topic + DLQ_SUFFIX,
            key=record.key,
            value=record.value,
            headers=dead_letter_headers(record.topic, record.partition, record.offset, reason),
        )
        self._metrics.dead_letters.labels(record.topic).inc()

    async def _update_lag(self) -> None:
        lag = 0
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                # After a fetch the position is known locally: no round trip here.
                lag += max(0, highwater - await self._consumer.position(tp))
        self._metrics.lag.set(lag)
