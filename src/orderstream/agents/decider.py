"""What both worker engines do with one message, minus Kafka: decide it, count it.

The Faust agent and the batch engine differ in how records arrive and leave; the
decision of a line, the application of a stock command, and the metrics they record
are the same, and live here once.
"""

from __future__ import annotations

import time
from typing import Any

from orderstream.domain import LineRequest, StockLevel, apply_stock_operation, reserve_line
from orderstream.errors import InvalidMessageError
from orderstream.metrics import WorkerMetrics
from orderstream.settings import Settings
from orderstream.tables import Hold
from orderstream.topics import OrderRequest, StockCommand


class Decider:
    """Decide order lines and apply stock commands against a product's stock level."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self._max_line_quantity = settings.max_line_quantity
        self._metrics = metrics
        # prometheus' labels() lookup costs more than the increment: keep the children.
        self._decisions: dict[tuple[str, str], Any] = {}

    def reserve(
        self, level: StockLevel | None, request: OrderRequest, requested_at_ms: int
    ) -> tuple[Hold, StockLevel | None]:
        """Decide a new line; return its hold and the new stock level (None: unchanged)."""
        line = LineRequest(
            product_id=request.product_id, quantity=request.quantity, line_count=request.line_count
        )
        decision, new_level = reserve_line(level, line, self._max_line_quantity)
        now_ms = int(time.time() * 1000)
        labels = (decision.status.value.lower(), decision.reason.value if decision.reason else "")
        counter = self._decisions.get(labels)
        if counter is None:
            counter = self._decisions[labels] = self._metrics.decisions.labels(*labels)
        counter.inc()
        self._metrics.decision_latency.observe(max(0, now_ms - requested_at_ms) / 1000)
        version = new_level.version if new_level is not None else None
        return Hold.of(request, decision, requested_at_ms, now_ms, version), new_level

    def apply_command(
        self, level: StockLevel | None, command: StockCommand, offset: int
    ) -> StockLevel | None:
        """Apply a stock command found at ``offset``; None when it was applied before.

        Raises InvalidMessageError for a command that can never apply (it is dead-lettered).
        """
        try:
            new_level = apply_stock_operation(level, command.operation, command.quantity, offset)
        except ValueError as exc:
            raise InvalidMessageError(str(exc)) from None
        outcome = "already_applied" if new_level is None else "applied"
        self._metrics.stock_commands.labels(command.operation.value, outcome).inc()
        return new_level
