"""Prototype: the single writer per partition, batch by batch, on plain aiokafka.

    python -m bench.batch_writer        (ORDERSTREAM_* settings, like `orderstream worker`)

A measuring stick for the design, not part of orderstream (the product's worker is the
Faust agent). It keeps every guarantee the Faust worker gives, and changes only how
much work each request costs:
- single writer: one consumer in the group owns each partition of order-requests, and
  the stock of the products hashing there lives only in this process;
- at least once, idempotent: per (order, product) holds and stock levels go to a
  compacted changelog topic; outputs and changelog are flushed before the offsets are
  committed; a redelivered request finds its hold and re-sends the same decision;
- misrouted requests are forwarded to the owning partition, malformed ones dead-lettered.
What it drops is Faust's per-event machinery: it decides a whole fetched batch in a
plain loop, and writes one stock record per product per batch instead of per decision.
It assumes one process owns every partition (the benchmark's case): rebalancing and
restoring a partition handed over mid-run are not written.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from orderstream.domain import (
    LineRequest,
    StockLevel,
    apply_stock_operation,
    owner_partition,
    reserve_line,
)
from orderstream.errors import InvalidMessageError
from orderstream.settings import Settings
from orderstream.tables import Hold, hold_key
from orderstream.topics import (
    DLQ_REASON_HEADER,
    DLQ_SUFFIX,
    ORDER_EVENTS,
    ORDER_REQUESTS,
    STOCK_CHANGES,
    STOCK_COMMANDS,
    OrderRequest,
    StockChange,
    StockCommand,
    decode,
)

log = logging.getLogger("batch_writer")
CHANGELOG = "batch-writer-changelog"  # key b"s" + product | b"h" + hold key


class BatchWriter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.requests = settings.topic(ORDER_REQUESTS)
        self.commands = settings.topic(STOCK_COMMANDS)
        self.changelog = f"{settings.app_id}-{CHANGELOG}"
        self.stock: dict[str, StockLevel] = {}
        self.holds: dict[bytes, bytes] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=self.settings.producer_linger_ms,
            max_batch_size=256 * 1024,
        )
        self.consumer = AIOKafkaConsumer(
            self.requests,
            self.commands,
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=f"{self.settings.app_id}-batch",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=5000,
        )
        await self.producer.start()
        await self._restore()
        await self.consumer.start()
        try:
            while not self.stopping.is_set():
                fetched = await self.consumer.getmany(timeout_ms=100, max_records=5000)
                if fetched:
                    await self._process(fetched)
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def _restore(self) -> None:
        """Read the changelog to its end: the state every earlier run left."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        await reader.start()
        try:
            partitions = [
                TopicPartition(self.changelog, p) for p in range(self.settings.partitions)
            ]
            reader.assign(partitions)
            await reader.seek_to_beginning(*partitions)
            ends = await reader.end_offsets(partitions)
            while [tp for tp in partitions if await reader.position(tp) < ends[tp]]:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    for record in records:
                        self._apply_changelog(record.key, record.value)
        finally:
            await reader.stop()

    def _apply_changelog(self, key: bytes, value: bytes) -> None:
        if key[:1] == b"s":
            self.stock[key[1:].decode()] = StockLevel.model_validate_json(value)
        else:
            self.holds[key[1:]] = value

    async def _process(self, fetched: dict[TopicPartition, list[object]]) -> None:
        sends: list[asyncio.Future[object]] = []
        for tp, records in fetched.items():
            dirty: set[str] = set()
            for record in records:
                try:
                    if tp.topic == self.requests:
                        await self._request(tp, record, dirty, sends)
                    else:
                        await self._command(tp, record, dirty, sends)
                except InvalidMessageError as exc:
                    sends.append(
                        await self.producer.send(
                            tp.topic + DLQ_SUFFIX,
                            key=record.key,  # type: ignore[attr-defined]
                            value=record.value,  # type: ignore[attr-defined]
                            headers=[(DLQ_REASON_HEADER, exc.reason.encode())],
                        )
                    )
            # One stock record per product per batch: the last state is what matters.
            now_ms = int(time.time() * 1000)
            for product_id in dirty:
                level = self.stock[product_id]
                sends.append(
                    await self._send_changelog(
                        tp.partition, b"s" + product_id.encode(), level.model_dump_json().encode()
                    )
                )
                change = StockChange.of(product_id, level, now_ms)
                sends.append(
                    await self.producer.send(
                        self.settings.topic(STOCK_CHANGES),
                        key=product_id.encode(),
                        value=change.model_dump_json().encode(),
                    )
                )
        # At least once: everything this batch produced is on the broker before the
        # offsets that caused it are committed.
        await asyncio.gather(*sends)
        await self.consumer.commit()

    async def _send_changelog(
        self, partition: int, key: bytes, value: bytes
    ) -> asyncio.Future[object]:
        return await self.producer.send(self.changelog, key=key, value=value, partition=partition)

    async def _request(
        self, tp: TopicPartition, record: object, dirty: set[str], sends: list
    ) -> None:  # type: ignore[type-arg]
        value = record.value  # type: ignore[attr-defined]
        request = decode(OrderRequest, value)
        owner = owner_partition(request.product_id, self.settings.partitions)
        if owner != tp.partition:
            sends.append(
                await self.producer.send(
                    self.requests, key=request.product_id.encode(), value=value, partition=owner
                )
            )
            return
        key = hold_key(request.order_id, request.product_id)
        recorded = self.holds.get(key)
        if recorded is not None:
            hold = Hold.model_validate_json(recorded)
        else:
            now_ms = int(time.time() * 1000)
            line = LineRequest(
                product_id=request.product_id,
                quantity=request.quantity,
                line_count=request.line_count,
            )
            decision, new_level = reserve_line(
                self.stock.get(request.product_id), line, self.settings.max_line_quantity
            )
            if new_level is not None:
                self.stock[request.product_id] = new_level
                dirty.add(request.product_id)
            requested_at_ms = record.timestamp  # type: ignore[attr-defined]
            hold = Hold.of(request, decision, requested_at_ms, now_ms)
            encoded = hold.model_dump_json().encode()
            self.holds[key] = encoded
            sends.append(await self._send_changelog(tp.partition, b"h" + key, encoded))
        event = hold.decision_event()
        sends.append(
            await self.producer.send(
                self.settings.topic(ORDER_EVENTS),
                key=hold.order_id.encode(),
                value=event.model_dump_json().encode(),
            )
        )

    async def _command(
        self, tp: TopicPartition, record: object, dirty: set[str], sends: list
    ) -> None:  # type: ignore[type-arg]
        command = decode(StockCommand, record.value)  # type: ignore[attr-defined]
        owner = owner_partition(command.product_id, self.settings.partitions)
        if owner != tp.partition:
            sends.append(
                await self.producer.send(
                    self.commands,
                    key=command.product_id.encode(),
                    value=record.value,
                    partition=owner,
                )
            )  # type: ignore[attr-defined]
            return
        try:
            level = apply_stock_operation(
                self.stock.get(command.product_id),
                command.operation,
                command.quantity,
                record.offset,  # type: ignore[attr-defined]
            )
        except ValueError as exc:
            raise InvalidMessageError(str(exc)) from None
        if level is not None:
            self.stock[command.product_id] = level
            dirty.add(command.product_id)


def main() -> int:
    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    writer = BatchWriter(settings)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, writer.stopping.set)
        await writer.run()

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
