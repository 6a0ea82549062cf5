"""The stock agent: single writer of the stock of its partitions, a fetched batch at a time.

This module is transport only: fetch, let the processor decide (agents/stock/processor.py),
let the store append the effects to the changelog (agents/stock/store.py), announce the
outputs once the changelog has them, commit. What it guarantees:
- single writer: one consumer of the group owns partition p of both source topics (the
  range assignor keeps co-partitioned topics together), and p's state lives only there;
- at least once, idempotent: per (order, product) holds and stock snapshots go to one
  compacted changelog, in order; a redelivered request finds its hold and re-sends the
  recorded decision; a stock command is applied once by offset and by its id;
- a decision is announced only after its hold is on the broker: a batch's changelog
  records are acknowledged before its outputs are sent, so a crash can never leave an
  announced decision that the restored state does not know;
- offsets are committed only after everything a batch produced is acknowledged.
Deciding, announcing and committing run as three tasks, so a batch is decided while the
previous one waits for the broker. Plain aiokafka, not a Faust agent: Faust's per-event
machinery costs more CPU than the decision and keeps two changelogs a crash can leave out
of step (docs/architecture.md, "Why the stock agent is not a Faust agent").
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from orderstream.agents.stock.batcher import RecordBatcher
from orderstream.agents.stock.processor import SourceRecord, StockProcessor
from orderstream.agents.stock.restore import restore_partitions
from orderstream.agents.stock.standby import Standbys
from orderstream.agents.stock.store import Append, PartitionStore
from orderstream.consumer_lag import consumer_lag
from orderstream.domain import StockLevel
from orderstream.kafka_clients import FetchPacer, durable_producer, group_consumer, reader
from orderstream.logs import record_context
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import EPOCH, EPOCH_HEADER, FENCE_KEY, stock_changelog
from orderstream.topics import ORDER_REQUESTS, STOCK_CHANGES, STOCK_COMMANDS, StockChange

log = logging.getLogger(__name__)

# Batches decided but not yet announced; a full queue slows deciding to the broker's pace.
_QUEUE_BATCHES = 8
# A stop (SIGTERM) must end within 30 s even with the broker down, and the supervisor
# gives a role 20 s: the final commit gets this long, each client's stop a few seconds.
_FINAL_COMMIT_TIMEOUT_S = 10.0
_CLIENT_STOP_TIMEOUT_S = 3.0
# Expiry of holds out of the dedup window: how often, and how many holds each partition
# scans per pass (~10 ms; a million holds are gone round in about 4 minutes).
_EXPIRE_EVERY_S = 5.0
_EXPIRE_SCAN = 20_000
# The group's lag is measured from what the fetches told, at most this often.
_LAG_EVERY_S = 1.0
# The stock gauges name products: only the busiest few, chosen anew at every update and
# the gauges cleared before they are set, so that a sale of a million products exports
# at most _BUSIEST series per gauge and worker. Busiest: the stock changed in the most
# batches since the last update, which costs a dict update per product and batch.
_STOCK_GAUGES_EVERY_S = 5.0
_BUSIEST = 10


@dataclass
class Batch:
    """What deciding one fetched batch produced."""

    changelog: RecordBatcher  # holds, stock snapshots and tombstones, by source partition
    outputs: RecordBatcher  # sent once the changelog records are acknowledged
    changelog_sent: list[asyncio.Future[Any]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read


class StockAgent(Service):
    """Decide order requests and apply stock commands, batch by batch, on aiokafka.

    Create it inside the running event loop: aiokafka clients bind to it.
    """

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        super().__init__()
        self._settings = settings
        self._metrics = metrics
        self._requests = settings.topic(ORDER_REQUESTS)
        self._commands = settings.topic(STOCK_COMMANDS)
        self._stock_changes = settings.topic(STOCK_CHANGES)
        self._changelog = stock_changelog(settings)
        self._processor = StockProcessor(settings, metrics)
        self._stores: dict[int, PartitionStore] = {}
        # Per owned partition, the header that stamps its changelog records with this
        # owner's epoch (tables.py, FENCE_KEY): set when the partition is taken over.
        self._epochs: dict[int, list[tuple[str, bytes]]] = {}
        self._deciding = asyncio.Lock()  # held while a batch is decided and queued
        self._committing = asyncio.Lock()
        self._batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=_QUEUE_BATCHES)
        self._unacked: list[tuple[list[asyncio.Future[Any]], dict[TopicPartition, int]]] = []
        self._acked: dict[TopicPartition, int] = {}
        # The previous batch's changelog sends: a batch's records go out only once these
        # are acknowledged, so that a failed write is never followed by a later one.
        self._changelog_in_flight: list[asyncio.Future[Any]] = []
        # The first write that failed: nothing after it is sent, announced or committed;
        # the agent crashes and its restart resumes from the last commit.
        self._failure: BaseException | None = None
        self._next_expiry = 0.0
        self._lag = metrics.consumer_lag.labels(settings.app_id)
        self._next_lag = 0.0
        self._busy: dict[str, int] = {}  # product -> batches that changed it, this interval
        self._busiest: list[str] = []
        self._next_stock_gauges = 0.0
        self._producer: AIOKafkaProducer
        self._consumer: AIOKafkaConsumer
        self._pacer: FetchPacer
        self._reader: AIOKafkaConsumer
        self._root = settings.data_dir / settings.app_id / "stock"
        self._standbys = (
            Standbys(settings, self._changelog, self._root) if settings.standby_replicas else None
        )

    async def on_start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here.
        self._producer = durable_producer(
            self._settings,
            # Decided batches are handed over whole (agents/stock/batcher.py): no linger.
            max_batch_size=256 * 1024,  # a decided batch goes out in few produce requests
        )
        self._consumer = group_consumer(
            self._settings,
            group_id=self._settings.app_id,
            group_instance_id=self._settings.worker_id,
            # An order of several lines is published in one transaction: its lines are
            # decided all or none, never those of an aborted order.
            isolation_level="read_committed",
            # Range assignment gives one member partition p of both source topics.
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_records=self._settings.batch_max_records,
        )
        self._reader = reader(self._settings)
        await self._producer.start()
        await self._reader.start()
        if self._standbys is not None:
            await self._standbys.start()
        self._consumer.subscribe([self._requests, self._commands], listener=_Listener(self))
        await self._consumer.start()
        self._pacer = FetchPacer(self._consumer, self._settings.fetch_batch_wait_ms)
        log.info(
            "stock agent consuming %s and %s as group %s",
            self._requests,
            self._commands,
            self._settings.app_id,
        )

    async def on_stop(self) -> None:
        # Finish the batch in hand, announce what was decided, commit, then leave.
        try:
            async with asyncio.timeout(_FINAL_COMMIT_TIMEOUT_S), self._deciding:
                await self._batches.join()
                await self._commit()
        except (TimeoutError, KafkaError) as exc:
            log.warning("stopping without a final commit (%r); a restart redelivers", exc)
        if self._standbys is not None:
            await self._standbys.stop()
        for client in (self._consumer, self._reader, self._producer):
            try:
                async with asyncio.timeout(_CLIENT_STOP_TIMEOUT_S):
                    await client.stop()
            except (TimeoutError, KafkaError) as exc:
                log.warning("%s did not stop cleanly: %r", type(client).__name__, exc)
        for store in self._stores.values():
            store.close()
        self._stores.clear()

    @Service.task
    async def _decide_loop(self) -> None:
        while not self.should_stop and self._failure is None:
            fetched = await self._consumer.getmany(
                timeout_ms=100, max_records=self._settings.batch_max_records
            )
            self._pacer.polled(bool(fetched))
            now = time.monotonic()
            if now >= self._next_lag:
                await self._measure_lag(now)
            if now >= self._next_stock_gauges:
                self._show_busiest_stock(now)
            expire = now >= self._next_expiry
            if not fetched and not expire:
                continue
            async with self._deciding:
                batch = Batch(
                    changelog=RecordBatcher(self._settings.partitions),
                    outputs=RecordBatcher(self._settings.partitions),
                )
                self._decide(batch, fetched)
                if expire:
                    self._expire(batch)
                # Decided while the previous batch's records were on their way; sent only
                # once they are acknowledged. Were they refused and these landed, a
                # restore would find this batch's stock snapshot counting reservations
                # whose holds are not in the changelog.
                if not await self._written(self._changelog_in_flight):
                    return
                try:
                    batch.changelog_sent = await batch.changelog.send(self._producer)
                except Exception as exc:  # refused before it left (too large, closed)
                    await self._fail(exc)
                    return
                self._changelog_in_flight = batch.changelog_sent
                await self._batches.put(batch)

    @Service.task
    async def _announce_loop(self) -> None:
        while True:  # cancelled by the service's stop, after on_stop drained the queue
            batch = await self._batches.get()
            try:
                # A decision goes out only once its hold is durable (see module docstring).
                if await self._written(batch.changelog_sent):
                    try:
                        sent = await batch.outputs.send(self._producer)
                    except Exception as exc:  # refused before it left
                        await self._fail(exc)
                    else:
                        self._unacked.append((sent, batch.offsets))
            finally:
                self._batches.task_done()

    async def _written(self, sends: list[asyncio.Future[Any]]) -> bool:
        """Wait for ``sends``; return whether they all landed and nothing failed before.

        The first failure stops the agent: nothing decided after it is sent or
        committed, and the supervisor's restart resumes from the last commit.
        """
        if self._failure is None:
            try:
                await asyncio.gather(*sends)
            except Exception as exc:
                await self._fail(exc)
        return self._failure is None

    async def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            log.error(
                "a write to Kafka failed (%r): deciding stops, nothing after it is"
                " committed; restarting from the last commit",
                exc,
            )
            await self.crash(exc)

    @Service.task
    async def _commit_loop(self) -> None:
        while not self.should_stop:
            await self.sleep(self._settings.commit_interval_s)
            try:
                await self._commit()
            except CommitFailedError as exc:
                # A rebalance took the partitions; their revoke handler commits instead.
                log.info("commit skipped during a rebalance: %s", exc)

    async def _commit(self) -> None:
        """Commit the offsets whose every output the broker has acknowledged, up to the
        first batch whose outputs were refused (whatever came after it is not)."""
        async with self._committing:
            pending, self._unacked = self._unacked, []
            for sent, offsets in pending:
                if not await self._written(sent):
                    break  # this batch and every later one are redelivered
                self._acked.update(offsets)  # later batches come later in the list
            owned = self._consumer.assignment()
            offsets = {tp: offset for tp, offset in self._acked.items() if tp in owned}
            if offsets:
                await self._consumer.commit(offsets)
            self._acked.clear()

    def _decide(
        self, batch: Batch, fetched: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        now_ms = int(time.time() * 1000)
        for tp, records in fetched.items():
            store = self._stores.get(tp.partition)
            if store is None:
                if tp in self._consumer.assignment():
                    # Ours, but its restore has not finished: read these again later.
                    self._consumer.seek(tp, records[0].offset)
                else:
                    log.info(
                        "records of %s arrived after it was revoked; not deciding",
                        tp,
                        extra=record_context(tp.topic, tp.partition, records[0].offset),
                    )
                continue
            append = self._appender(batch, tp.partition)
            for record in records:
                source = SourceRecord(
                    tp.topic, tp.partition, record.offset, record.timestamp, record.key,
                    record.value, record.headers,
                )  # fmt: skip
                effects = self._processor.process(source, store, now_ms)
                try:
                    # Stock first: an event the stock cannot take raises before any hold
                    # records a decision that did not happen.
                    for product_id, event in effects.stock:
                        store.apply(product_id, event, append)
                    for key, hold in effects.holds:
                        store.put_hold(key, hold, append)
                    for user_id, product_id, quantity in effects.held:
                        store.change_held(user_id, product_id, quantity)
                except ValueError as exc:
                    # An event the stock cannot take (a bug, never input): park the
                    # record rather than stop the partition or oversell.
                    log.exception(
                        "cannot apply %s@%d",
                        tp,
                        record.offset,
                        extra=record_context(tp.topic, tp.partition, record.offset),
                    )
                    effects = self._processor.dead_letter(source, f"internal error: {exc!r}")
                for output in effects.outputs:
                    batch.outputs.add(
                        output.topic,
                        output.key,
                        output.value,
                        output.partition,
                        headers=output.headers,
                        timestamp_ms=output.timestamp_ms,
                    )
            batch.offsets[tp] = records[-1].offset + 1
            self._processor.flush_metrics()
            for product_id, level in store.snapshot_changed(append):
                self._busy[product_id] = self._busy.get(product_id, 0) + 1
                change = StockChange.of(product_id, level, now_ms)
                batch.outputs.add(
                    self._stock_changes, product_id.encode(), change.model_dump_json().encode()
                )

    def _expire(self, batch: Batch) -> None:
        """Drop final holds that left the dedup window; their tombstones go out first."""
        self._next_expiry = time.monotonic() + _EXPIRE_EVERY_S
        before_ms = int((time.time() - self._settings.dedup_window_s) * 1000)
        for partition, store in self._stores.items():
            dropped = store.expire(before_ms, _EXPIRE_SCAN, self._appender(batch, partition))
            if dropped:
                self._metrics.expired_holds.inc(dropped)
                log.info("partition %d: %d holds left the dedup window", partition, dropped)

    async def _measure_lag(self, now: float) -> None:
        """Export the group's lag on the partitions this worker owns."""
        self._next_lag = now + _LAG_EVERY_S
        lag = await consumer_lag(self._consumer)
        self._lag.set(lag)

    def _show_busiest_stock(self, now: float) -> None:
        """Set the stock gauges to the busiest products since the last call."""
        self._next_stock_gauges = now + _STOCK_GAUGES_EVERY_S
        if self._busy:  # when idle, the last products shown stay
            self._busiest = heapq.nlargest(_BUSIEST, self._busy, key=self._busy.__getitem__)
            self._busy.clear()
        levels: dict[str, StockLevel] = {}
        for product_id in self._busiest:
            for store in self._stores.values():  # gone with its partition once revoked
                level = store.level(product_id)
                if level is not None:
                    levels[product_id] = level
                    break
        self._metrics.show_stock(levels)

    def _appender(self, batch: Batch, partition: int) -> Append:
        changelog, topic, epoch = batch.changelog, self._changelog, self._epochs[partition]

        def append(key: bytes, value: bytes | None) -> None:
            changelog.add(topic, key, value, partition, headers=epoch)

        return append

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Hand partitions over: announce and commit everything, then drop their state."""
        async with self._deciding:
            await self._batches.join()
            try:
                await self._commit()
            except CommitFailedError as exc:
                # The group moved on without us (a missed heartbeat): the new owner
                # redelivers from the last commit, which the holds make harmless.
                log.warning("could not commit before handing partitions over: %s", exc)
            given_up: dict[int, PartitionStore] = {}
            for partition in {tp.partition for tp in revoked}:
                self._epochs.pop(partition, None)
                store = self._stores.pop(partition, None)
                if store is not None:
                    given_up[partition] = store
            if self._standbys is not None and given_up:
                # Whole up to the changelog's end (every batch's records acknowledged):
                # kept as standbys, a rebalance that hands them back reads nothing.
                ends = await self._reader.end_offsets(
                    [TopicPartition(self._changelog, p) for p in given_up]
                )
                offsets = {tp.partition: offset for tp, offset in ends.items()}
                await self._standbys.adopt(given_up, offsets)
            else:
                for store in given_up.values():
                    store.close()
            await self._stand_by()

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Take partitions over: rebuild their state from the changelog first."""
        partitions = sorted({tp.partition for tp in assigned} - set(self._stores))
        if not partitions:
            return
        try:
            # Nothing is decided until the state it is decided against is whole.
            async with self._deciding:
                await self._restore(partitions)
            await self._stand_by()
        except Exception as exc:
            # aiokafka logs and swallows what a rebalance listener raises, which would
            # leave these partitions owned and never decided: crash instead, so that
            # the supervisor restarts the agent and the group hands them out again.
            log.exception("restoring partitions %s failed", partitions)
            await self.crash(exc)

    async def _restore(self, partitions: list[int]) -> None:
        standbys = {}
        if self._standbys is not None:
            for partition in partitions:
                taken = await self._standbys.take(partition)
                if taken is not None:
                    standbys[partition] = taken
        stores = await restore_partitions(
            self._reader, self._changelog, partitions, self._root, standbys
        )
        await self._fence(stores)
        self._stores.update(stores)

    async def _stand_by(self) -> None:
        """Stand by for every partition this worker does not own (if standbys are on)."""
        if self._standbys is not None:
            owned = set(self._stores)
            await self._standbys.follow(set(range(self._settings.partitions)) - owned)

    async def _fence(self, stores: dict[int, PartitionStore]) -> None:
        """Write this owner's epoch to each partition's changelog before deciding there.

        Above every epoch its restore read, and at least the group's generation: a
        previous owner still writing (paused past its session, not yet told) writes a
        lower one after this record, and a restore drops what it wrote (tables.py).
        """
        # aiokafka keeps the generation of the join that gave these partitions here.
        generation = max(0, self._consumer._coordinator.generation)
        sends = []
        for partition, store in stores.items():
            epoch = EPOCH.pack(max(store.restored_epoch + 1, generation))
            self._epochs[partition] = [(EPOCH_HEADER, epoch)]
            sends.append(
                await self._producer.send(
                    self._changelog,
                    key=FENCE_KEY + epoch,
                    value=epoch,
                    partition=partition,
                    headers=self._epochs[partition],
                )
            )
        await asyncio.gather(*sends)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, agent: StockAgent) -> None:
        self._agent = agent

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._agent.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._agent.on_assigned(assigned)
