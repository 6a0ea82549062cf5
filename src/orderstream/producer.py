"""Publishing to the pipeline from tools (CLI, admin routes) and the HTTP intake."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from orderstream import tracing
from orderstream.domain import StockOperation
from orderstream.kafka_clients import durable_producer
from orderstream.settings import Settings
from orderstream.topics import (
    MAX_LINE_COUNT,
    ORDER_REQUESTS,
    STOCK_COMMANDS,
    OrderMetadata,
    OrderRequest,
    StockCommand,
)

log = logging.getLogger(__name__)

# A producer that dies inside a transaction leaves it open, and read_committed consumers
# of its partitions (the stock agent) wait at it until the broker aborts it: this long.
# Nobody else ever takes over a transactional id made unique per process.
TRANSACTION_TIMEOUT_MS = 10_000


async def publish_stock_command(
    settings: Settings, product_id: str, operation: str, quantity: int
) -> tuple[int, int]:
    """Publish one stock set or add; return its partition and offset."""
    command = StockCommand(
        product_id=product_id, operation=StockOperation(operation), quantity=quantity
    )
    [where] = await publish_stock_commands(settings, [command])
    return where


async def publish_stock_commands(
    settings: Settings, commands: Sequence[StockCommand], producer: AIOKafkaProducer | None = None
) -> list[tuple[int, int]]:
    """Publish stock commands in order; return each one's partition and offset.

    With no ``producer``, one is made for these commands and stopped after them.
    """
    own = producer is None
    if producer is None:
        # Idempotent producer: a retried send is written once, so a command is applied once.
        producer = durable_producer(settings)
    try:
        if own:
            await producer.start()
        sent = [
            await producer.send(
                settings.topic(STOCK_COMMANDS),
                key=command.product_id.encode(),
                value=with_command_id(command).model_dump_json().encode(),
            )
            for command in commands
        ]
        delivered = [await future for future in sent]
    finally:
        if own:
            await producer.stop()
    return [(metadata.partition, metadata.offset) for metadata in delivered]


def with_command_id(command: StockCommand) -> StockCommand:
    """Return ``command`` with an id of its own if it changes the stock on sale or the
    catalog and has none: the owner applies it once by that id, wherever it lands."""
    if command.command_id is not None or command.operation.settles_line:
        return command
    return command.model_copy(update={"command_id": uuid.uuid4().hex})


def order_lines(
    order_id: str,
    user_id: str,
    items: Sequence[tuple[str, int]],
    metadata: OrderMetadata | None = None,
) -> list[OrderRequest]:
    """Return an order's ``(product_id, quantity)`` items as its ``order-requests`` lines.

    Every line carries the order's ``metadata`` (addresses, notes): whichever line the
    order agent sees first brings it. Raise ValueError (or pydantic's ValidationError, one)
    for an order no agent could assemble: no item, more than MAX_LINE_COUNT, a product
    twice, an invalid field.
    """
    if not 1 <= len(items) <= MAX_LINE_COUNT:
        raise ValueError(f"an order has 1 to {MAX_LINE_COUNT} lines, not {len(items)}")
    if len({product_id for product_id, _ in items}) != len(items):
        raise ValueError("an order names each product once")
    # Only the metadata's own fields: ``metadata`` may be a whole order (intake.OrderLines).
    extra = metadata.metadata_fields() if metadata is not None else {}
    return [
        OrderRequest(
            order_id=order_id,
            user_id=user_id,
            product_id=product_id,
            quantity=quantity,
            line_count=len(items),
            **extra,
        )
        for product_id, quantity in items
    ]


class OrderLinesPublisher:
    """Publish each order's lines in one Kafka transaction, through one producer.

    Its transactional id is unique to the instance (``<app_id>-intake-<uuid>``): two
    processes never fence each other. A producer handles one transaction at a time, so
    orders queue on a lock. The producer starts on first need and is made again after a
    failure; ``publish`` raises ConnectionError while Kafka does not answer.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._transactional_id = f"{settings.app_id}-intake-{uuid.uuid4().hex}"
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def publish(self, lines: Sequence[OrderRequest]) -> None:
        """Publish ``lines`` (one order's, see ``order_lines``) whole or not at all."""
        topic = self._settings.topic(ORDER_REQUESTS)
        async with self._lock:
            producer = await self._started()
            try:
                async with producer.transaction():
                    sent = [
                        await producer.send(
                            topic,
                            key=line.product_id.encode(),
                            value=line.model_dump_json().encode(),
                            # The caller's trace (the HTTP intake's span), if any.
                            headers=tracing.inject(),
                        )
                        for line in lines
                    ]
                    await asyncio.gather(*sent)
            except BaseException as exc:
                # Whatever state a failure left the producer in (aborted, fenced, fatal;
                # cancelled mid-transaction), the next order starts on a new one.
                await self._discard()
                if isinstance(exc, KafkaError | OSError):
                    bootstrap = self._settings.kafka_bootstrap
                    raise ConnectionError(f"Kafka at {bootstrap}: {exc!r}") from exc
                raise

    async def close(self) -> None:
        """Stop the producer, aborting nothing: a transaction in flight ends first."""
        async with self._lock:
            await self._discard()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = durable_producer(
                self._settings,
                transactional_id=self._transactional_id,
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                raise ConnectionError(
                    f"Kafka at {self._settings.kafka_bootstrap}: {exc!r}"
                ) from exc
            self._producer = producer
        return self._producer

    async def _discard(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except KafkaError as exc:
                log.warning(
                    "transactional producer %s did not stop cleanly: %r",
                    self._transactional_id,
                    exc,
                )


async def publish_order_lines(
    settings: Settings, order_id: str, user_id: str, items: Sequence[tuple[str, int]]
) -> int:
    """Publish an order's ``(product_id, quantity)`` items in one transaction; return how many.

    For tools: a transactional producer for this one order. A long-lived process keeps
    an ``OrderLinesPublisher`` instead (the HTTP intake does).
    """
    lines = order_lines(order_id, user_id, items)
    publisher = OrderLinesPublisher(settings)
    try:
        await publisher.publish(lines)
    finally:
        await publisher.close()
    return len(lines)
