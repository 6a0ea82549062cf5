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
    command = StockCommand(
        product_id=product_id, operation=StockOperation(operation), quantity=quantity
    )
    # Idempotent producer: a retried send is written once, so a command is applied once.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        metadata = await producer.send_and_wait(
            settings.topic(STOCK_COMMANDS),
            key=product_id.encode(),
            value=command.model_dump_json().encode(),
        )
    finally:
        await producer.stop()
    return metadata.partition, metadata.offset
