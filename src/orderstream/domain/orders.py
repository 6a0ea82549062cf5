"""The order lifecycle as one pure function: an order's state and an input in, a transition out.

The order agent keeps an ``OrderState`` per order in its table, hands every input to
``next_state``, then writes the new state and does what the ``Transition`` names: send
the events, the stock releases and commits, the payment request or the refund. Those
values (the state, the inputs, the transition) are in domain/order_types.py, re-exported
here. Nothing here reads a clock or a table (``now_ms`` and ``ttl_ms`` come in), so the
same inputs always give the same transitions.

Statuses only move forward: lines assemble (status ``None``) -> RESERVED -> PAID ->
CONFIRMED, or REJECTED, CANCELLED, EXPIRED; a terminal order never moves again and
``seq`` only grows. PAID is announced but never stored: a paid order is committed and
confirmed in the same transition.
"""

from __future__ import annotations

from typing import assert_never

from orderstream.domain.models import LineStatus, OrderStatus, RejectReason
from orderstream.domain.order_types import (
    Cancel,
    CancelRequest,
    Expire,
    LineOutcome,
    LineQuantity,
    LineState,
    OrderInput,
    OrderState,
    OrderTransitionEvent,
    Override,
    PaymentResult,
    Transition,
)

# The machine, and the values it works on (from domain/order_types.py) for its callers.
__all__ = [
    "CANCEL_PENDING",
    "DUPLICATE_LINE",
    "DUPLICATE_PAYMENT",
    "NOT_DUE_YET",
    "NOT_RESERVED_YET",
    "UNKNOWN_ORDER",
    "Cancel",
    "CancelRequest",
    "Expire",
    "LineOutcome",
    "LineQuantity",
    "LineState",
    "OrderInput",
    "OrderState",
    "OrderTransitionEvent",
    "Override",
    "PaymentResult",
    "Transition",
    "is_expired",
    "next_state",
]

# Why an input changed nothing: a small fixed set of texts, safe as a metric label.
DUPLICATE_LINE = "duplicate line outcome"
DUPLICATE_PAYMENT = "duplicate payment result"
UNKNOWN_ORDER = "unknown order"
NOT_RESERVED_YET = "not reserved yet"
NOT_DUE_YET = "not due yet"
CANCEL_PENDING = "cancel already pending"


def next_state(
    state: OrderState | None,
    command: OrderInput,
    now_ms: int,
    ttl_ms: int,
    payment_grace_ms: int = 0,
    *,
    lines_wait_ms: int | None = None,
) -> Transition:
    """Decide what ``command`` does to an order; ``state`` is None for an order never seen.

    ``payment_grace_ms``: how long past the TTL a reservation whose payment was asked
    for may wait for its answer before an expiry takes it; ``lines_wait_ms`` (default:
    the TTL): how long an order of several lines waits for the rest (see ``is_expired``).
    Raise ValueError when ``command`` is for another order than ``state``: the agent
    passed the wrong table value.
    """
    if state is not None and command.order_id != state.order_id:
        raise ValueError(f"{command!r} is not for order {state.order_id!r}")
    match command:
        case LineOutcome():
            return _on_line(state, command, now_ms)
        case PaymentResult():
            return _on_payment(state, command)
        case Cancel():
            return _on_cancel(state, command, now_ms)
        case Expire():
            return _on_expire(state, now_ms, ttl_ms, payment_grace_ms, lines_wait_ms=lines_wait_ms)
        case Override():
            return _on_override(state, command)
        case _:
            assert_never(command)


def is_expired(
    state: OrderState,
    now_ms: int,
    ttl_ms: int,
    payment_grace_ms: int = 0,
    *,
    lines_wait_ms: int | None = None,
) -> bool:
    """Return whether ``state`` is a reservation left unpaid for ``ttl_ms`` or longer, an
    order still missing lines ``lines_wait_ms`` (default: ``ttl_ms``) after its first
    one arrived, or a cancel whose order has not come within ``ttl_ms``.

    A reservation whose payment was asked for waits ``payment_grace_ms`` longer: the
    payment agent answers every request, and ends it EXPIRED itself when the provider
    does not pay within the TTL of its first attempt; the time a request waits for a
    free slot in our own queue is never the shopper's fault.
    """
    deadline = expiry_deadline(state, ttl_ms, payment_grace_ms, lines_wait_ms=lines_wait_ms)
    return deadline is not None and now_ms >= deadline


def expiry_deadline(
    state: OrderState,
    ttl_ms: int,
    payment_grace_ms: int = 0,
    *,
    lines_wait_ms: int | None = None,
) -> int | None:
    """Return when ``state`` expires (see ``is_expired``); None if it never does."""
    if state.status is OrderStatus.RESERVED:
        since = state.reserved_at_ms
        if state.payment_requested and not state.paid:
            ttl_ms += payment_grace_ms
    elif state.status is None:
        since = state.first_line_at_ms
        if state.lines and lines_wait_ms is not None:
            ttl_ms = lines_wait_ms
    else:
        return None
    return None if since is None else since + ttl_ms


def _on_line(state: OrderState | None, line: LineOutcome, now_ms: int) -> Transition:
    if state is None:
        state = OrderState(
            order_id=line.order_id,
            user_id=line.user_id,
            line_count=line.line_count,
            first_line_at_ms=now_ms,
        )
    elif state.status is None and not state.lines:
        state = _owned_by(state, line, now_ms)
    elif line.product_id in state.lines or line.product_id in state.extra_lines:
        return Transition(state, ignored=DUPLICATE_LINE)
    recorded = LineState(
        quantity=line.quantity,
        status=LineStatus.RESERVED if line.reserved else LineStatus.REJECTED,
        reason=None if line.reserved else line.reason,
        detail=line.detail,
        unit_price=line.unit_price,
        currency=line.currency,
    )
    if state.status is not None:
        return _extra_line(state, line.product_id, recorded)
    if state.metadata is None and line.metadata:
        state = state.model_copy(update={"metadata": line.metadata})
    lines = {**state.lines, line.product_id: recorded}
    if line.line_count != state.line_count:
        # Lines that disagree on what the order is cannot all be trusted: rather than
        # guess which ones make the order (and charge for part of it), turn it down whole.
        detail = f"its lines disagree on line_count: {state.line_count}, then {line.line_count}"
        return _settle(state, lines, OrderStatus.REJECTED, RejectReason.INVALID, detail)
    if len(lines) < state.line_count:
        return Transition(state.model_copy(update={"lines": lines}))
    return _refused(state, lines) or _reserve(state, lines, now_ms)


def _reserve(state: OrderState, lines: dict[str, LineState], now_ms: int) -> Transition:
    """Reserve an order whose lines all arrived reserved, and ask for its payment."""
    seq = state.seq + 1
    event = OrderTransitionEvent(state.order_id, seq, OrderStatus.RESERVED)
    update = {"lines": lines, "status": OrderStatus.RESERVED, "seq": seq, "reserved_at_ms": now_ms}
    if state.cancel is not None:
        # Cancelled before it was reserved: reserved, then cancelled at once, unpaid.
        reserved = state.model_copy(update=update)
        cancelled = _settle(
            reserved, lines, OrderStatus.CANCELLED, state.cancel.reason, state.cancel.detail
        )
        return Transition(
            cancelled.state, events=(event, *cancelled.events), release=cancelled.release
        )
    reserved = state.model_copy(update=update | {"payment_requested": True})
    return Transition(reserved, events=(event,), request_payment=True)


def _owned_by(state: OrderState, line: LineOutcome, now_ms: int) -> OrderState:
    """Return a state that only a cancel made, as the order's first line says it is."""
    update = {"user_id": line.user_id, "line_count": line.line_count, "first_line_at_ms": now_ms}
    return state.model_copy(update=update)


def _refused(state: OrderState, lines: dict[str, LineState]) -> Transition | None:
    """Return the rejection of an order whose lines have all arrived, None if it stands."""
    for product_id, known in lines.items():
        if known.status is LineStatus.REJECTED:
            said = known.detail if state.line_count == 1 else _named(product_id, known.detail)
            return _settle(state, lines, OrderStatus.REJECTED, known.reason, said)
    currencies = sorted({known.currency for known in lines.values() if known.currency})
    if len(currencies) > 1:
        # No total to charge: rather than pick a currency, turn the order down whole.
        detail = f"its lines are priced in {', '.join(currencies)}"
        return _settle(state, lines, OrderStatus.REJECTED, RejectReason.MIXED_CURRENCIES, detail)
    return None


def _extra_line(state: OrderState, product_id: str, line: LineState) -> Transition:
    """Release a line that came after its order was decided: nothing else ever would."""
    if line.status is not LineStatus.RESERVED:
        return Transition(state, ignored=f"line outcome after the order was {state.status}")
    released = line.model_copy(update={"status": LineStatus.RELEASED})
    extra_lines = {**state.extra_lines, product_id: released}
    return Transition(
        state.model_copy(update={"extra_lines": extra_lines}),
        release=(LineQuantity(product_id, line.quantity),),
    )


def _on_cancel(state: OrderState | None, cancel: Cancel, now_ms: int) -> Transition:
    request = CancelRequest(reason=cancel.reason, detail=cancel.detail)
    if state is None:
        # The cancel overtook the order (or the order never comes): kept for the TTL.
        pending = OrderState(
            order_id=cancel.order_id, user_id="", line_count=1, first_line_at_ms=now_ms
        )
        return Transition(pending.model_copy(update={"cancel": request}))
    if state.status is None:
        if state.cancel is not None:
            return Transition(state, ignored=CANCEL_PENDING)
        return Transition(state.model_copy(update={"cancel": request}))
    if state.status is not OrderStatus.RESERVED:
        return Transition(state, ignored=_why_not_reserved(state))
    return _settle(state, state.lines, OrderStatus.CANCELLED, cancel.reason, cancel.detail)


def _on_override(state: OrderState | None, override: Override) -> Transition:
    """End a reserved order as an operator says: confirmed (commit) or cancelled (release)."""
    if state is None or state.status is not OrderStatus.RESERVED:
        return Transition(state, ignored=_why_not_reserved(state))
    reason = RejectReason.ADMIN_OVERRIDE
    if override.status is OrderStatus.CONFIRMED:
        lines, commit = _move_reserved(state.lines, LineStatus.COMMITTED)
        seq = state.seq + 1
        confirmed = state.model_copy(
            update={"lines": lines, "status": OrderStatus.CONFIRMED, "reason": reason,
                    "detail": override.detail, "seq": seq}
        )  # fmt: skip
        event = OrderTransitionEvent(
            state.order_id, seq, OrderStatus.CONFIRMED, reason, override.detail, override.actor
        )
        # Not marked paid: a charge that still succeeds is refunded (the operator said
        # the order was settled another way).
        return Transition(confirmed, events=(event,), commit=commit)
    if override.status is OrderStatus.CANCELLED:
        transition = _settle(state, state.lines, OrderStatus.CANCELLED, reason, override.detail)
        [event] = transition.events
        actor_event = OrderTransitionEvent(
            event.order_id, event.seq, event.status, event.reason, event.detail, override.actor
        )
        return Transition(transition.state, events=(actor_event,), release=transition.release)
    raise ValueError(f"an override ends an order CONFIRMED or CANCELLED, not {override.status}")


def _on_expire(
    state: OrderState | None,
    now_ms: int,
    ttl_ms: int,
    payment_grace_ms: int,
    *,
    lines_wait_ms: int | None,
) -> Transition:
    if (
        state is not None
        and state.status is None
        and is_expired(state, now_ms, ttl_ms, lines_wait_ms=lines_wait_ms)
    ):
        if not state.lines:
            return Transition(None, forget=True)  # a cancel whose order never came
        # Its lines were to come in one transaction: the rest will not come.
        waited_ms = ttl_ms if lines_wait_ms is None else lines_wait_ms
        detail = (
            f"only {len(state.lines)} of its {state.line_count} lines arrived within {waited_ms} ms"
        )
        return _settle(state, state.lines, OrderStatus.REJECTED, RejectReason.INVALID, detail)
    if state is None or state.status is not OrderStatus.RESERVED:
        return Transition(state, ignored=_why_not_reserved(state))
    if not is_expired(state, now_ms, ttl_ms, payment_grace_ms):
        return Transition(state, ignored=NOT_DUE_YET)
    detail = f"not paid within {ttl_ms} ms"
    return _settle(state, state.lines, OrderStatus.EXPIRED, None, detail)


def _on_payment(state: OrderState | None, result: PaymentResult) -> Transition:
    if state is not None and state.status is OrderStatus.RESERVED:
        return _confirm(state) if result.paid else _unpaid(state, result)
    if not result.paid:
        return Transition(state, ignored=f"payment failure, {_why_not_reserved(state)}")
    if state is None:
        # No state to remember this refund in: a repeat is harmless only because the
        # payment agent refunds idempotently by order id.
        return Transition(None, refund=True)
    if state.paid:
        return Transition(state, ignored=DUPLICATE_PAYMENT)
    # The cancel or the expiry won (or the order was never reserved): the charge goes back.
    return Transition(state.model_copy(update={"paid": True}), refund=True)


def _unpaid(state: OrderState, result: PaymentResult) -> Transition:
    """End a reservation the provider did not pay: EXPIRED past the TTL, else CANCELLED.

    A charge that timed out or never got an answer may still have gone through at the
    provider: such an order is voided (a refund, idempotent by order id, a no-op for an
    order never charged) as it is released, so no shopper pays for what they lose.
    """
    if result.expired:
        settled = _settle(state, state.lines, OrderStatus.EXPIRED, None, result.detail)
    else:
        reason = result.reason or RejectReason.PAYMENT_FAILED
        settled = _settle(state, state.lines, OrderStatus.CANCELLED, reason, result.detail)
    if result.expired or result.reason is RejectReason.PAYMENT_UNAVAILABLE:
        assert settled.state is not None
        # Marked paid: whatever the provider took goes back with this void, so a late
        # report of the charge is a duplicate, never a second refund.
        voided = settled.state.model_copy(update={"paid": True})
        return Transition(voided, settled.events, release=settled.release, refund=True)
    return settled


def _confirm(state: OrderState) -> Transition:
    lines, commit = _move_reserved(state.lines, LineStatus.COMMITTED)
    confirmed = state.model_copy(
        update={"lines": lines, "status": OrderStatus.CONFIRMED, "seq": state.seq + 2, "paid": True}
    )
    events = (
        OrderTransitionEvent(state.order_id, state.seq + 1, OrderStatus.PAID),
        OrderTransitionEvent(state.order_id, state.seq + 2, OrderStatus.CONFIRMED),
    )
    return Transition(confirmed, events=events, commit=commit)


def _settle(
    state: OrderState,
    lines: dict[str, LineState],
    status: OrderStatus,
    reason: RejectReason | None,
    detail: str | None,
) -> Transition:
    """End the order in ``status`` and release every line it holds."""
    lines, release = _move_reserved(lines, LineStatus.RELEASED)
    seq = state.seq + 1
    settled = state.model_copy(
        update={"lines": lines, "status": status, "reason": reason, "detail": detail, "seq": seq}
    )
    event = OrderTransitionEvent(state.order_id, seq, status, reason, detail)
    return Transition(settled, events=(event,), release=release)


def _move_reserved(
    lines: dict[str, LineState], to: LineStatus
) -> tuple[dict[str, LineState], tuple[LineQuantity, ...]]:
    """Move every reserved line to ``to``; return the lines and the ones that moved."""
    moved = tuple(
        LineQuantity(product_id, line.quantity)
        for product_id, line in lines.items()
        if line.status is LineStatus.RESERVED
    )
    updated = {
        product_id: line.model_copy(update={"status": to})
        if line.status is LineStatus.RESERVED
        else line
        for product_id, line in lines.items()
    }
    return updated, moved


def _why_not_reserved(state: OrderState | None) -> str:
    if state is None:
        return UNKNOWN_ORDER
    if state.status is None:
        return NOT_RESERVED_YET
    return f"already {state.status}"


def _named(product_id: str, detail: str | None) -> str:
    """Name the product in the detail of an order of several lines: which one failed."""
    return f"product {product_id}: {detail}" if detail else f"product {product_id}"
