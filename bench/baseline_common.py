"""What the baselines share: the drivers, the phases and their timing, the orders checks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from bench.result import Latency, Result
from bench.timing import Progress, RowPoller, at, log, now
from bench.workload import Request, Workload

Decide = Callable[[Request], Awaitable[None]]

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
PRODUCTS_DDL = """
    CREATE TABLE products (
        product_id text PRIMARY KEY,
        stock int NOT NULL CHECK (stock >= 0)
    )
"""


async def drive_closed_loop(
    requests: Sequence[Request], deciders: Sequence[Decide], label: str
) -> float:
    """Run every request through the deciders flat out; return first issue -> last commit.

    Each decider is one client (its own connection); all of them take requests from one
    shared iterator, so a request is decided exactly once and a fast client takes more.
    """
    pending: Iterator[Request] = iter(requests)
    done = 0
    last_commit = 0.0

    async def client(decide: Decide) -> None:
        nonlocal done, last_commit
        # next() runs between awaits, so no two clients ever take the same request.
        for request in pending:
            await decide(request)
            done += 1
            last_commit = now()

    async with Progress(label, "committed", len(requests), lambda: done):
        first_issue = now()
        async with asyncio.TaskGroup() as group:
            for decide in deciders:
                group.create_task(client(decide))
    elapsed = last_commit - first_issue
    log(label, f"{done:,} committed in {elapsed:.2f} s (closed loop, {len(deciders)} clients)")
    return elapsed


@dataclass
class OpenLoop:
    """Scheduled send time per order id, client-seen latency, how late dispatch ever was."""

    scheduled: dict[str, float]
    to_commit_ack: list[float]
    max_dispatch_lag_s: float


async def drive_open_loop(
    requests: Sequence[Request], deciders: Sequence[Decide], rate_per_s: float, label: str
) -> OpenLoop:
    """Issue request n at start + n / rate to whichever client is free (open loop).

    A request waits in the queue while every connection is busy: its latency runs from
    its scheduled time, so queueing counts, as it does for a Kafka-fed system.
    """
    queue: asyncio.Queue[tuple[Request, float] | None] = asyncio.Queue()
    scheduled: dict[str, float] = {}
    to_ack: list[float] = []
    max_lag = 0.0

    async def dispatch() -> None:
        nonlocal max_lag
        start = now() + 0.05
        n = 0
        while n < len(requests):
            await at(start + n / rate_per_s)
            while n < len(requests) and (due := start + n / rate_per_s) <= now():
                scheduled[requests[n].order_id] = due
                max_lag = max(max_lag, now() - due)
                queue.put_nowait((requests[n], due))
                n += 1
        for _ in deciders:
            queue.put_nowait(None)

    async def client(decide: Decide) -> None:
        while (item := await queue.get()) is not None:
            request, due = item
            await decide(request)
            to_ack.append(now() - due)

    progress = Progress(label, "committed", len(requests), lambda: len(to_ack))
    async with progress, asyncio.TaskGroup() as group:
        group.create_task(dispatch())
        for decide in deciders:
            group.create_task(client(decide))
    return OpenLoop(scheduled, to_ack, max_lag)


async def measure(
    system: str,
    workload: Workload,
    latency_workload: Workload,
    latency_rate: float,
    deciders: Sequence[Decide],
    database_url: str,
    schema: str,
) -> Result:
    """Time a baseline: closed-loop throughput, then open-loop latency to the PG row.

    The checks and the settings are the caller's to fill in.
    """
    label = f"{system}/{workload.name}"
    elapsed = await drive_closed_loop(workload.requests, deciders, f"{label} throughput")
    poller = RowPoller(database_url, schema, latency_workload.order_ids(), f"{label} latency")
    await poller.start()
    try:
        log(
            label,
            f"latency phase: {len(latency_workload.requests):,} requests at {latency_rate:,.0f}/s",
        )
        loop = await drive_open_loop(
            latency_workload.requests, deciders, latency_rate, f"{label} latency"
        )
        await poller.wait()
    finally:
        await poller.stop()
    to_pg = [poller.seen[order_id] - due for order_id, due in loop.scheduled.items()]
    ack = Latency.of(loop.to_commit_ack)
    return Result(
        system=system,
        workload=workload.name,
        mode=f"closed loop, {len(deciders)} clients",
        requests=len(workload.requests),
        elapsed_s=elapsed,
        rate_per_s=len(workload.requests) / elapsed,
        correct=False,  # until the caller's checks pass
        latency_rate_per_s=latency_rate,
        latency_requests=len(latency_workload.requests),
        latency_to_pg=Latency.of(to_pg),
        settings={
            "clients": len(deciders),
            "poll_interval_ms": poller.interval_s * 1000,
            # Scheduled send -> COMMIT acknowledged to the client (no poll granularity).
            "latency_to_commit_ack_ms": {
                "p50": round(ack.p50_ms, 1),
                "p95": round(ack.p95_ms, 1),
                "p99": round(ack.p99_ms, 1),
                "max": round(ack.max_ms, 1),
            },
            "max_dispatch_lag_ms": round(loop.max_dispatch_lag_s * 1000, 1),
        },
    )


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


async def load_products(conn: Connection, stock: Mapping[str, int]) -> None:
    """Create the products table with each product's initial stock."""
    await conn.execute(PRODUCTS_DDL)
    async with conn.cursor().copy("COPY products (product_id, stock) FROM STDIN") as copy:
        for product_id, left in stock.items():
            await copy.write_row((product_id, left))


async def products_stock(conn: Connection) -> dict[str, int | None]:
    """Return each product's stock as the products table holds it."""
    cursor = await conn.execute("SELECT product_id, stock FROM products")
    return dict(await cursor.fetchall())
