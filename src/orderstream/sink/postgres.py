"""The PostgreSQL sink: one transaction per batch, idempotent and monotonic."""

from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool

from orderstream.sink.base import RecordRejectedError, SinkBatch, SinkUnavailableError
from orderstream.sink.rows import batch_rows

# A dead letter's reason header carries this much of the database's error at most.
REASON_MAX_CHARS = 500

# Rows are copied (COPY, one round trip per table) into session-local staging tables,
# then merged with one INSERT ... SELECT each: at thousands of decisions per second this
# is several times cheaper than a statement per row. Staging tables empty themselves at
# every commit. Times are staged as the messages carry them (epoch milliseconds) and
# converted by PostgreSQL (sink/rows.py builds the rows).
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_orders (
    order_id text, user_id text, status text, reason text, detail text, seq integer,
    created_ms bigint, updated_ms bigint, product_id text, quantity integer,
    unit_price numeric, line_currency text,
    -- orders.total (numeric(26, 4)) would round a total of more places: refused here, so that
    -- the record is dead-lettered rather than stored as another amount.
    total numeric CHECK (total = round(total, 4)), currency text,
    shipping_address jsonb, billing_address jsonb, notes text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_items (
    order_id text, product_id text, quantity integer, status text, seq integer,
    line_status text, line_reason text, unit_price numeric, currency text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_stock (
    product_id text, available bigint, reserved bigint, sold bigint, total_in bigint,
    version bigint, updated_ms bigint, price numeric, currency text, max_per_user integer
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_events (
    order_id text, seq integer, status text, reason text, product_id text, quantity integer,
    requested_ms bigint, occurred_ms bigint, kafka_partition integer, kafka_offset bigint,
    detail text, actor text
) ON COMMIT DELETE ROWS;
"""
_COPY_ORDERS = (
    "COPY stage_orders (order_id, user_id, status, reason, detail, seq, created_ms,"
    " updated_ms, product_id, quantity, unit_price, line_currency, total, currency,"
    " shipping_address, billing_address, notes) FROM STDIN"
)
_COPY_EVENTS = (
    "COPY stage_events (order_id, seq, status, reason, product_id, quantity, requested_ms,"
    " occurred_ms, kafka_partition, kafka_offset, detail, actor) FROM STDIN"
)
# An order's row only moves forward: a replayed or late event (lower seq) changes neither
# its status nor its time. What an order keeps once known (its total, its metadata) is
# never erased by an event without it, and a late event may still fill it in.
_MERGE_ORDERS = """
INSERT INTO orders AS o (order_id, user_id, status, reason, detail, seq, created_at,
                         updated_at, total, currency, shipping_address, billing_address, notes)
SELECT order_id, user_id, status, reason, detail, seq, to_timestamp(created_ms / 1000.0),
       to_timestamp(updated_ms / 1000.0), total, CASE WHEN total IS NOT NULL THEN currency END,
       shipping_address, billing_address, notes
FROM stage_orders
ON CONFLICT (order_id) DO UPDATE
SET status = CASE WHEN o.seq < EXCLUDED.seq THEN EXCLUDED.status ELSE o.status END,
    reason = CASE WHEN o.seq < EXCLUDED.seq THEN EXCLUDED.reason ELSE o.reason END,
    detail = CASE WHEN o.seq < EXCLUDED.seq THEN EXCLUDED.detail ELSE o.detail END,
    updated_at = CASE WHEN o.seq < EXCLUDED.seq THEN EXCLUDED.updated_at ELSE o.updated_at END,
    seq = GREATEST(o.seq, EXCLUDED.seq),
    -- A total and its currency move together.
    total = CASE WHEN EXCLUDED.total IS NOT NULL AND (o.seq < EXCLUDED.seq OR o.total IS NULL)
                 THEN EXCLUDED.total ELSE o.total END,
    currency = CASE WHEN EXCLUDED.total IS NOT NULL AND (o.seq < EXCLUDED.seq OR o.total IS NULL)
                    THEN EXCLUDED.currency ELSE o.currency END,
    shipping_address = CASE WHEN o.seq < EXCLUDED.seq
        THEN coalesce(EXCLUDED.shipping_address, o.shipping_address)
        ELSE coalesce(o.shipping_address, EXCLUDED.shipping_address) END,
    billing_address = CASE WHEN o.seq < EXCLUDED.seq
        THEN coalesce(EXCLUDED.billing_address, o.billing_address)
        ELSE coalesce(o.billing_address, EXCLUDED.billing_address) END,
    notes = CASE WHEN o.seq < EXCLUDED.seq
        THEN coalesce(EXCLUDED.notes, o.notes) ELSE coalesce(o.notes, EXCLUDED.notes) END
-- A replay that brings nothing new writes nothing.
WHERE o.seq < EXCLUDED.seq
   OR (o.total IS NULL AND EXCLUDED.total IS NOT NULL)
   OR (o.shipping_address IS NULL AND EXCLUDED.shipping_address IS NOT NULL)
   OR (o.billing_address IS NULL AND EXCLUDED.billing_address IS NOT NULL)
   OR (o.notes IS NULL AND EXCLUDED.notes IS NOT NULL)
"""
# An order's items move with its seq, like its row: `status` is the order's status, the
# line's own is known only from an event that lists the order's items (NULL otherwise).
# A line's unit price is fixed when it is decided: kept once known, filled in late.
_ON_ITEM_CONFLICT = """
ON CONFLICT (order_id, product_id) DO UPDATE
SET status = CASE WHEN i.seq < EXCLUDED.seq THEN EXCLUDED.status ELSE i.status END,
    line_status = CASE WHEN i.seq < EXCLUDED.seq THEN EXCLUDED.line_status ELSE i.line_status END,
    line_reason = CASE WHEN i.seq < EXCLUDED.seq THEN EXCLUDED.line_reason ELSE i.line_reason END,
    seq = GREATEST(i.seq, EXCLUDED.seq),
    unit_price = coalesce(i.unit_price, EXCLUDED.unit_price),
    currency = CASE WHEN i.unit_price IS NULL THEN EXCLUDED.currency ELSE i.currency END
WHERE i.seq < EXCLUDED.seq OR (i.unit_price IS NULL AND EXCLUDED.unit_price IS NOT NULL)
"""
# The hot path: a single-line event's item rides on its order's staged row.
_MERGE_ITEMS = (
    """
INSERT INTO order_items AS i (order_id, product_id, quantity, status, seq, unit_price, currency)
SELECT order_id, product_id, quantity, status, seq, unit_price,
       CASE WHEN unit_price IS NOT NULL THEN line_currency END
FROM stage_orders
WHERE product_id IS NOT NULL
"""
    + _ON_ITEM_CONFLICT
)
# Events that list their items (multi-line orders): one staged row per item.
_COPY_ITEMS = (
    "COPY stage_items (order_id, product_id, quantity, status, seq, line_status, line_reason,"
    " unit_price, currency) FROM STDIN"
)
_MERGE_LISTED_ITEMS = (
    """
INSERT INTO order_items AS i (order_id, product_id, quantity, status, seq, line_status,
                              line_reason, unit_price, currency)
SELECT order_id, product_id, quantity, status, seq, line_status, line_reason, unit_price,
       CASE WHEN unit_price IS NOT NULL THEN currency END
FROM stage_items
"""
    + _ON_ITEM_CONFLICT
)
# An event is history: written once, never changed.
_MERGE_EVENTS = """
INSERT INTO order_events (order_id, seq, status, reason, product_id, quantity,
                          requested_at, occurred_at, kafka_partition, kafka_offset, detail, actor)
SELECT order_id, seq, status, reason, product_id, quantity, to_timestamp(requested_ms / 1000.0),
       to_timestamp(occurred_ms / 1000.0), kafka_partition, kafka_offset, detail, actor
FROM stage_events
ON CONFLICT (order_id, seq) DO NOTHING
"""
_COPY_STOCK = (
    "COPY stage_stock (product_id, available, reserved, sold, total_in, version, updated_ms,"
    " price, currency, max_per_user) FROM STDIN"
)
# A snapshot carries the whole catalog (no price: none): the newest version is taken whole.
_MERGE_STOCK = """
INSERT INTO product_stock (product_id, available, reserved, sold, total_in, version, updated_at,
                           price, currency, max_per_user)
SELECT product_id, available, reserved, sold, total_in, version, to_timestamp(updated_ms / 1000.0),
       price, currency, max_per_user
FROM stage_stock
ON CONFLICT (product_id) DO UPDATE
SET available = EXCLUDED.available, reserved = EXCLUDED.reserved, sold = EXCLUDED.sold,
    total_in = EXCLUDED.total_in, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
    price = EXCLUDED.price, currency = EXCLUDED.currency, max_per_user = EXCLUDED.max_per_user
WHERE product_stock.version < EXCLUDED.version
"""


class PostgresSink:
    """Write batches of order events and stock changes to PostgreSQL."""

    def __init__(self, pool: AsyncConnectionPool, connection_timeout_s: float = 5.0) -> None:
        self._pool = pool
        # Bounds a write's wait for a connection while PostgreSQL is down, so that the
        # caller's retry loop gets control back (to log, poll Kafka, or stop).
        self._connection_timeout_s = connection_timeout_s

    async def write(self, batch: SinkBatch) -> None:
        """Write ``batch`` in one transaction.

        Errors by class: a DataError or an IntegrityError is a record's fault (raised as
        RecordRejectedError); any other database error, whatever the records, is raised
        as SinkUnavailableError: PostgreSQL down, or its schema not as expected.
        """
        try:
            await self._write(batch)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise RecordRejectedError(describe(exc)) from exc
        except psycopg.Error as exc:  # OperationalError, PoolTimeout, ProgrammingError, ...
            raise SinkUnavailableError(describe(exc)) from exc

    async def _write(self, batch: SinkBatch) -> None:
        order_rows, item_rows, event_rows, stock_rows = batch_rows(batch)
        async with (
            self._pool.connection(timeout=self._connection_timeout_s) as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            await cur.execute(_STAGING)
            if event_rows:
                async with cur.copy(_COPY_ORDERS) as copy:
                    for row in order_rows:
                        await copy.write_row(row)
                async with cur.copy(_COPY_EVENTS) as copy:
                    for row in event_rows:
                        await copy.write_row(row)
                if item_rows:
                    async with cur.copy(_COPY_ITEMS) as copy:
                        for row in item_rows:
                            await copy.write_row(row)
                # Orders first: order_items references them.
                await cur.execute(_MERGE_ORDERS)
                await cur.execute(_MERGE_ITEMS)
                if item_rows:
                    await cur.execute(_MERGE_LISTED_ITEMS)
                await cur.execute(_MERGE_EVENTS)
            if stock_rows:
                # Spread over many products, a batch carries hundreds of snapshots.
                async with cur.copy(_COPY_STOCK) as copy:
                    for row in stock_rows:
                        await copy.write_row(row)
                await cur.execute(_MERGE_STOCK)


def describe(exc: BaseException) -> str:
    """Return an error as one bounded line: its class and the first line of its message."""
    message = str(exc).strip().partition("\n")[0]
    return f"{type(exc).__name__}: {message}"[:REASON_MAX_CHARS]
