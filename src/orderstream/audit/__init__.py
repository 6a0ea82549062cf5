"""`orderstream audit`: check docs/contract.md's invariants in PostgreSQL and the stock changelog.

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
An order's row, items and events are written in one sink transaction, so the checks of
its lifecycle (one terminal state, lines sold once, never both confirmed and released)
hold in any snapshot and need no such allowance.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from orderstream.audit.kafka import consumer_lag, read_changelog
from orderstream.audit.postgres import read_postgres
from orderstream.audit.report import AuditReport, Check, StockFigures, describe_lag
from orderstream.audit.stock import (
    check_against_changelog,
    check_conservation,
    check_reserved_items,
    check_sold_items,
)
from orderstream.kafka_clients import admin_client, reader
from orderstream.settings import Settings

__all__ = ["AuditReport", "Check", "StockFigures", "audit"]

log = logging.getLogger(__name__)


async def audit(settings: Settings) -> AuditReport:
    """Read the lag, PostgreSQL and the stock changelog, in this order; check the invariants."""
    consumer = reader(settings)
    admin = admin_client(settings)
    await consumer.start()
    try:
        await admin.start()
        try:
            lag = await consumer_lag(settings, admin, consumer)
        finally:
            await admin.close()
        log.info("consumer lag: %s; reading PostgreSQL in one snapshot", describe_lag(lag))
        started = time.monotonic()
        postgres = await read_postgres(settings)
        log.info("PostgreSQL read in %.1f s", time.monotonic() - started)
        changelog_read_at = datetime.now(UTC)
        snapshots, records = await read_changelog(settings, consumer)
    finally:
        await consumer.stop()
    settled = not any(lag.values())
    against_changelog, behind = check_against_changelog(postgres.stock, snapshots)
    checks = [
        check_conservation(postgres.stock),
        against_changelog,
        check_reserved_items(postgres.stock, postgres.held, behind, settled),
        check_sold_items(postgres.stock, postgres.committed, behind, settled),
        *postgres.order_checks,
    ]
    return AuditReport(postgres.read_at, changelog_read_at, records, lag, checks)
