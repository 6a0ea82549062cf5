"""The stock processor's seam types: a source record and its partition's state in, effects out.

agents/stock/processor.py returns the effects, agents/stock/store.py appends them to the changelog,
and agents/stock/agent.py sends the outputs once the changelog has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orderstream.domain import StockEvent, StockLevel
from orderstream.tables import Hold

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """What the processor needs of one consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()  # the trace context, if any


@dataclass(frozen=True, slots=True)
class Output:
    """A record to send once the changelog holds the effects that caused it."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None  # None: Kafka's default partitioner, by key
    headers: Headers | None = None
    timestamp_ms: int | None = None  # None: the time it is sent


@dataclass(slots=True)
class Effects:
    """What processing one record produced, in the order it happened."""

    holds: list[tuple[bytes, Hold]] = field(default_factory=list)
    stock: list[tuple[str, StockEvent]] = field(default_factory=list)
    # (user, product, quantity): what a user holds of a product grows (reserved) or
    # shrinks (released); a sale leaves it as it is (the user still bought it).
    held: list[tuple[str, str, int]] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)


class PartitionView(Protocol):
    """The state of one partition, as the processor may read it."""

    def level(self, product_id: str) -> StockLevel | None:
        """Return a product's stock level, or None if it never had stock."""
        ...

    def hold(self, key: bytes) -> bytes | None:
        """Return the encoded hold under ``key``, if any."""
        ...

    def held(self, user_id: str, product_id: str) -> int:
        """Return what a user holds (reserved) or bought of a product."""
        ...
