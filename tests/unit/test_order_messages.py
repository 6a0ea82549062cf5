"""The order agent's messages: line decisions in, order events with their items out."""

from __future__ import annotations

from decimal import Decimal

from orderstream.agents.lifecycle.order_messages import (
    announced_here,
    line_outcome,
    order_event,
)
from orderstream.domain import (
    LineOutcome,
    LineStatus,
    OrderState,
    OrderStatus,
    OrderTransitionEvent,
    PaymentResult,
    RejectReason,
    next_state,
)
from orderstream.topics import DETAIL_MAX_LENGTH, LineDecision, OrderEvent, OrderItem

T0 = 50_000


def decision(
    product_id: str, status: OrderStatus, reason: RejectReason | None = None, quantity: int = 1
) -> LineDecision:
    return LineDecision(
        order_id="o1",
        user_id="u1",
        product_id=product_id,
        quantity=quantity,
        line_count=3,
        status=status,
        reason=reason,
        detail="sold out" if reason else None,
        requested_at_ms=T0 - 10,
        decided_at_ms=T0,
    )


def assemble(*decisions: LineDecision) -> tuple[OrderState, tuple[OrderTransitionEvent, ...]]:
    state: OrderState | None = None
    for one in decisions:
        transition = next_state(state, line_outcome(one), T0, 1_000)
        state = transition.state
    assert state is not None
    return state, transition.events


def test_a_line_decision_becomes_a_line_outcome() -> None:
    assert line_outcome(decision("p1", OrderStatus.RESERVED, quantity=2)) == LineOutcome(
        "o1", "u1", "p1", 2, 3, reserved=True
    )
    rejected = line_outcome(decision("p2", OrderStatus.REJECTED, RejectReason.OUT_OF_STOCK))
    assert not rejected.reserved
    assert (rejected.reason, rejected.detail) == (RejectReason.OUT_OF_STOCK, "sold out")


def test_every_event_of_an_order_of_several_lines_lists_its_lines_in_order() -> None:
    state, events = assemble(
        decision("p2", OrderStatus.RESERVED, quantity=2),
        decision("p1", OrderStatus.RESERVED),
        decision("p3", OrderStatus.RESERVED, quantity=3),
    )
    [reserved] = events
    assert announced_here(state, reserved)  # seq 1: no stock agent announces it
    event = order_event(state, reserved, T0 - 10, T0 + 5)
    assert (event.seq, event.status, event.product_id, event.quantity) == (
        1,
        OrderStatus.RESERVED,
        "p2",
        2,
    )
    assert event.items == [
        OrderItem(product_id="p2", quantity=2, status=LineStatus.RESERVED),
        OrderItem(product_id="p1", quantity=1, status=LineStatus.RESERVED),
        OrderItem(product_id="p3", quantity=3, status=LineStatus.RESERVED),
    ]

    confirmed = next_state(state, PaymentResult("o1", paid=True), T0, 1_000)
    assert confirmed.state is not None
    paid, done = (order_event(confirmed.state, e, T0, T0) for e in confirmed.events)
    assert [(paid.seq, paid.status), (done.seq, done.status)] == [
        (2, OrderStatus.PAID),
        (3, OrderStatus.CONFIRMED),
    ]
    assert {item.status for item in done.items or ()} == {LineStatus.COMMITTED}


def test_a_rejected_line_rejects_the_order_and_releases_the_others() -> None:
    state, [rejected] = assemble(
        decision("p1", OrderStatus.RESERVED),
        decision("p2", OrderStatus.REJECTED, RejectReason.OUT_OF_STOCK),
        decision("p3", OrderStatus.RESERVED),
    )
    event = order_event(state, rejected, T0, T0)
    assert (event.seq, event.status, event.reason) == (
        1,
        OrderStatus.REJECTED,
        RejectReason.OUT_OF_STOCK,
    )
    assert [(i.product_id, i.status, i.reason) for i in event.items or ()] == [
        ("p1", LineStatus.RELEASED, None),
        ("p2", LineStatus.REJECTED, RejectReason.OUT_OF_STOCK),
        ("p3", LineStatus.RELEASED, None),
    ]


def test_a_long_detail_is_cut_to_fit_the_event() -> None:
    state, _ = assemble(decision("p1", OrderStatus.RESERVED))
    long = OrderTransitionEvent("o1", 1, OrderStatus.REJECTED, detail="x" * 5_000)
    assert len(order_event(state, long, T0, T0).detail or "") == DETAIL_MAX_LENGTH


def test_a_single_line_order_keeps_its_first_event_at_the_stock_agent() -> None:
    """Its reservation reaches the order agent as a line outcome of line_count 1; the
    RESERVED event (seq 1) is the stock agent's, every later one the order agent's."""
    reserved_line = LineDecision(
        order_id="o9",
        user_id="u1",
        product_id="p1",
        quantity=4,
        line_count=1,
        status=OrderStatus.RESERVED,
        requested_at_ms=T0,
        decided_at_ms=T0,
    )
    line = line_outcome(reserved_line)
    assert line == LineOutcome("o9", "u1", "p1", 4, 1, reserved=True)
    state = next_state(None, line, T0, 1_000).state
    assert state is not None
    [reserved] = next_state(None, line, T0, 1_000).events
    assert not announced_here(state, reserved)
    assert announced_here(state, OrderTransitionEvent("o9", 2, OrderStatus.PAID))


def test_an_order_event_carries_prices_the_total_the_metadata_and_the_operator() -> None:
    address = {"name": "A. Shopper", "line1": "1 Main St", "city": "Berlin", "country": "DE"}
    lines = [
        LineDecision.model_validate(
            {
                **decision(product_id, OrderStatus.RESERVED, quantity=quantity).model_dump(),
                "line_count": 2,
                "unit_price": price,
                "currency": "EUR",
                "shipping_address": address if product_id == "p1" else None,
                "notes": "ring twice\nthen wait" if product_id == "p1" else None,
            }
        )
        for product_id, quantity, price in [("p1", 2, "19.99"), ("p2", 1, "5.00")]
    ]
    state = None
    for one in lines:
        state = next_state(state, line_outcome(one), T0, 1_000).state
    assert state is not None
    assert state.status is OrderStatus.RESERVED
    reserved = OrderTransitionEvent("o1", 1, OrderStatus.RESERVED)
    event = order_event(state, reserved, T0 - 10, T0)
    assert (event.total, event.currency, event.unit_price) == (
        Decimal("44.98"),
        "EUR",
        Decimal("19.99"),
    )
    assert [(i.product_id, i.unit_price, i.currency) for i in event.items or ()] == [
        ("p1", Decimal("19.99"), "EUR"),
        ("p2", Decimal("5.00"), "EUR"),
    ]
    assert event.shipping_address is not None
    assert event.shipping_address.city == "Berlin"
    assert event.notes == "ring twice\nthen wait"
    # Through JSON, as the sink reads it: exact decimals, never floats.
    again = OrderEvent.model_validate_json(event.model_dump_json())
    assert again == event
    assert '"total":"44.98"' in event.model_dump_json()
    overridden = OrderTransitionEvent(
        "o1", 2, OrderStatus.CONFIRMED, RejectReason.ADMIN_OVERRIDE, "ok", "alice"
    )
    assert order_event(state, overridden, T0 - 10, T0).actor == "alice"
