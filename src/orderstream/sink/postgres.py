"""The PostgreSQL sink: one transaction per batch, idempotent and monotonic."""

from __future__ import annotations

from datetime import UTC, datetime

from psycopg_pool import AsyncConnectionPool

from orderstream.sink.base import LocatedEvent, SinkBatch
from orderstream.topics import StockChange

# An order's row only moves forward: a replayed or late event (lower seq) changes nothing.
_UPSERT_ORDER = """
INSERT INTO orders (order_id, user_id, status, reason, detail, seq, created_at, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (order_id) DO UPDATE
SET status = EXCLUDED.status, reason = EXCLUDED.reason, detail = EXCLUDED.detail,
    seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at
WHERE orders.seq < EXCLUDED.seq
"""
_UPSERT_ITEM = """
INSERT INTO order_items (order_id, product_id, quantity, status)
VALUES (%s, %s, %s, %s)
ON CONFLICT (order_id, product_id) DO UPDATE SET status = EXCLUDED.status
WHERE order_items.status IS DISTINCT FROM EXCLUDED.status
"""
_INSERT_EVENT = """
INSERT INTO order_events (order_id, seq, status, reason, product_id, quantity,
                          requested_at, occurred_at, kafka_partition, kafka_offset)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (order_id, seq) DO NOTHING
"""
_UPSERT_STOCK = """
INSERT INTO product_stock (product_id, available, reserved, sold, total_in, version, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (product_id) DO UPDATE
SET available = EXCLUDED.available, reserved = EXCLUDED.reserved, sold = EXCLUDED.sold,
    total_in = EXCLUDED.total_in, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
WHERE product_stock.version < EXCLUDED.version
"""


class PostgresSink:
    """Write batches of order events and stock changes to PostgreSQL."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def write(self, batch: SinkBatch) -> None:
        """Write ``batch`` in one transaction."""
        latest_orders = _latest_per_order(batch.order_events)
        latest_stock = _latest_per_product(batch.stock_changes)
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if latest_orders:
                # Orders first: order_items references them.
                await cur.executemany(_UPSERT_ORDER, [_order_row(e) for e in latest_orders])
                await cur.executemany(_UPSERT_ITEM, [_item_row(e) for e in latest_orders])
            if batch.order_events:
                await cur.executemany(_INSERT_EVENT, [_event_row(e) for e in batch.order_events])
            if latest_stock:
                await cur.executemany(_UPSERT_STOCK, [_stock_row(c) for c in latest_stock])


def _latest_per_order(events: list[LocatedEvent]) -> list[LocatedEvent]:
    """Keep each order's highest-seq event (the first seen among equals)."""
    latest: dict[str, LocatedEvent] = {}
    for located in events:
        current = latest.get(located.event.order_id)
        if current is None or located.event.seq > current.event.seq:
            latest[located.event.order_id] = located
    return list(latest.values())


def _latest_per_product(changes: list[StockChange]) -> list[StockChange]:
    """Keep each product's highest-version stock snapshot."""
    latest: dict[str, StockChange] = {}
    for change in changes:
        current = latest.get(change.product_id)
        if current is None or change.version > current.version:
            latest[change.product_id] = change
    return list(latest.values())


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _order_row(located: LocatedEvent) -> tuple[object, ...]:
    e = located.event
    reason = e.reason.value if e.reason else None
    return (
        e.order_id, e.user_id, e.status.value, reason, e.detail, e.seq,
        _ts(e.requested_at_ms), _ts(e.decided_at_ms),
    )  # fmt: skip


def _item_row(located: LocatedEvent) -> tuple[object, ...]:
    e = located.event
    return (e.order_id, e.product_id, e.quantity, e.status.value)


def _event_row(located: LocatedEvent) -> tuple[object, ...]:
    e = located.event
    reason = e.reason.value if e.reason else None
    return (
        e.order_id, e.seq, e.status.value, reason, e.product_id, e.quantity,
        _ts(e.requested_at_ms), _ts(e.decided_at_ms), located.partition, located.offset,
    )  # fmt: skip


def _stock_row(c: StockChange) -> tuple[object, ...]:
    return (
        c.product_id, c.available, c.reserved, c.sold, c.total_in, c.version,
        _ts(c.changed_at_ms),
    )  # fmt: skip
