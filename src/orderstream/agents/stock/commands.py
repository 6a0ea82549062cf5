"""Stock commands on a partition that owns their product: their effects, for the processor.

A command sets or adds stock, edits the catalog (applied once, by offset and by its
``command_id``), or settles one order's reserved line: commit (sold) or release
(available again), once, with the quantity its hold recorded.

A commit or a release for a line that has no hold here is dropped (counted
``not_reserved``), never kept for a request still to come: within a partition a
request is decided before anything can react to its decision, so a line with no hold
was never reserved here (its request never arrived, was stale, or the command is
bogus), or its final hold already left the dedup window. Keeping such a command would
mean recording a hold for every order id anyone names, and refusing a later request
of that order for a reason no one announced.
"""

from __future__ import annotations

import logging

from orderstream.agents.stock.seam import Effects, PartitionView, SourceRecord
from orderstream.domain import (
    Released,
    SettleOutcome,
    StockAdded,
    StockEvent,
    StockSet,
    settle_line,
    stock_command,
)
from orderstream.errors import InvalidMessageError
from orderstream.logs import record_context
from orderstream.metrics import WorkerMetrics
from orderstream.tables import decode_hold, hold_key
from orderstream.topics import StockCommand

log = logging.getLogger(__name__)

# A redelivered commit or release is routine; one for a line never reserved here is worth
# a line in the log; one that contradicts how the line was settled is the sender's bug.
_SETTLE_LOG_LEVEL = {
    SettleOutcome.APPLIED: logging.DEBUG,
    SettleOutcome.ALREADY_APPLIED: logging.DEBUG,
    SettleOutcome.NOT_RESERVED: logging.INFO,
    SettleOutcome.CONFLICTING: logging.WARNING,
}


class StockCommands:
    """Turn a decoded stock command for a product owned here into effects."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def apply(
        self,
        record: SourceRecord,
        command: StockCommand,
        state: PartitionView,
        now_ms: int,
        effects: Effects,
    ) -> None:
        """Add the effects of ``command``; raise InvalidMessageError if it can never apply."""
        if command.operation.settles_line:
            self._settle(record, command, state, now_ms, effects)
            return
        level = state.level(command.product_id)
        quantity = command.quantity
        try:
            event = stock_command(
                level,
                command.operation,
                quantity,
                record.offset,
                command.catalog(),
                command_id=command.command_id,
                new_sale=bool(command.new_sale),
            )
        except ValueError as exc:
            raise InvalidMessageError(str(exc)) from None
        outcome = "already_applied" if event is None else "applied"
        self._metrics.stock_commands.labels(command.operation.value, outcome).inc()
        if event is None:
            return
        effects.stock.append((command.product_id, event))
        log.info(
            "stock %s %s on %s/%d@%d: available %d -> %s%s",
            command.operation.value,
            command.product_id,
            record.topic,
            record.partition,
            record.offset,
            level.available if level is not None else 0,
            _change_of(event),
            _catalog_of(command),
            extra=record_context(
                record.topic,
                record.partition,
                record.offset,
                order_id=command.order_id,
                product_id=command.product_id,
            ),
        )

    def _settle(
        self,
        record: SourceRecord,
        command: StockCommand,
        state: PartitionView,
        now_ms: int,
        effects: Effects,
    ) -> None:
        """Commit or release one order's reserved line, with the quantity its hold recorded."""
        order_id = command.order_id
        assert order_id is not None  # StockCommand requires it of commit and release
        key = hold_key(order_id, command.product_id)
        recorded = state.hold(key)
        hold = decode_hold(recorded) if recorded is not None else None
        if hold is not None and command.quantity not in (None, hold.quantity):
            # The sender and this partition disagree on what the order holds: moving
            # either quantity could be wrong, so neither moves.
            raise InvalidMessageError(
                f"{command.operation.value} of quantity {command.quantity} for order "
                f"{order_id!r}, whose line holds {hold.quantity}"
            )
        line, quantity = (hold.line_status, hold.quantity) if hold is not None else (None, 0)
        level = state.level(command.product_id)
        outcome, event = settle_line(level, command.operation, line, quantity)
        self._metrics.stock_commands.labels(command.operation.value, outcome.value).inc()
        log.log(
            _SETTLE_LOG_LEVEL[outcome],
            "stock %s of order %s, product %s on %s/%d@%d: %s (the line was %s)",
            command.operation.value,
            order_id,
            command.product_id,
            record.topic,
            record.partition,
            record.offset,
            outcome.value,
            line.value if line is not None else "unknown here",
            extra=record_context(
                record.topic,
                record.partition,
                record.offset,
                order_id=order_id,
                product_id=command.product_id,
            ),
        )
        if hold is None or event is None:
            return
        effects.stock.append((command.product_id, event))
        effects.holds.append((key, hold.settled_by(event, now_ms)))
        reserved_at = hold.stock_version
        if (
            isinstance(event, Released)
            and level is not None
            and reserved_at is not None
            and level.in_current_sale(reserved_at)
        ):
            # A line of an earlier sale gives back its units, not a place in this
            # sale's per-user count.
            effects.held.append((hold.user_id, hold.product_id, -hold.quantity))


def _change_of(event: StockEvent) -> str:
    """Return what a stock command did to the available stock, for its log line."""
    if isinstance(event, StockSet):
        return str(event.quantity)
    if isinstance(event, StockAdded):
        return f"+{event.quantity}"
    return "unchanged"


def _catalog_of(command: StockCommand) -> str:
    """Return the catalog a stock command set, for its log line ('' when none)."""
    parts = ["a new sale: per-user counts from zero"] if command.new_sale else []
    if command.price is not None:
        parts.append(f"price {command.price} {command.currency}")
    if command.max_per_user is not None:
        parts.append(f"max {command.max_per_user} per user" if command.max_per_user else "no limit")
    return f" ({', '.join(parts)})" if parts else ""
