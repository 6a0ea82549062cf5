"""The sink's consume loop: read a batch, write it, then commit the Kafka offsets.

Offsets are committed only after the database transaction commits, in the sink's own
consumer group; so a crash replays at most one batch (harmless: writes are idempotent),
and `kafka-consumer-groups --reset-offsets --to-earliest` rebuilds the same tables.

No record stops the sink. One that cannot be decoded, or that PostgreSQL refuses (found
by halving the refused batch), goes to ``<topic>-dlq`` and the rest of the batch lands.
While PostgreSQL takes no writes at all, consumption pauses and the same batch is retried
with backoff; the consumer is still polled, so it keeps its place in the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from orderstream import tracing
from orderstream.codec import WireStockChange, decode_event, decode_stock_change
from orderstream.consumer_lag import consumer_lag
from orderstream.dead_letters import dead_letter_of
from orderstream.errors import InvalidMessageError
from orderstream.kafka_clients import FetchPacer, durable_producer, group_consumer
from orderstream.metrics import SinkMetrics
from orderstream.settings import Settings
from orderstream.sink.base import (
    LocatedEvent,
    Sink,
    SinkBatch,
    SinkUnavailableError,
    write_isolating,
)
from orderstream.topics import ORDER_EVENTS, STOCK_CHANGES

log = logging.getLogger(__name__)

_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 10.0
# While paused, the consumer is polled this often: far inside max.poll.interval.ms.
_PAUSED_POLL_S = 1.0
# stop() bounds: SIGTERM must end the process within 30 s, whatever is down. The loop
# notices the stop between attempts; these bound a write or commit that hangs, and the
# Kafka clients' own shutdown.
_STOP_LOOP_S = 5.0
_STOP_CANCELLED_S = 6.0  # psycopg gives a cancelled query 5 s to end
_STOP_CLIENT_S = 5.0
# A sink this far behind is replaying (or recovering): it says how it gets on, this often.
_CATCH_UP_LAG = 10_000
_CATCH_UP_EVERY_S = 5.0

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class _StoppingError(Exception):
    """stop() was called while a batch was waiting for PostgreSQL or Kafka."""


@dataclass(frozen=True)
class _Decoded:
    """A record read from Kafka and what it adds to a batch."""

    record: Record
    event: LocatedEvent | None
    stock: WireStockChange | None


def _batch_of(items: Iterable[_Decoded]) -> SinkBatch:
    batch = SinkBatch()
    for item in items:
        if item.event is not None:
            batch.order_events.append(item.event)
        if item.stock is not None:
            batch.stock_changes.append(item.stock)
    return batch


def _trace_batch(
    records: Sequence[Record], dead: Sequence[tuple[Record, str, str]], started_ns: int
) -> None:
    """Record the written batch's span, and one in the trace of each record that has one."""
    failed = {id(record): reason for record, reason, _ in dead}
    tracing.record_batch(
        (
            (
                record.headers,
                tracing.kafka_attributes(record.topic, record.partition, record.offset),
                failed.get(id(record)),
            )
            for record in records
        ),
        started_ns,
        {"messaging.system": "kafka", "messaging.batch.message_count": len(records)},
    )


def _next_offsets(records: Iterable[Record]) -> dict[TopicPartition, int]:
    """Return, per partition, the offset after the last of ``records``."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class CatchUp:
    """Follow a sink far behind its topics: a progress line every few seconds, a last one
    when it is near the end.
    """

    def __init__(self, behind: int = _CATCH_UP_LAG, every_s: float = _CATCH_UP_EVERY_S) -> None:
        self._behind, self._every_s = behind, every_s
        self._started: float | None = None  # when the lag went above ``behind``
        self._written = 0
        self._last = (0.0, 0, 0)  # time, written and lag at the last line

    def update(self, now: float, written: int, lag: int) -> str | None:
        """Count ``written`` records, the lag now ``lag``; return the line due, if any."""
        if self._started is None:
            if lag > self._behind:  # counted from now on
                self._started, self._written, self._last = now, 0, (now, 0, lag)
            return None
        self._written += written
        if lag <= self._behind:
            took, self._started = now - self._started, None
            return f"caught up: {self._written:,} written in {_duration(took)}, {lag:,} behind"
        last_time, last_written, last_lag = self._last
        seconds = now - last_time
        if seconds < self._every_s:
            return None
        self._last = (now, self._written, lag)
        rate = (self._written - last_written) / seconds
        # The lag shrinks slower than the sink writes while the topics still grow.
        shrinking = (last_lag - lag) / seconds
        eta = f"about {_duration(lag / shrinking)} left" if shrinking > 0 else "not gaining"
        return f"catching up: {self._written:,} written, {rate:,.0f}/s, {lag:,} behind, {eta}"


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
        # Offsets are committed after PostgreSQL commits.
        self._consumer = group_consumer(
            settings, self._events_topic, self._stock_topic, group_id=settings.sink_group
        )
        self._producer = durable_producer(settings)  # dead letters
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._task: asyncio.Task[object] | None = None
        self._committing: asyncio.Task[None] | None = None  # the last batch's offset commit
        self._paused = False
        self._catch_up = CatchUp()

    async def start(self) -> None:
        """Connect to Kafka."""
        await self._producer.start()
        await self._consumer.start()
        self._pacer = FetchPacer(self._consumer, self._settings.fetch_batch_wait_ms)

    async def stop(self) -> None:
        """Stop the loop between two attempts, then disconnect, in bounded time."""
        self._stopping.set()
        task = self._task
        if task is not None and not self._finished.is_set():
            try:
                await asyncio.wait_for(self._finished.wait(), _STOP_LOOP_S)
            except TimeoutError:
                # A write waiting for PostgreSQL, or a commit for Kafka: its batch is read
                # again by whoever consumes next.
                log.warning("sink busy %.0f s after stop; cancelling its batch", _STOP_LOOP_S)
                task.cancel()
                await asyncio.wait({task}, timeout=_STOP_CANCELLED_S)
        for name, stop_client in (
            ("consumer", self._consumer.stop),
            ("producer", self._producer.stop),
        ):
            try:
                await asyncio.wait_for(stop_client(), _STOP_CLIENT_S)
            except TimeoutError:
                log.warning("Kafka %s did not stop within %.0f s; leaving it", name, _STOP_CLIENT_S)

    async def run(self) -> None:
        """Consume until stop() is called."""
        self._task = asyncio.current_task()
        try:
            while not self._stopping.is_set():
                fetched = await self._consumer.getmany(
                    timeout_ms=self._settings.sink_batch_wait_ms,
                    max_records=self._settings.sink_batch_max,
                )
                records = [record for batch in fetched.values() for record in batch]
                self._pacer.polled(bool(records))
                if records:
                    try:
                        await self._process(records)
                    except _StoppingError:
                        log.info("stopping with a batch not written: it will be read again")
                        return
                lag = await self._update_lag()
                progress = self._catch_up.update(time.monotonic(), len(records), lag)
                if progress is not None:
                    log.info("%s", progress)
            await self._committed()  # stopped between batches: the last one's offsets too
        finally:
            if self._committing is not None:
                # Cancelled mid-batch: a commit not made replays a written batch (harmless).
                self._committing.cancel()
            self._finished.set()

    async def _process(self, records: list[Record]) -> None:
        started_ns = time.time_ns()
        decoded: list[_Decoded] = []
        dead: list[tuple[Record, str, str]] = []
        for record in records:
            try:
                decoded.append(self._decode(record))
            except InvalidMessageError as exc:
                dead.append((record, exc.reason, "invalid"))
        try:
            refused = await write_isolating(decoded, self._write)
            if refused:
                log.warning(
                    "PostgreSQL refused %d of a batch of %d records; the rest landed",
                    len(refused), len(decoded),
                )  # fmt: skip
            dead += [(item.record, exc.reason, "refused") for item, exc in refused]
            for record, reason, cause in dead:
                await self._dead_letter(record, reason, cause)
        finally:
            self._resume()
        refused_items = {id(item) for item, _ in refused}
        written = Counter(item.record.topic for item in decoded if id(item) not in refused_items)
        for topic, count in written.items():
            self._metrics.records.labels(topic).inc(count)
        if tracing.ENABLED:
            _trace_batch(records, dead, started_ns)
        await self._commit(records)

    def _decode(self, record: Record) -> _Decoded:
        if record.topic == self._events_topic:
            event = decode_event(record.value)
            return _Decoded(
                record, LocatedEvent(event, record.partition, record.offset), event.stock
            )
        return _Decoded(record, None, decode_stock_change(record.value))

    async def _write(self, items: Sequence[_Decoded]) -> None:
        """Write ``items`` in one transaction, waiting while PostgreSQL takes no writes."""
        batch = _batch_of(items)

        async def attempt() -> None:
            started = asyncio.get_running_loop().time()
            await self._sink.write(batch)
            self._metrics.batch_size.observe(len(batch))
            self._metrics.batch_seconds.observe(asyncio.get_running_loop().time() - started)

        await self._until_done("PostgreSQL", attempt, SinkUnavailableError)

    async def _dead_letter(self, record: Record, reason: str, cause: str) -> None:
        dead = dead_letter_of(
            record.topic, record.partition, record.offset, record.key, record.value, reason=reason
        )

        async def send() -> None:
            await self._producer.send_and_wait(
                dead.topic, key=dead.key, value=dead.value, headers=dead.headers
            )

        await self._until_done("Kafka", send, KafkaError)
        self._metrics.dead_letters.labels(record.topic, cause).inc()

    async def _until_done(
        self,
        target: str,
        attempt: Callable[[], Awaitable[None]],
        retriable: type[Exception],
    ) -> None:
        """Run ``attempt`` until it succeeds, pausing consumption while ``target`` is down.

        Raise _StoppingError instead of waiting once stop() was called.
        """
        delay = _RETRY_FIRST_S
        failures = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                await attempt()
            except retriable as exc:
                if self._stopping.is_set():
                    raise _StoppingError from exc
                failures += 1
                log.warning(
                    "%s unavailable (%s); consumption paused, retry %d in %.1f s",
                    target, exc, failures, delay,
                )  # fmt: skip
                self._pause()
                await self._wait_polling(delay)
                if self._stopping.is_set():
                    raise _StoppingError from exc
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if failures:
                log.info(
                    "%s is back after %d failed attempts (%.1f s); consumption resumes",
                    target, failures, loop.time() - started,
                )  # fmt: skip
            return

    def _pause(self) -> None:
        # Pausing again also covers partitions that a rebalance assigned meanwhile.
        self._consumer.pause(*self._consumer.assignment())
        self._paused = True

    def _resume(self) -> None:
        if self._paused:
            # paused() holds only partitions still assigned: a rebalance while paused may
            # have revoked some, and resuming those would fail.
            self._consumer.resume(*self._consumer.paused())
            self._paused = False

    async def _wait_polling(self, seconds: float) -> None:
        """Wait ``seconds`` or until stop(), polling the paused consumer to stay in its group."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._pause()
            # Paused partitions return nothing; should a rebalance slip a partition in
            # unpaused, its records are rewound, to be read after the batch.
            fetched = await self._consumer.getmany(timeout_ms=0)
            for tp, records in fetched.items():
                if records:
                    self._consumer.seek(tp, records[0].offset)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(remaining, _PAUSED_POLL_S))

    async def _commit(self, records: list[Record]) -> None:
        """Commit a written batch's offsets while the next batch is read and written.

        The commit's round trip (~7 ms on the local broker, half of a small batch's time)
        is then off the path of the next records. Commits stay in order: each starts once
        the one before is done, and what that one raised is raised here. One that never
        lands (a crash) replays a written batch, which the idempotent writes make harmless.
        """
        await self._committed()
        # Only partitions still assigned: a rebalance during the batch may have moved some
        # to another consumer, which rewrites their records (harmless, idempotent).
        assigned = self._consumer.assignment()
        offsets = {tp: o for tp, o in _next_offsets(records).items() if tp in assigned}
        if offsets:
            self._committing = asyncio.create_task(self._commit_offsets(offsets))

    async def _committed(self) -> None:
        """Wait for the last batch's offset commit, if one is under way."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError:
            # A rebalance took the partitions away: the new owner rewrites this batch,
            # which the idempotent writes make harmless.
            log.warning("offset commit failed after a rebalance; the batch will be replayed")

    async def _update_lag(self) -> int:
        lag = await consumer_lag(self._consumer)
        self._metrics.lag.set(lag)
        return lag
