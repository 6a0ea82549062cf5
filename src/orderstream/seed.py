"""A sample catalog for a new shop: products to buy, each with a stock and a price."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from orderstream.domain import StockOperation
from orderstream.kafka_clients import durable_producer
from orderstream.producer import publish_stock_commands
from orderstream.settings import Settings
from orderstream.topics import StockCommand

# Commands sent before their acknowledgements are awaited: progress is told per chunk.
CHUNK = 500


def sample_price(number: int) -> Decimal:
    """Return the price of sample product ``number``: 2 places, 1.99 to 99.98, by number."""
    cents = 199 + (number * 1_499) % 9_800
    return Decimal(cents).scaleb(-2)  # exact, and 15.00 keeps its two places


def sample_catalog(
    settings: Settings, products: int, stock: int, prefix: str
) -> list[StockCommand]:
    """Return the stock sets of ``products`` sample products, ids ``<prefix>001`` on.

    Each names its whole catalog entry (stock, price, no per-user limit of its own), so
    that publishing them again puts the samples back as they were.
    """
    width = max(3, len(str(products)))
    return [
        StockCommand(
            product_id=f"{prefix}{number:0{width}d}",
            operation=StockOperation.SET,
            quantity=stock,
            price=sample_price(number),
            currency=settings.currency,
            max_per_user=0,
        )
        for number in range(1, products + 1)
    ]


async def publish_catalog(
    settings: Settings, commands: Sequence[StockCommand], progress: Callable[[int], None]
) -> None:
    """Publish ``commands`` through one producer, calling ``progress(done)`` per chunk."""
    # As publish_stock_commands' own: idempotent, so a retried send is applied once.
    producer = durable_producer(settings, linger_ms=5)
    try:
        await producer.start()  # inside: a producer that failed to start is stopped too
        for start in range(0, len(commands), CHUNK):
            chunk = commands[start : start + CHUNK]
            await publish_stock_commands(settings, chunk, producer)
            progress(start + len(chunk))
    finally:
        await producer.stop()
