"""The order agent's messages in and out: a line decision as the machine's input, a
transition as the order event that announces it. Pure, so it is unit-tested without Kafka.
"""

from __future__ import annotations

from typing import Any

from orderstream.domain import OrderStatus
from orderstream.domain.orders import LineOutcome, OrderState, OrderTransitionEvent
from orderstream.topics import (
    DETAIL_MAX_LENGTH,
    LineDecision,
    OrderEvent,
    OrderItem,
    OrderMetadata,
)


def metadata_of(message: OrderMetadata) -> dict[str, Any] | None:
    """Return the order metadata a message carries, as JSON-able fields; None for none."""
    return message.metadata_fields() or None


def line_outcome(decision: LineDecision) -> LineOutcome:
    """Return the state machine's input for the stock agent's decision of one line."""
    reserved = decision.status is OrderStatus.RESERVED
    return LineOutcome(
        order_id=decision.order_id,
        user_id=decision.user_id,
        product_id=decision.product_id,
        quantity=decision.quantity,
        line_count=decision.line_count,
        reserved=reserved,
        reason=None if reserved else decision.reason,
        detail=decision.detail,
        unit_price=decision.unit_price,
        currency=decision.currency,
        metadata=metadata_of(decision),
    )


def announced_here(state: OrderState, event: OrderTransitionEvent) -> bool:
    """Return whether the order agent announces ``event``: every transition of an order
    of several lines, all but a single-line order's first (the stock agent's decision)."""
    return event.seq > 1 or state.line_count > 1


def order_items(state: OrderState) -> list[OrderItem]:
    """Return every line of the order, in the order's line order, with its line status."""
    return [
        OrderItem(
            product_id=product_id,
            quantity=line.quantity,
            status=line.status,
            reason=line.reason,
            unit_price=line.unit_price,
            currency=line.currency,
        )
        for product_id, line in state.lines.items()
    ]


def order_event(
    state: OrderState, event: OrderTransitionEvent, requested_at_ms: int, decided_at_ms: int
) -> OrderEvent:
    """Return the order event that announces ``event``, its items as ``state`` holds them.

    ``state`` is the one the transition leads to: each line's status is where the
    transition leaves it (a PAID event announced with its CONFIRMED shows the lines
    COMMITTED).
    """
    items = order_items(state)
    first = items[0]  # an order has a line before its first transition
    total, currency = state.total() or (None, None)
    return OrderEvent(
        order_id=state.order_id,
        seq=event.seq,
        status=event.status,
        reason=event.reason,
        # A line's detail named with its product may pass the limit: cut, never refused.
        detail=event.detail[:DETAIL_MAX_LENGTH] if event.detail is not None else None,
        user_id=state.user_id,
        product_id=first.product_id,
        quantity=first.quantity,
        requested_at_ms=requested_at_ms,
        decided_at_ms=decided_at_ms,
        items=items,
        unit_price=first.unit_price,
        currency=currency if currency is not None else first.currency,
        total=total,
        actor=event.actor,
        **(state.metadata or {}),
    )
