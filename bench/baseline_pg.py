"""Baseline "PostgreSQL row lock": the classic order service.

Each order is one durable transaction that locks the product row, checks and
decrements its stock and writes the order. Correct by construction, but every
decision for a product waits for the previous one's commit (its WAL flush), so a hot
product is decided one fsync at a time, however many clients there are.
"""

from __future__ import annotations

import contextlib

from bench.baseline_common import (
    Connection,
    Decide,
    check_final_stock,
    check_orders,
    connect,
    event_loop_name,
    load_products,
    measure,
    products_stock,
    recreate_schema,
    server_settings,
)
from bench.result import Result
from bench.workload import Request, Workload, combine

SYSTEM = "pg-rowlock"
SCHEMA = "bench_rowlock"

LOCK_STOCK = "SELECT stock FROM products WHERE product_id = %s FOR UPDATE"
TAKE_STOCK = "UPDATE products SET stock = stock - %s WHERE product_id = %s"
INSERT_ORDER = "INSERT INTO orders (order_id, user_id, product_id, status) VALUES (%s, %s, %s, %s)"


def _decider(conn: Connection) -> Decide:
    async def decide(request: Request) -> None:
        # Explicit BEGIN ... COMMIT at the default isolation and synchronous_commit=on:
        # the row lock is held until the commit is flushed, as in a real order service.
        async with conn.transaction():
            cursor = await conn.execute(LOCK_STOCK, (request.product_id,))
            row = await cursor.fetchone()
            reserved = row is not None and row[0] >= request.quantity
            if reserved:
                await conn.execute(TAKE_STOCK, (request.quantity, request.product_id))
            status = "RESERVED" if reserved else "REJECTED"
            await conn.execute(
                INSERT_ORDER, (request.order_id, request.user_id, request.product_id, status)
            )

    return decide


async def _check(conn: Connection, workload: Workload) -> list[str]:
    problems, reserved = await check_orders(conn, workload)
    return problems + check_final_stock(workload, await products_stock(conn), reserved)


async def run_pg_rowlock(
    workload: Workload,
    latency_workload: Workload,
    latency_rate: float,
    database_url: str,
    clients: int = 32,
) -> Result:
    """Decide `workload` flat out, then `latency_workload` at a fixed rate; check both."""
    everything = combine(workload, latency_workload)
    async with contextlib.AsyncExitStack() as stack:
        admin = await connect(database_url, SCHEMA)
        stack.push_async_callback(admin.close)
        await recreate_schema(admin, SCHEMA)
        await load_products(admin, everything.stock)
        connections = []
        for _ in range(clients):  # opened before the clock starts: setup is not measured
            conn = await connect(database_url, SCHEMA)
            stack.push_async_callback(conn.close)
            connections.append(conn)
        result = await measure(
            SYSTEM,
            workload,
            latency_workload,
            latency_rate,
            [_decider(c) for c in connections],
            database_url,
            SCHEMA,
        )
        result.problems = await _check(admin, everything)
        result.correct = not result.problems
        result.settings |= {
            "isolation": "read committed",
            "event_loop": event_loop_name(),
            **await server_settings(admin),
        }
    return result
