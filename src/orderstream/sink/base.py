"""The Sink protocol: what any destination of the pipeline's events implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from orderstream.codec import WireOrderEvent, WireStockChange
from orderstream.errors import OrderstreamError

T = TypeVar("T")


class RecordRejectedError(OrderstreamError):
    """The destination refused a record of the batch: that record can never be written."""

    retriable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SinkUnavailableError(OrderstreamError):
    """The destination cannot take any write now: the same batch may land later."""

    retriable = True


@dataclass(frozen=True)
class LocatedEvent:
    """An order event and where it was read, for the history table."""

    event: WireOrderEvent
    partition: int
    offset: int


@dataclass
class SinkBatch:
    """Records read from Kafka in offset order, to be written in one transaction."""

    order_events: list[LocatedEvent] = field(default_factory=list)
    stock_changes: list[WireStockChange] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.order_events) + len(self.stock_changes)


class Sink(Protocol):
    """A destination that writes a batch atomically and idempotently."""

    async def write(self, batch: SinkBatch) -> None:
        """Write ``batch`` so that writing it again changes nothing.

        Raise RecordRejectedError when the destination refuses a record of the batch (the
        whole batch is then not written), SinkUnavailableError when it takes no write now.
        """
        ...


async def write_isolating(
    items: Sequence[T], write: Callable[[Sequence[T]], Awaitable[None]]
) -> list[tuple[T, RecordRejectedError]]:
    """Write ``items``, halving a refused part until each refused item stands alone.

    Every item that can be written is written, in order; return the refused items with
    why. ``write`` writes all of its items or none, and raises RecordRejectedError when it
    refuses them. The whole sequence goes first: only a refusal costs more writes.
    """
    return await _isolate(items, write, known_refused=False)


async def _isolate(
    items: Sequence[T],
    write: Callable[[Sequence[T]], Awaitable[None]],
    *,
    known_refused: bool,
) -> list[tuple[T, RecordRejectedError]]:
    if not items:
        return []
    # A refused part whose first half landed holds its culprit in the second half: split
    # that half without trying it whole. A single item is always tried, for its reason.
    if len(items) == 1 or not known_refused:
        try:
            await write(items)
        except RecordRejectedError as exc:
            if len(items) == 1:
                return [(items[0], exc)]
        else:
            return []
    middle = len(items) // 2
    first = await _isolate(items[:middle], write, known_refused=False)
    second = await _isolate(items[middle:], write, known_refused=not first)
    return first + second
