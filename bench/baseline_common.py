"""What both baselines share: the client driver, the progress line, the orders checks."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from bench.workload import Request, Workload

Decide = Callable[[Request], Awaitable[None]]

PROGRESS_EVERY_S = 5.0
MAX_EXAMPLES = 5  # problems name a few offending ids, not a hundred thousand

Connection = psycopg.AsyncConnection[TupleRow]

ORDERS_DDL = """
    CREATE TABLE orders (
        order_id text PRIMARY KEY,
        user_id text,
        product_id text,
        status text,
        created_at timestamptz DEFAULT now()
    )
"""


async def drive(
    requests: Sequence[Request], deciders: Sequence[Decide], label: str
) -> tuple[list[float], float]:
    """Run every request through one of the deciders; return latencies and elapsed seconds.

    Each decider is one client (its own connection); all of them take requests from one
    shared iterator, so a request is decided exactly once and a fast client takes more.
    """
    pending: Iterator[Request] = iter(requests)
    latencies: list[float] = []

    async def client(decide: Decide) -> None:
        # next() runs between awaits, so no two clients ever take the same request.
        for request in pending:
            start = time.perf_counter()
            await decide(request)
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    reporter = asyncio.create_task(_report_progress(label, latencies, len(requests), started))
    try:
        async with asyncio.TaskGroup() as group:
            for decide in deciders:
                group.create_task(client(decide))
    finally:
        reporter.cancel()
    elapsed = time.perf_counter() - started
    print(f"[{label}] {len(latencies):,} done in {elapsed:.1f} s", file=sys.stderr, flush=True)
    return latencies, elapsed


async def _report_progress(label: str, latencies: list[float], total: int, started: float) -> None:
    # A full row-lock run takes minutes; this line says it is alive and how fast it goes.
    last_done, last_at = 0, started
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now, done = time.perf_counter(), len(latencies)
        rate = (done - last_done) / (now - last_at)
        print(
            f"[{label}] {done:,}/{total:,} done, {rate:,.0f}/s now, "
            f"{done / (now - started):,.0f}/s overall",
            file=sys.stderr,
            flush=True,
        )
        last_done, last_at = done, now


async def connect(database_url: str, schema: str) -> Connection:
    """Open an autocommit connection whose unqualified names resolve in `schema`."""
    # search_path keeps every statement a plain literal, the same for both baselines.
    return await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, options=f"-c search_path={schema}"
    )


async def recreate_schema(conn: Connection, schema: str) -> None:
    """Drop and create `schema` with an empty orders table."""
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    await conn.execute(ORDERS_DDL)


async def check_orders(conn: Connection, workload: Workload) -> tuple[list[str], dict[str, int]]:
    """Check the orders rows against the workload; return the problems and reserved counts."""
    # order_id is the primary key, so "exactly one row per request" is "none missing".
    cursor = await conn.execute("SELECT order_id, product_id, status FROM orders")
    rows = {order: (product, status) for order, product, status in await cursor.fetchall()}
    problems: list[str] = []
    wanted = {request.order_id: request for request in workload.requests}
    missing = [order_id for order_id in wanted if order_id not in rows]
    extra = [order_id for order_id in rows if order_id not in wanted]
    wrong = [o for o, (p, _) in rows.items() if o in wanted and wanted[o].product_id != p]
    bad_status = [o for o, (_, s) in rows.items() if s not in ("RESERVED", "REJECTED")]
    for what, ids in (
        ("requests without an orders row", missing),
        ("orders rows for no request", extra),
        ("orders rows with the wrong product", wrong),
        ("orders rows with an unknown status", bad_status),
    ):
        if ids:
            problems.append(f"{len(ids)} {what}, e.g. {ids[:MAX_EXAMPLES]}")

    reserved = dict.fromkeys(workload.stock, 0)
    for product_id, status in rows.values():
        if status == "RESERVED":
            reserved[product_id] = reserved.get(product_id, 0) + 1
    expected = workload.expected_reserved()
    off = {p: (reserved.get(p, 0), n) for p, n in expected.items() if reserved.get(p, 0) != n}
    if off:
        problems.append(f"{len(off)} products: reserved != expected, (got, want) e.g. {_some(off)}")
    return problems, reserved


def check_final_stock(
    workload: Workload, final: dict[str, int | None], reserved: dict[str, int]
) -> list[str]:
    """Check that no stock is negative and each equals initial stock - reserved."""
    problems: list[str] = []
    negative = {p: s for p, s in final.items() if s is not None and s < 0}
    if negative:
        problems.append(f"{len(negative)} products with negative stock, e.g. {_some(negative)}")
    off = {
        p: (final.get(p), initial - reserved.get(p, 0))
        for p, initial in workload.stock.items()
        if final.get(p) != initial - reserved.get(p, 0)
    }
    if off:
        problems.append(
            f"{len(off)} products: stock != initial - reserved, (got, want) {_some(off)}"
        )
    return problems


def _some(mapping: Mapping[str, object]) -> dict[str, object]:
    return dict(list(mapping.items())[:MAX_EXAMPLES])


async def server_settings(conn: Connection) -> dict[str, object]:
    """Return the PostgreSQL settings that decide what a commit costs."""
    cursor = await conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
        (["server_version", "synchronous_commit", "fsync", "wal_sync_method"],),
    )
    return {f"pg_{name}": setting for name, setting in await cursor.fetchall()}


def event_loop_name() -> str:
    """Name the running event loop's class (uvloop or asyncio), for the settings."""
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"
