"""`orderstream audit`: check DESIGN.md's invariants against PostgreSQL and the stock changelog.

The sources are read one after the other, each as of the moment it is read: first the
lag of the stock agent's and the sink's consumer groups, then PostgreSQL in one
snapshot (a repeatable-read transaction), then the stock agent's changelog from its
beginning to the end offsets it had just after. The stock agent writes a snapshot to
its changelog before the sink can see it, so read in this order the changelog is never
behind PostgreSQL: a product whose PostgreSQL version is lower than its last changelog
snapshot is "sink behind", not a violation, and is compared once the sink caught up.

Figures that two topics carry to the sink (a product's stock, its orders' items) can
disagree for a moment while records are in flight; such a disagreement counts as a
violation only when both groups had consumed everything when PostgreSQL was read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, LiteralString, NamedTuple

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import AsyncCursor, sql
from psycopg.rows import dict_row
from pydantic import ValidationError

from orderstream.db import connection_kwargs
from orderstream.domain import OrderStatus, StockLevel
from orderstream.settings import Settings
from orderstream.tables import STOCK_KEY, stock_changelog
from orderstream.topics import ORDER_EVENTS, ORDER_REQUESTS, STOCK_CHANGES, STOCK_COMMANDS

log = logging.getLogger(__name__)

# Each failed check shows this many examples.
EXAMPLES = 5
# Order items whose stock is still held for the order: reserved, or paid and not yet
# committed (an order's status, or a line's).
HOLDING_STATUSES = ("RESERVED", "PAID")
_PROGRESS_EVERY_S = 5.0
_SLOW_QUERY_S = 1.0  # a query that took longer is logged
# Large fetches: reading the changelog is all the audit waits for on Kafka.
_FETCH_BYTES = 16 * 1024**2


class StockFigures(NamedTuple):
    """A product's stock as PostgreSQL or the changelog has it."""

    available: int
    reserved: int
    sold: int
    total_in: int
    version: int

    def describe(self) -> str:
        return (
            f"available {self.available}, reserved {self.reserved}, sold {self.sold}, "
            f"total_in {self.total_in}, version {self.version}"
        )


@dataclass
class Check:
    """One invariant: how much was checked, what violated it, what could not be compared."""

    title: str
    checked: int
    unit: str
    violations: int = 0
    examples: list[str] = field(default_factory=list)
    # Not violations: what could not be compared as of the reads, and why.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def violate(self, example: str) -> None:
        """Count one violation, keeping the first few as examples."""
        self.violations += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def lines(self) -> list[str]:
        """Return the check as report lines: the verdict, then examples and notes."""
        if self.ok:
            head = f"ok    {self.title}: {self.checked} {self.unit}"
        else:
            head = f"FAIL  {self.title}: {self.violations} of {self.checked} {self.unit} violate it"
        return [head, *(f"        {example}" for example in self.examples[:EXAMPLES])] + [
            f"      note: {note}" for note in self.notes
        ]


@dataclass
class AuditReport:
    """Every check, and when each source was read."""

    postgres_read_at: datetime
    changelog_read_at: datetime
    changelog_records: int
    lag: dict[str, int]  # consumer group role -> records not yet consumed
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def violations(self) -> int:
        return sum(check.violations for check in self.checks)

    def lines(self) -> list[str]:
        """Return the whole report, a line per check and its details."""
        lines = [
            "compared as of the moment each source was read:",
            f"  consumer lag before reading: {_describe_lag(self.lag)}",
            f"  PostgreSQL: one snapshot at {_iso(self.postgres_read_at)}",
            f"  stock changelog: {self.changelog_records} records, read to its end offsets"
            f" of {_iso(self.changelog_read_at)}",
        ]
        for check in self.checks:
            lines += check.lines()
        verdict = "ok" if self.ok else f"{self.violations} violation(s)"
        return [*lines, f"audit: {verdict}"]


def _describe_lag(lag: Mapping[str, int]) -> str:
    return ", ".join(f"{role} {records}" for role, records in lag.items()) + " records"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def audit(settings: Settings) -> AuditReport:
    """Read the lag, PostgreSQL and the stock changelog, in this order; check the invariants."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=_FETCH_BYTES,
        max_partition_fetch_bytes=_FETCH_BYTES,
        check_crcs=False,  # the broker checked them when they were written
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        await admin.start()
        try:
            lag = await _consumer_lag(settings, admin, consumer)
        finally:
            await admin.close()
        log.info("consumer lag: %s; reading PostgreSQL in one snapshot", _describe_lag(lag))
        started = time.monotonic()
        postgres = await _read_postgres(settings)
        log.info("PostgreSQL read in %.1f s", time.monotonic() - started)
        changelog_read_at = datetime.now(UTC)
        snapshots, records = await _read_changelog(settings, consumer)
    finally:
        await consumer.stop()
    settled = not any(lag.values())
    against_changelog, behind = check_against_changelog(postgres.stock, snapshots)
    checks = [
        check_conservation(postgres.stock),
        against_changelog,
        check_reserved_items(postgres.stock, postgres.held, behind, settled),
        *postgres.order_checks,
    ]
    return AuditReport(postgres.read_at, changelog_read_at, records, lag, checks)


async def _consumer_lag(
    settings: Settings, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer
) -> dict[str, int]:
    """Return the records each group has not consumed yet: the stock agent's, the sink's."""
    groups = {
        "stock agent": (settings.app_id, (ORDER_REQUESTS, STOCK_COMMANDS)),
        "sink": (settings.sink_group, (ORDER_EVENTS, STOCK_CHANGES)),
    }
    lag = {}
    for role, (group, topics) in groups.items():
        partitions = _partitions(settings, (settings.topic(t) for t in topics))
        committed = await admin.list_consumer_group_offsets(group)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        # A partition the group never committed is behind by everything it holds.
        lag[role] = sum(
            max(0, ends[tp] - (committed[tp].offset if tp in committed else starts[tp]))
            for tp in partitions
        )
    return lag


def _partitions(settings: Settings, topics: Iterable[str]) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for topic in topics for p in range(settings.partitions)]


@dataclass
class _Postgres:
    read_at: datetime
    stock: dict[str, StockFigures]
    held: dict[str, int]  # product -> quantity of its holding order items
    order_checks: list[Check]


class _Reader:
    """Run the audit's queries in one transaction, saying how long each took."""

    def __init__(self, cur: AsyncCursor[dict[str, Any]]) -> None:
        self._cur = cur

    async def rows(
        self, what: str, query: LiteralString | sql.Composed, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        started = time.monotonic()
        await self._cur.execute(query, params)
        found = await self._cur.fetchall()
        took = time.monotonic() - started
        if took >= _SLOW_QUERY_S:
            log.info("PostgreSQL: %s took %.0f s", what, took)
        return found

    async def count(self, what: str, query: LiteralString) -> int:
        (row,) = await self.rows(what, query)
        return int(row["n"])

    async def violations(
        self, check: Check, what: str, query: LiteralString, params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        """Count the rows of ``query`` as violations of ``check``; return the first few."""
        limited = sql.SQL(
            "SELECT v.*, count(*) OVER () AS total_found FROM ({}) v ORDER BY 1 LIMIT {}"
        ).format(sql.SQL(query), sql.Literal(EXAMPLES))
        found = await self.rows(what, limited, params)
        check.violations += found[0]["total_found"] if found else 0
        return found


async def _read_postgres(settings: Settings) -> _Postgres:
    """Read every figure the checks need from one snapshot of PostgreSQL."""
    async with await psycopg.AsyncConnection.connect(
        settings.database_url.get_secret_value(), **connection_kwargs(settings)
    ) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            reader = _Reader(cur)
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
            checks = [await _check_orders(reader), await _check_events(reader)]
    return _Postgres(read_at, stock, held, checks)


async def _check_orders(reader: _Reader) -> Check:
    count = await reader.count("orders", "SELECT count(*) AS n FROM orders")
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


async def _check_events(reader: _Reader) -> Check:
    count = await reader.count(
        "orders with events", "SELECT count(DISTINCT order_id) AS n FROM order_events"
    )
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


async def _read_changelog(
    settings: Settings, consumer: AIOKafkaConsumer
) -> tuple[dict[str, StockLevel | str], int]:
    """Return the last stock snapshot per product (or why it cannot be read), and the
    number of changelog records read, from the beginning to the current end offsets."""
    partitions = _partitions(settings, [stock_changelog(settings)])
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    starts = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    total = sum(ends[tp] - starts[tp] for tp in partitions)
    log.info("reading the stock changelog %s: ~%d records", stock_changelog(settings), total)
    last: dict[bytes, bytes | None] = {}  # only stock snapshots: holds are skipped
    read = 0
    started = last_progress = time.monotonic()
    remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
    while remaining:
        for tp, records in (await consumer.getmany(*remaining, timeout_ms=500)).items():
            for record in records:
                key = record.key
                if record.offset < ends[tp] and key is not None and key[:1] == STOCK_KEY:
                    last[key] = record.value
            read += len(records)
        remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        now = time.monotonic()
        if now - last_progress >= _PROGRESS_EVERY_S:
            last_progress = now
            rate = read / (now - started)
            eta = f"about {(total - read) / rate:.0f} s left" if rate else "no progress yet"
            log.info("stock changelog: %d of ~%d records, %.0f/s, %s", read, total, rate, eta)
    snapshots: dict[str, StockLevel | str] = {}
    for key, value in last.items():
        if value is None:
            continue  # a tombstone: the product's stock was deleted
        product_id = key[len(STOCK_KEY) :].decode(errors="replace")
        try:
            snapshots[product_id] = StockLevel.model_validate_json(value)
        except ValidationError as exc:
            snapshots[product_id] = f"undecodable snapshot ({exc.error_count()} errors)"
    return snapshots, min(read, total)


def check_conservation(stock: Mapping[str, StockFigures]) -> Check:
    """Check that no figure is negative and available + reserved + sold = total_in."""
    check = Check("stock conserved in PostgreSQL", len(stock), "products")
    for product_id, figures in sorted(stock.items()):
        negative = min(figures.available, figures.reserved, figures.sold) < 0
        parts = figures.available + figures.reserved + figures.sold
        if negative or parts != figures.total_in:
            check.violate(f"product {product_id!r}: {figures.describe()}")
    return check


def check_against_changelog(
    stock: Mapping[str, StockFigures], snapshots: Mapping[str, StockLevel | str]
) -> tuple[Check, set[str]]:
    """Check PostgreSQL's stock against the stock agent's last snapshot of each product.

    Return the check, and the products the sink has not caught up with (compared only
    once it has).
    """
    check = Check("PostgreSQL stock = the stock agent's changelog", len(stock), "products")
    behind: set[str] = set()
    for product_id in sorted(stock.keys() | snapshots.keys()):
        figures, snapshot = stock.get(product_id), snapshots.get(product_id)
        if isinstance(snapshot, str):
            check.violate(f"product {product_id!r}: changelog has an {snapshot}")
        elif snapshot is None:
            check.violate(f"product {product_id!r}: in PostgreSQL, unknown to the stock agent")
        elif figures is None or figures.version < snapshot.version:
            behind.add(product_id)
        else:
            agent = StockFigures(
                snapshot.available,
                snapshot.reserved,
                snapshot.sold,
                snapshot.total_in,
                snapshot.version,
            )
            if figures.version > agent.version:
                check.violate(
                    f"product {product_id!r}: PostgreSQL at version {figures.version}, "
                    f"ahead of the stock agent's {agent.version}"
                )
            elif figures != agent:
                check.violate(
                    f"product {product_id!r}: PostgreSQL has {figures.describe()}; "
                    f"the stock agent {agent.describe()}"
                )
    if behind:
        check.notes.append(_sink_behind(behind, stock, snapshots))
    return check, behind


def _sink_behind(
    behind: set[str],
    stock: Mapping[str, StockFigures],
    snapshots: Mapping[str, StockLevel | str],
) -> str:
    examples = []
    for product_id in sorted(behind)[:EXAMPLES]:
        figures, snapshot = stock.get(product_id), snapshots[product_id]
        assert isinstance(snapshot, StockLevel)
        ours = f"version {figures.version}" if figures else "no row"
        examples.append(f"{product_id!r} ({ours}, stock agent at {snapshot.version})")
    return f"sink behind for {len(behind)} products, not compared: {', '.join(examples)}" + (
        ", ..." if len(behind) > EXAMPLES else ""
    )


def check_reserved_items(
    stock: Mapping[str, StockFigures],
    held: Mapping[str, int],
    behind: set[str],
    settled: bool,
) -> Check:
    """Check that a product's reserved stock is what its holding order items hold.

    ``settled``: the stock agent and the sink had consumed everything when PostgreSQL
    was read; otherwise a disagreement may be records in flight, and is only noted.
    """
    check = Check(
        f"reserved stock = quantities of {'/'.join(HOLDING_STATUSES)} order items",
        len(stock),
        "products",
    )
    in_flight = []
    for product_id in sorted(stock.keys() | held.keys()):
        if product_id in behind:
            continue  # said once, by the changelog check
        reserved = stock[product_id].reserved if product_id in stock else 0
        items = held.get(product_id, 0)
        if reserved == items:
            continue
        example = f"product {product_id!r}: reserved {reserved}, order items hold {items}"
        if settled:
            check.violate(example)
        else:
            in_flight.append(example)
    if in_flight:
        check.notes.append(
            f"{len(in_flight)} products disagree while records were in flight (consumer lag"
            f" above 0), not counted: {'; '.join(in_flight[:EXAMPLES])}"
        )
    return check
