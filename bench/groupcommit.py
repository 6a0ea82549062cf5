"""Baseline "PostgreSQL group commit": a single writer per partition, state in PostgreSQL.

    python -m bench.groupcommit --bootstrap HOST:PORT --topic T --partitions N --schema S
    (PostgreSQL from $BENCH_DATABASE_URL)

What a careful engineer builds without changelog-backed state: one asyncio task per
partition of ``order-requests`` (the same topic, keys and JSON as orderstream) decides a
fetched batch against an in-memory stock figure, then commits the batch's decisions
(orders rows), the new stock and the next offset to read in ONE PostgreSQL transaction.
Exactly once without Kafka's group commits: the offsets live in PostgreSQL, are read back
at start, and the consumer seeks there, so a crash replays exactly the batches whose
transaction never committed, against the stock that PostgreSQL still holds.

An order id decided twice has one effect: the in-batch set skips a repeat within a batch,
and ``ON CONFLICT DO NOTHING`` one decided in an earlier batch; if that drops a row, the
batch is rolled back and decided again without the ids already in the table, so a
duplicate never takes stock.

Each committed batch is reported on stdout as ``commit <monotonic time> <partition>
<rows> <next offset>``, after its COMMIT returned; ``ready <monotonic time>`` is printed
once every consumer is positioned, just before the first fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import psycopg
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg.rows import TupleRow

from orderstream.domain import owner_partition

MAX_BATCH = 10_000  # records decided and committed per transaction, at most

OFFSETS_DDL = """
    CREATE TABLE consumer_offsets (
        topic text NOT NULL,
        partition int NOT NULL,
        next_offset bigint NOT NULL,
        PRIMARY KEY (topic, partition)
    )
"""
INSERT_ORDERS = """
    INSERT INTO orders (order_id, user_id, product_id, status)
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[])
    ON CONFLICT (order_id) DO NOTHING
"""
UPDATE_STOCK = """
    UPDATE products AS p SET stock = v.stock
    FROM unnest(%s::text[], %s::int[]) AS v (product_id, stock)
    WHERE p.product_id = v.product_id
"""
STORE_OFFSET = """
    INSERT INTO consumer_offsets (topic, partition, next_offset) VALUES (%s, %s, %s)
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
"""
EXISTING = "SELECT order_id FROM orders WHERE order_id = ANY(%s)"

# json.loads without its per-call encoding sniffing and whitespace check: the values are
# UTF-8 JSON objects (the public contract); anything else is invalid either way.
_parse = json.JSONDecoder().raw_decode

Connection = psycopg.AsyncConnection[TupleRow]


class _DuplicateError(Exception):
    """ON CONFLICT dropped a row: an order id of this batch was decided before."""


@dataclass
class Decided:
    """One batch's decisions, as columns for unnest()."""

    order_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    product_ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)  # stock before, products changed


def decide(
    records: list[bytes | None], stock: dict[str, int], already: frozenset[str] = frozenset()
) -> Decided:
    """Decide a batch in order against ``stock`` (changed in place); skip ids in ``already``."""
    out = Decided()
    seen: set[str] = set(already)
    for value in records:
        try:
            request = _parse(value.decode())[0]  # type: ignore[union-attr]
            order_id, user_id = request["order_id"], request["user_id"]
            product_id, quantity = request["product_id"], request["quantity"]
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            continue  # the bench never sends one; a real service would dead-letter it
        if order_id in seen:
            continue
        seen.add(order_id)
        left = stock.get(product_id)
        if left is not None and isinstance(quantity, int) and 1 <= quantity <= left:
            out.before.setdefault(product_id, left)
            stock[product_id] = left - quantity
            status = "RESERVED"
        else:
            status = "REJECTED"
        out.order_ids.append(order_id)
        out.user_ids.append(user_id)
        out.product_ids.append(product_id)
        out.statuses.append(status)
    return out


async def _commit(conn: Connection, tp: TopicPartition, batch: Batch) -> None:
    """Commit a batch's orders, stock and next offset in one transaction, and report it."""
    decided, changed = batch.decided, list(batch.decided.before)
    async with conn.transaction():
        async with conn.pipeline():
            inserted = await conn.execute(
                INSERT_ORDERS,
                (decided.order_ids, decided.user_ids, decided.product_ids, decided.statuses),
            )
            if changed:
                # The stock as this batch left it: a later batch may have moved it already.
                await conn.execute(UPDATE_STOCK, (changed, [batch.after[p] for p in changed]))
            await conn.execute(STORE_OFFSET, (tp.topic, tp.partition, batch.next_offset))
        if inserted.rowcount != len(decided.order_ids):
            raise _DuplicateError  # rolls the transaction back
    print(
        f"commit {time.monotonic():.6f} {tp.partition} {len(decided.order_ids)} "
        f"{batch.next_offset}",
        flush=True,
    )


@dataclass
class Batch:
    """A fetched batch: its values, what deciding it did, the offset after it."""

    values: list[bytes | None]
    next_offset: int
    decided: Decided
    after: dict[str, int]  # stock of the products it changed, as it left them


def _decide(
    values: list[bytes | None],
    next_offset: int,
    stock: dict[str, int],
    already: frozenset[str] = frozenset(),
) -> Batch:
    decided = decide(values, stock, already)
    return Batch(values, next_offset, decided, {p: stock[p] for p in decided.before})


async def _partition_writer(
    conn: Connection,
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    stock: dict[str, int],
) -> None:
    """Decide batch n+1 while batch n commits; never start a commit before the last ended.

    Deciding runs in this process and committing mostly in PostgreSQL's, so the two
    overlap. If a commit fails, memory is ahead of PostgreSQL: the process stops, and a
    restart reads stock and offsets back. If a commit finds an id decided before (a
    duplicate request), the batches in flight are undone in memory and redone, one at
    a time, without the ids already in the table.
    """
    inflight: tuple[asyncio.Task[None], Batch] | None = None
    while True:
        records = (await consumer.getmany(tp, timeout_ms=50, max_records=MAX_BATCH)).get(tp)
        if not records:
            if inflight is not None and inflight[0].done():
                await _settle(conn, tp, stock, inflight, None)
                inflight = None
            continue
        batch = _decide([r.value for r in records], records[-1].offset + 1, stock)
        if inflight is not None:
            batch = await _settle(conn, tp, stock, inflight, batch) or batch
        inflight = (asyncio.create_task(_commit(conn, tp, batch)), batch)


async def _settle(
    conn: Connection,
    tp: TopicPartition,
    stock: dict[str, int],
    inflight: tuple[asyncio.Task[None], Batch],
    following: Batch | None,
) -> Batch | None:
    """Wait for the commit in flight; on a duplicate, redo it and re-decide ``following``."""
    task, batch = inflight
    try:
        await task
        return None
    except _DuplicateError:
        print(f"redo {time.monotonic():.6f} {tp.partition}", flush=True)
    # Undo newest first, so each product ends at its value before the oldest batch.
    if following is not None:
        stock.update(following.decided.before)
    stock.update(batch.decided.before)
    await _commit(conn, tp, await _redecide(conn, batch, stock))
    # Decided again after the commit above: its ids count as decided before too.
    return None if following is None else await _redecide(conn, following, stock)


async def _redecide(conn: Connection, batch: Batch, stock: dict[str, int]) -> Batch:
    """Decide ``batch`` again, without the order ids that the orders table already has."""
    cursor = await conn.execute(EXISTING, (batch.decided.order_ids,))
    already = frozenset(row[0] for row in await cursor.fetchall())
    return _decide(batch.values, batch.next_offset, stock, already)


async def _connect(url: str, schema: str) -> Connection:
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, options=f"-c search_path={schema}"
    )


async def run(args: argparse.Namespace) -> None:
    url = os.environ["BENCH_DATABASE_URL"]
    admin = await _connect(url, args.schema)
    cursor = await admin.execute(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = %s", (args.topic,)
    )
    offsets: dict[int, int] = dict(await cursor.fetchall())
    stocks: dict[int, dict[str, int]] = {p: {} for p in range(args.partitions)}
    cursor = await admin.execute("SELECT product_id, stock FROM products")
    for product_id, left in await cursor.fetchall():
        stocks[owner_partition(product_id, args.partitions)][product_id] = left
    await admin.close()

    consumers, writers = [], []
    for partition in range(args.partitions):
        tp = TopicPartition(args.topic, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=args.bootstrap,
            group_id=None,  # no group, no Kafka offset commits: PostgreSQL holds the offsets
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024**2,
            fetch_max_bytes=64 * 1024**2,
        )
        await consumer.start()
        consumer.assign([tp])
        if partition in offsets:
            consumer.seek(tp, offsets[partition])
        else:
            await consumer.seek_to_beginning(tp)
        consumers.append(consumer)
        writers.append((await _connect(url, args.schema), consumer, tp, stocks[partition]))
    print(f"ready {time.monotonic():.6f}", flush=True)
    try:
        async with asyncio.TaskGroup() as group:
            for conn, consumer, tp, stock in writers:
                group.create_task(_partition_writer(conn, consumer, tp, stock))
    finally:
        for consumer in consumers:
            await consumer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--schema", required=True)
    args = parser.parse_args()
    # SIGTERM ends the process at once: every committed batch is already durable.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
