"""Read PostgreSQL for the audit in one snapshot: stock, order items, the order checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from orderstream.audit.lifecycle import (
    check_confirmed_not_released,
    check_one_terminal_state,
    check_sold_once,
    committed_per_product,
)
from orderstream.audit.reader import Reader
from orderstream.audit.report import Check, StockFigures
from orderstream.audit.stock import HOLDING_STATUSES
from orderstream.db import connection_kwargs
from orderstream.domain import OrderStatus
from orderstream.settings import Settings


@dataclass
class PostgresFigures:
    read_at: datetime
    stock: dict[str, StockFigures]
    held: dict[str, int]  # product -> quantity of its holding order items
    committed: dict[str, int]  # product -> quantity of its COMMITTED order lines
    order_checks: list[Check]


async def read_postgres(settings: Settings) -> PostgresFigures:
    """Read every figure the checks need from one snapshot of PostgreSQL."""
    async with await psycopg.AsyncConnection.connect(
        settings.database_url.get_secret_value(), **connection_kwargs(settings)
    ) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            reader = Reader(cur)
            # The snapshot is taken by the transaction's first statement: this one.
            (row,) = await reader.rows("snapshot", "SELECT now() AS read_at")
            read_at: datetime = row["read_at"]
            stock = {
                r["product_id"]: StockFigures(
                    r["available"], r["reserved"], r["sold"], r["total_in"], r["version"]
                )
                for r in await reader.rows(
                    "product stock",
                    "SELECT product_id, available, reserved, sold, total_in, version"
                    " FROM product_stock",
                )
            }
            held = {
                r["product_id"]: int(r["held"])
                for r in await reader.rows(
                    "held order items per product",
                    "SELECT product_id, sum(quantity) AS held FROM order_items"
                    " WHERE status = ANY(%s) GROUP BY product_id",
                    (list(HOLDING_STATUSES),),
                )
            }
            committed = await committed_per_product(reader)
            orders = await reader.count("orders", "SELECT count(*) AS n FROM orders")
            with_events = await reader.count(
                "orders with events", "SELECT count(DISTINCT order_id) AS n FROM order_events"
            )
            checks = [
                await _check_orders(reader, orders),
                await _check_events(reader, with_events),
                await check_one_terminal_state(reader, with_events),
                await check_sold_once(reader, orders, settings.audit_in_flight_max_s),
                await check_confirmed_not_released(reader, orders, settings.audit_in_flight_max_s),
            ]
    return PostgresFigures(read_at, stock, held, committed, checks)


async def _check_orders(reader: Reader, count: int) -> Check:
    check = Check("one row per order, with a known status", count, "orders")
    # The primary key makes a second row impossible, unless it was dropped.
    for r in await reader.violations(
        check,
        "orders with more than one row",
        "SELECT order_id, count(*) AS n FROM orders GROUP BY order_id HAVING count(*) > 1",
    ):
        check.examples.append(f"order {r['order_id']!r}: {r['n']} rows")
    for r in await reader.violations(
        check,
        "orders of an unknown status",
        "SELECT order_id, status FROM orders WHERE status <> ALL(%s)",
        ([status.value for status in OrderStatus],),
    ):
        check.examples.append(f"order {r['order_id']!r}: unknown status {r['status']!r}")
    return check


async def _check_events(reader: Reader, count: int) -> Check:
    check = Check(
        "order events numbered 1..n without gaps, the order at its last one", count, "orders"
    )
    # The sink writes an order's row and its events in one transaction: an order without
    # events, or events without their order, is a lost write too.
    for r in await reader.violations(
        check,
        "orders whose events have gaps",
        """
        SELECT order_id, o.seq AS order_seq, e.n, e.first_seq, e.last_seq
        FROM orders o
        FULL JOIN (
            SELECT order_id, count(*) AS n, min(seq) AS first_seq, max(seq) AS last_seq
            FROM order_events GROUP BY order_id
        ) e USING (order_id)
        WHERE e.n IS NULL OR o.order_id IS NULL
           OR e.first_seq <> 1 OR e.last_seq <> e.n OR o.seq <> e.last_seq
        """,
    ):
        if r["n"] is None:
            problem = f"status at seq {r['order_seq']} but no events"
        elif r["order_seq"] is None:
            problem = f"{r['n']} events but no order row"
        elif r["first_seq"] != 1 or r["last_seq"] != r["n"]:
            problem = f"{r['n']} events numbered {r['first_seq']}..{r['last_seq']}"
        else:
            problem = f"order at seq {r['order_seq']}, its last event is {r['last_seq']}"
        check.examples.append(f"order {r['order_id']!r}: {problem}")
    return check
