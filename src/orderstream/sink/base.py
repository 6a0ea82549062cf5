"""The Sink protocol: what any destination of the pipeline's events implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from orderstream.topics import OrderEvent, StockChange


@dataclass(frozen=True)
class LocatedEvent:
    """An order event and where it was read, for the history table."""

    event: OrderEvent
    partition: int
    offset: int


@dataclass
class SinkBatch:
    """Records read from Kafka in offset order, to be written in one transaction."""

    order_events: list[LocatedEvent] = field(default_factory=list)
    stock_changes: list[StockChange] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.order_events) + len(self.stock_changes)


class Sink(Protocol):
    """A destination that writes a batch atomically and idempotently."""

    async def write(self, batch: SinkBatch) -> None:
        """Write ``batch`` so that writing it again changes nothing."""
        ...
