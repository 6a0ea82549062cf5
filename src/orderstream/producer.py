"""Publishing commands to the pipeline from tools (CLI, admin routes)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from orderstream.domain import StockOperation
from orderstream.settings import Settings
from orderstream.topics import STOCK_COMMANDS, StockCommand


async def publish_stock_command(
    settings: Settings, product_id: str, operation: str, quantity: int
) -> tuple[int, int]:
    """Publish one stock command; return its partition and offset."""
    [where] = await publish_stock_commands(settings, [(product_id, operation, quantity)])
    return where


async def publish_stock_commands(
    settings: Settings, commands: list[tuple[str, str, int]]
) -> list[tuple[int, int]]:
    """Publish (product, operation, quantity) commands; return each one's partition, offset."""
    # Idempotent producer: a retried send is written once, so a command is applied once.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [
            await producer.send(
                settings.topic(STOCK_COMMANDS),
                key=product_id.encode(),
                value=StockCommand(
                    product_id=product_id,
                    operation=StockOperation(operation),
                    quantity=quantity,
                )
                .model_dump_json()
                .encode(),
            )
            for product_id, operation, quantity in commands
        ]
        delivered = [await future for future in sent]
    finally:
        await producer.stop()
    return [(metadata.partition, metadata.offset) for metadata in delivered]
