"""The stock rules: reserve a line, apply a stock command."""

from __future__ import annotations

from orderstream.domain.models import (
    Decision,
    LineRequest,
    OrderStatus,
    RejectReason,
    StockLevel,
    StockOperation,
)


def reserve_line(
    level: StockLevel | None, line: LineRequest, max_line_quantity: int
) -> tuple[Decision, StockLevel | None]:
    """Decide one order line against a product's stock.

    Return the decision and the new stock level, or ``None`` when the stock is unchanged.
    """
    if line.line_count != 1:
        return _reject(
            RejectReason.INVALID, "orders of several lines are not supported yet; send one line"
        )
    if level is None:
        return _reject(RejectReason.UNKNOWN_PRODUCT, "no stock was ever set for this product")
    if line.quantity > max_line_quantity:
        return _reject(
            RejectReason.LIMIT_EXCEEDED,
            f"quantity {line.quantity} is above the limit of {max_line_quantity} per line",
        )
    if line.quantity > level.available:
        return _reject(RejectReason.OUT_OF_STOCK, None)
    new_level = level.model_copy(
        update={
            "available": level.available - line.quantity,
            "reserved": level.reserved + line.quantity,
            "version": level.version + 1,
        }
    )
    return Decision(status=OrderStatus.RESERVED), new_level


def apply_stock_operation(
    level: StockLevel | None, operation: StockOperation, quantity: int, offset: int
) -> StockLevel | None:
    """Apply a stock command found at ``offset``; return ``None`` when it was applied before."""
    if level is not None and offset <= level.last_command_offset:
        return None
    current = level or StockLevel(available=0, total_in=0)
    if operation is StockOperation.SET:
        if quantity < 0:
            raise ValueError(f"stock cannot be set below zero, got {quantity}")
        delta = quantity - current.available
    else:
        if quantity < 1:
            raise ValueError(f"stock add needs a quantity >= 1, got {quantity}")
        delta = quantity
    return current.model_copy(
        update={
            "available": current.available + delta,
            "total_in": current.total_in + delta,
            "version": current.version + 1,
            "last_command_offset": offset,
        }
    )


def _reject(reason: RejectReason, detail: str | None) -> tuple[Decision, None]:
    return Decision(status=OrderStatus.REJECTED, reason=reason, detail=detail), None


def replay_reservation(level: StockLevel, quantity: int, stock_version: int) -> StockLevel:
    """Re-apply a reservation that a recorded hold says moved the stock to ``stock_version``.

    Used when restoring from a changelog whose last stock snapshot predates the hold:
    the hold is the record of the reservation, so the stock follows it.
    """
    if stock_version <= level.version:
        return level  # the snapshot already contains it
    return level.model_copy(
        update={
            "available": level.available - quantity,
            "reserved": level.reserved + quantity,
            "version": stock_version,
        }
    )
