"""Check each order's lifecycle in PostgreSQL: one terminal state, lines sold once, never
both confirmed and released.

The lifecycle passes through states these checks would call wrong: a paid order's lines
are committed before its CONFIRMED event lands, a cancelled order's released before its
CANCELLED event does. An order not final yet whose last change is younger than
``in_flight_max_s`` is in flight: counted in a note, never a violation. Older, it is
stuck, and that is one.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from orderstream.audit.reader import Reader
from orderstream.audit.report import Check
from orderstream.domain import OrderStatus

# A line's own status, or, where the order's events did not list its items (a single-line
# order), what the order's status (order_items.status) made of its only line.
_LINES = sql.SQL("""
SELECT order_id, product_id, quantity, COALESCE(line_status, CASE status
    WHEN 'CONFIRMED' THEN 'COMMITTED' WHEN 'CANCELLED' THEN 'RELEASED'
    WHEN 'EXPIRED' THEN 'RELEASED' WHEN 'REJECTED' THEN 'REJECTED' ELSE 'RESERVED' END) AS line
FROM order_items""")


async def committed_per_product(reader: Reader) -> dict[str, int]:
    """Return the quantity of each product's COMMITTED order lines."""
    return {
        r["product_id"]: int(r["quantity"])
        for r in await reader.rows(
            "COMMITTED order lines per product",
            sql.SQL(
                "SELECT product_id, sum(quantity) AS quantity FROM ({}) l"
                " WHERE line = 'COMMITTED' GROUP BY product_id"
            ).format(_LINES),
        )
    }


async def check_one_terminal_state(reader: Reader, orders_with_events: int) -> Check:
    """Check that no order's history goes on after its first terminal status."""
    check = Check("one terminal state per order, nothing after it", orders_with_events, "orders")
    for r in await reader.violations(
        check,
        "orders with events after a terminal one",
        """
        SELECT order_id, string_agg(status, ' -> ' ORDER BY seq) AS history
        FROM order_events GROUP BY order_id
        HAVING max(seq) > min(seq) FILTER (WHERE status = ANY(%s))
        """,
        ([status.value for status in OrderStatus if status.is_terminal],),
    ):
        check.examples.append(f"order {r['order_id']!r}: {r['history']}")
    return check


async def check_sold_once(reader: Reader, orders: int, in_flight_max_s: float) -> Check:
    """Check that an order sells each product at most once, and only when CONFIRMED once."""
    check = Check(
        "no line sold twice: one COMMITTED line per order and product, one CONFIRMED event"
        " per CONFIRMED order and none elsewhere",
        orders,
        "orders",
    )
    # The primary key (order_id, product_id) makes a second line impossible, unless dropped.
    for r in await reader.violations(
        check,
        "order lines COMMITTED more than once",
        sql.SQL(
            "SELECT order_id, product_id, count(*) AS n FROM ({}) l"
            " WHERE line = 'COMMITTED' GROUP BY order_id, product_id HAVING count(*) > 1"
        ).format(_LINES),
    ):
        check.examples.append(
            f"order {r['order_id']!r}: product {r['product_id']!r} COMMITTED {r['n']} times"
        )
    rows = await reader.rows(
        "orders whose CONFIRMED events or COMMITTED lines disagree with their status",
        sql.SQL("""
        SELECT o.order_id, o.status, coalesce(e.n, 0) AS confirmed, coalesce(l.n, 0) AS committed,
            extract(epoch FROM now() - o.updated_at) AS age_s
        FROM orders o
        LEFT JOIN (
            SELECT order_id, count(*) AS n FROM order_events WHERE status = 'CONFIRMED'
            GROUP BY order_id
        ) e USING (order_id)
        LEFT JOIN (
            SELECT order_id, count(*) AS n FROM ({}) x
            WHERE line = 'COMMITTED' GROUP BY order_id
        ) l USING (order_id)
        WHERE coalesce(e.n, 0) <> CASE o.status WHEN 'CONFIRMED' THEN 1 ELSE 0 END
           OR (o.status <> 'CONFIRMED' AND l.n IS NOT NULL)
        ORDER BY o.order_id
        """).format(_LINES),
    )
    for r in _violating(check, rows, in_flight_max_s, "committed, not CONFIRMED yet"):
        expected = 1 if r["status"] == "CONFIRMED" else 0
        if r["confirmed"] != expected:
            problem = f"{r['confirmed']} CONFIRMED events"
        else:
            problem = f"{r['committed']} COMMITTED lines"
        check.violate(f"order {r['order_id']!r}: {r['status']}, with {problem}")
    return check


async def check_confirmed_not_released(
    reader: Reader, orders: int, in_flight_max_s: float
) -> Check:
    """Check that no CONFIRMED order, or order with a COMMITTED line, has a RELEASED line."""
    check = Check("no order both CONFIRMED and released", orders, "orders")
    rows = await reader.rows(
        "orders both confirmed and released",
        sql.SQL(
            "SELECT o.order_id, o.status,"
            " string_agg(l.product_id || ' ' || l.line, ', ' ORDER BY l.product_id) AS lines,"
            " extract(epoch FROM now() - o.updated_at) AS age_s"
            " FROM orders o JOIN ({}) l USING (order_id)"
            " GROUP BY o.order_id, o.status, o.updated_at"
            " HAVING bool_or(l.line = 'RELEASED')"
            " AND (o.status = 'CONFIRMED' OR bool_or(l.line = 'COMMITTED'))"
            " ORDER BY o.order_id"
        ).format(_LINES),
    )
    for r in _violating(check, rows, in_flight_max_s, "released, not final yet"):
        check.violate(f"order {r['order_id']!r}: {r['status']}, lines {r['lines']}")
    return check


def _violating(
    check: Check, rows: list[dict[str, Any]], in_flight_max_s: float, passing: str
) -> list[dict[str, Any]]:
    """Return the rows that violate ``check``; note the orders in flight (not final yet,
    changed within ``in_flight_max_s``: ``passing`` says what they pass through)."""
    in_flight = [
        r
        for r in rows
        if not OrderStatus(r["status"]).is_terminal and float(r["age_s"]) < in_flight_max_s
    ]
    if in_flight:
        oldest = max(float(r["age_s"]) for r in in_flight)
        check.notes.append(
            f"{len(in_flight)} orders in flight ({passing}), the oldest changed"
            f" {oldest:.1f} s ago; stuck (a violation) past {in_flight_max_s:g} s"
        )
    flying = {r["order_id"] for r in in_flight}
    return [r for r in rows if r["order_id"] not in flying]
