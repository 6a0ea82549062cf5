"""The order lifecycle's state machine, without Kafka: every rule, then random interleavings."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from decimal import Decimal

import pytest

from orderstream.domain import (
    Cancel,
    Expire,
    LineOutcome,
    LineQuantity,
    LineStatus,
    OrderInput,
    OrderState,
    OrderStatus,
    OrderTransitionEvent,
    Override,
    PaymentResult,
    RejectReason,
    Transition,
    is_expired,
    next_state,
)

TTL = 1_000
T0 = 50_000


def line(
    product_id: str = "p1",
    *,
    quantity: int = 1,
    line_count: int = 1,
    reserved: bool = True,
    reason: RejectReason | None = None,
    detail: str | None = None,
    order_id: str = "o1",
) -> LineOutcome:
    return LineOutcome(order_id, "u1", product_id, quantity, line_count, reserved, reason, detail)


def step(state: OrderState | None, command: OrderInput, now_ms: int = T0) -> Transition:
    """Run one input against ``state`` restored from JSON, as the agent's table gives it."""
    stored = None if state is None else OrderState.model_validate_json(state.model_dump_json())
    return next_state(stored, command, now_ms, TTL)


def run(*commands: OrderInput, now_ms: int = T0) -> OrderState:
    state: OrderState | None = None
    for command in commands:
        state = step(state, command, now_ms).state
    assert state is not None
    return state


def reserved_order(line_count: int = 2) -> OrderState:
    """An order of ``line_count`` reserved lines p1, p2, ... of quantity 1, 2, ..., at T0."""
    state = run(
        *(line(f"p{n}", quantity=n, line_count=line_count) for n in range(1, line_count + 1))
    )
    assert state.status is OrderStatus.RESERVED
    return state


def all_lines(line_count: int) -> tuple[LineQuantity, ...]:
    return tuple(LineQuantity(f"p{n}", n) for n in range(1, line_count + 1))


def nothing_changed(transition: Transition, state: OrderState | None) -> bool:
    return transition == Transition(state, ignored=transition.ignored) and bool(transition.ignored)


# Rule 1: line outcomes assemble into RESERVED or REJECTED.


def test_a_single_line_order_is_reserved_and_asks_for_payment() -> None:
    transition = step(None, line(quantity=3))
    state = transition.state
    assert state is not None
    assert transition.events == (OrderTransitionEvent("o1", 1, OrderStatus.RESERVED),)
    assert transition.request_payment
    assert (transition.release, transition.commit, transition.refund) == ((), (), False)
    assert (state.status, state.seq, state.reserved_at_ms) == (OrderStatus.RESERVED, 1, T0)
    assert state.payment_requested
    assert state.lines["p1"].status is LineStatus.RESERVED


def test_lines_assemble_until_line_count_are_known() -> None:
    first = step(None, line("p1", line_count=3))
    second = step(first.state, line("p2", line_count=3))
    for waiting in (first, second):
        assert waiting.state is not None
        assert waiting.state.status is None
        assert (waiting.events, waiting.request_payment, waiting.ignored) == ((), False, None)
    last = step(second.state, line("p3", line_count=3), now_ms=T0 + 7)
    assert last.state is not None
    assert [event.status for event in last.events] == [OrderStatus.RESERVED]
    assert (last.state.seq, last.state.reserved_at_ms) == (1, T0 + 7)
    assert list(last.state.lines) == ["p1", "p2", "p3"]


def test_a_duplicate_line_outcome_changes_nothing() -> None:
    assembling = run(line("p1", line_count=2))
    assert nothing_changed(duplicate := step(assembling, line("p1", line_count=2)), assembling)
    assert duplicate.ignored == "duplicate line outcome"
    reserved = reserved_order(2)
    assert nothing_changed(step(reserved, line("p2", quantity=2, line_count=2)), reserved)


def test_any_rejected_line_rejects_the_order_with_the_first_rejected_reason() -> None:
    state = run(
        line("p1", quantity=1, line_count=4),
        line("p2", line_count=4, reserved=False, reason=RejectReason.LIMIT_EXCEEDED, detail="max"),
        line("p3", quantity=3, line_count=4),
    )
    transition = step(
        state, line("p4", line_count=4, reserved=False, reason=RejectReason.OUT_OF_STOCK)
    )
    rejected = transition.state
    assert rejected is not None
    (event,) = transition.events
    assert event == OrderTransitionEvent(
        "o1", 1, OrderStatus.REJECTED, RejectReason.LIMIT_EXCEEDED, "product p2: max"
    )
    assert (rejected.status, rejected.reason, rejected.seq) == (
        OrderStatus.REJECTED,
        RejectReason.LIMIT_EXCEEDED,
        1,
    )
    assert transition.release == (LineQuantity("p1", 1), LineQuantity("p3", 3))
    assert not transition.request_payment
    statuses = {product: known.status for product, known in rejected.lines.items()}
    assert statuses == {
        "p1": LineStatus.RELEASED,
        "p2": LineStatus.REJECTED,
        "p3": LineStatus.RELEASED,
        "p4": LineStatus.REJECTED,
    }


def test_a_rejected_single_line_order_keeps_the_stock_agents_words() -> None:
    # The stock agent announced this decision as seq 1 already; the same event is a no-op.
    transition = step(None, line(reserved=False, reason=RejectReason.OUT_OF_STOCK, detail="gone"))
    assert transition.events == (
        OrderTransitionEvent("o1", 1, OrderStatus.REJECTED, RejectReason.OUT_OF_STOCK, "gone"),
    )
    assert transition.release == ()


def test_lines_that_disagree_on_line_count_reject_the_order_as_invalid() -> None:
    state = run(line("p1", line_count=3))
    transition = step(state, line("p2", quantity=2, line_count=2))
    assert transition.state is not None
    (event,) = transition.events
    assert (event.status, event.reason) == (OrderStatus.REJECTED, RejectReason.INVALID)
    assert event.detail == "its lines disagree on line_count: 3, then 2"
    assert transition.release == (LineQuantity("p1", 1), LineQuantity("p2", 2))
    # The order's last line comes too late: its reservation is given back.
    late = step(transition.state, line("p3", quantity=3, line_count=3))
    assert late.release == (LineQuantity("p3", 3),)


def decided(status: OrderStatus) -> OrderState:
    """An order of two reserved lines p1, p2 that ended (or stands) in ``status``."""
    ending: dict[OrderStatus, OrderInput] = {
        OrderStatus.CONFIRMED: PaymentResult("o1", paid=True),
        OrderStatus.CANCELLED: Cancel("o1"),
        OrderStatus.EXPIRED: Expire("o1"),
    }
    if status is OrderStatus.RESERVED:
        return reserved_order(2)
    if status is OrderStatus.REJECTED:
        return run(line("p1", line_count=2), line("p2", line_count=2, reserved=False))
    state = step(reserved_order(2), ending[status], now_ms=T0 + TTL).state
    assert state is not None
    assert state.status is status
    return state


@pytest.mark.parametrize(
    "status",
    [
        OrderStatus.RESERVED,
        OrderStatus.REJECTED,
        OrderStatus.CONFIRMED,
        OrderStatus.CANCELLED,
        OrderStatus.EXPIRED,
    ],
)
def test_a_late_reserved_line_is_released_once_and_moves_nothing_else(status: OrderStatus) -> None:
    state = decided(status)
    transition = step(state, line("p9", quantity=4, line_count=2))
    after = transition.state
    assert after is not None
    assert transition.release == (LineQuantity("p9", 4),)
    assert (transition.events, transition.commit, transition.ignored) == ((), (), None)
    assert (after.status, after.seq, after.lines) == (state.status, state.seq, state.lines)
    assert after.extra_lines["p9"].status is LineStatus.RELEASED
    assert nothing_changed(step(after, line("p9", quantity=4, line_count=2)), after)


def test_a_late_rejected_line_is_ignored() -> None:
    state = decided(OrderStatus.CONFIRMED)
    transition = step(state, line("p9", line_count=2, reserved=False))
    assert nothing_changed(transition, state)
    assert transition.ignored == "line outcome after the order was CONFIRMED"


# Rule 2: payment results.


def test_paid_confirms_in_two_events_and_commits_every_line() -> None:
    transition = step(reserved_order(2), PaymentResult("o1", paid=True))
    state = transition.state
    assert state is not None
    assert transition.events == (
        OrderTransitionEvent("o1", 2, OrderStatus.PAID),
        OrderTransitionEvent("o1", 3, OrderStatus.CONFIRMED),
    )
    assert transition.commit == all_lines(2)
    assert (transition.release, transition.refund) == ((), False)
    assert (state.status, state.seq, state.paid) == (OrderStatus.CONFIRMED, 3, True)
    assert {known.status for known in state.lines.values()} == {LineStatus.COMMITTED}


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (RejectReason.PAYMENT_FAILED, RejectReason.PAYMENT_FAILED),
        (RejectReason.PAYMENT_UNAVAILABLE, RejectReason.PAYMENT_UNAVAILABLE),
        (None, RejectReason.PAYMENT_FAILED),
    ],
)
def test_a_failed_payment_cancels_and_releases_every_line(
    reason: RejectReason | None, expected: RejectReason
) -> None:
    transition = step(reserved_order(2), PaymentResult("o1", paid=False, reason=reason))
    assert transition.state is not None
    assert transition.events == (OrderTransitionEvent("o1", 2, OrderStatus.CANCELLED, expected),)
    assert transition.release == all_lines(2)
    # Voided only when the provider may have charged after all (see the test below).
    assert (transition.commit, transition.refund) == (
        (),
        expected is RejectReason.PAYMENT_UNAVAILABLE,
    )
    assert {known.status for known in transition.state.lines.values()} == {LineStatus.RELEASED}


@pytest.mark.parametrize(
    "status", [OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED]
)
def test_a_charge_for_an_order_that_is_gone_is_refunded_once(status: OrderStatus) -> None:
    state = decided(status)
    refunded = step(state, PaymentResult("o1", paid=True))
    assert refunded.refund
    assert refunded.state is not None
    assert (refunded.events, refunded.release, refunded.commit, refunded.ignored) == (
        (),
        (),
        (),
        None,
    )
    assert refunded.state.status is status
    duplicate = step(refunded.state, PaymentResult("o1", paid=True))
    assert nothing_changed(duplicate, refunded.state)
    assert duplicate.ignored == "duplicate payment result"


def test_a_charge_before_the_order_is_reserved_is_refunded() -> None:
    assembling = run(line("p1", line_count=2))
    assert step(assembling, PaymentResult("o1", paid=True)).refund
    unknown = step(None, PaymentResult("o1", paid=True))
    assert unknown == Transition(None, refund=True)


def test_a_duplicate_or_late_result_for_a_confirmed_order_is_ignored() -> None:
    confirmed = decided(OrderStatus.CONFIRMED)
    paid_again = step(confirmed, PaymentResult("o1", paid=True))
    assert nothing_changed(paid_again, confirmed)
    assert not paid_again.refund
    failed_late = step(confirmed, PaymentResult("o1", paid=False))
    assert nothing_changed(failed_late, confirmed)
    assert failed_late.ignored == "payment failure, already CONFIRMED"


def test_a_failed_payment_for_an_order_not_reserved_is_ignored() -> None:
    assert step(None, PaymentResult("o1", paid=False)) == Transition(
        None, ignored="payment failure, unknown order"
    )
    cancelled = decided(OrderStatus.CANCELLED)
    assert nothing_changed(step(cancelled, PaymentResult("o1", paid=False)), cancelled)


# Rule 3: cancel.


def test_cancel_while_reserved_cancels_and_releases_every_line() -> None:
    transition = step(reserved_order(2), Cancel("o1"))
    assert transition.state is not None
    assert transition.events == (
        OrderTransitionEvent("o1", 2, OrderStatus.CANCELLED, RejectReason.CANCELLED_BY_USER),
    )
    assert transition.release == all_lines(2)
    assert transition.state.status is OrderStatus.CANCELLED


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (None, "unknown order"),
        (run(line("p1", line_count=2)), "not reserved yet"),
        (decided(OrderStatus.CONFIRMED), "already CONFIRMED"),
        (decided(OrderStatus.CANCELLED), "already CANCELLED"),
        (decided(OrderStatus.EXPIRED), "already EXPIRED"),
        (decided(OrderStatus.REJECTED), "already REJECTED"),
    ],
    ids=["unknown", "assembling", "confirmed", "cancelled", "expired", "rejected"],
)
def test_cancel_or_expire_of_an_order_not_reserved_says_why(
    state: OrderState | None, why: str
) -> None:
    # An order not reserved yet keeps a cancel for later (see the tests below).
    commands = (
        (Expire("o1"),) if state is None or state.status is None else (Cancel("o1"), Expire("o1"))
    )
    for command in commands:
        # Within the TTL: an order still assembling is not due (see the test below).
        transition = step(state, command, now_ms=T0 + TTL - 1)
        assert transition == Transition(state, ignored=why)


@pytest.mark.parametrize("line_count", [1, 2])
def test_a_cancel_before_the_order_is_applied_when_its_lines_arrive(line_count: int) -> None:
    """A shopper who cancels right after ordering: the cancel may overtake the lines."""
    cancel = Cancel("o1", detail="changed my mind")
    pending = step(None, cancel, now_ms=T0 - 5)
    assert pending.state is not None
    assert pending.events == ()
    assert pending.ignored is None
    assert step(pending.state, cancel).ignored == "cancel already pending"
    state = pending.state
    for n in range(1, line_count):
        state = step(state, line(f"p{n}", quantity=n, line_count=line_count)).state
    last = line(f"p{line_count}", quantity=line_count, line_count=line_count)
    transition = step(state, last, now_ms=T0 + 7)
    assert transition.events == (
        OrderTransitionEvent("o1", 1, OrderStatus.RESERVED),
        OrderTransitionEvent(
            "o1", 2, OrderStatus.CANCELLED, RejectReason.CANCELLED_BY_USER, "changed my mind"
        ),
    )
    assert transition.release == all_lines(line_count)
    assert not transition.request_payment
    assert transition.state is not None
    assert transition.state.user_id == "u1"
    assert transition.state.status is OrderStatus.CANCELLED


def test_a_cancel_between_the_lines_of_an_order_is_applied_once_it_assembles() -> None:
    state = step(run(line("p1", line_count=2)), Cancel("o1")).state
    transition = step(state, line("p2", quantity=2, line_count=2))
    assert [event.status for event in transition.events] == [
        OrderStatus.RESERVED,
        OrderStatus.CANCELLED,
    ]
    assert transition.release == all_lines(2)


def test_a_cancel_whose_order_never_comes_is_forgotten_after_the_ttl() -> None:
    pending = step(None, Cancel("o1"), now_ms=T0).state
    assert pending is not None
    assert step(pending, Expire("o1"), now_ms=T0 + TTL - 1).ignored is not None
    assert step(pending, Expire("o1"), now_ms=T0 + TTL) == Transition(None, forget=True)


def test_a_rejected_line_wins_over_a_pending_cancel() -> None:
    state = step(None, Cancel("o1")).state
    transition = step(state, line(reserved=False, reason=RejectReason.OUT_OF_STOCK))
    assert transition.state is not None
    assert transition.state.status is OrderStatus.REJECTED
    assert transition.state.reason is RejectReason.OUT_OF_STOCK


def test_a_reservation_waiting_for_its_payment_answer_expires_only_past_the_grace() -> None:
    """Our own payment queue is not the shopper's fault: the payment agent answers every
    request, so the timer only catches one lost to a bug, long after the TTL."""
    state = run(line())
    assert state.payment_requested
    grace = 10 * TTL
    assert not is_expired(state, T0 + TTL, TTL, grace)
    assert next_state(state, Expire("o1"), T0 + TTL, TTL, grace).ignored == "not due yet"
    assert is_expired(state, T0 + TTL + grace, TTL, grace)
    expired = next_state(state, Expire("o1"), T0 + TTL + grace, TTL, grace)
    assert expired.state is not None
    assert expired.state.status is OrderStatus.EXPIRED


def test_a_payment_not_made_within_the_ttl_of_its_first_attempt_expires_the_order() -> None:
    state = run(line())
    result = PaymentResult("o1", paid=False, detail="not paid within 30 s", expired=True)
    transition = step(state, result)
    assert transition.state is not None
    assert transition.state.status is OrderStatus.EXPIRED
    assert transition.release == (LineQuantity("p1", 1),)
    assert transition.events[0].reason is None
    assert transition.refund  # the charge may have gone through after all: voided


def test_an_unavailable_payment_is_voided_as_the_order_is_cancelled() -> None:
    unavailable = PaymentResult("o1", paid=False, reason=RejectReason.PAYMENT_UNAVAILABLE)
    transition = step(run(line()), unavailable)
    assert transition.state is not None
    assert transition.state.status is OrderStatus.CANCELLED
    assert transition.refund
    declined = step(run(line()), PaymentResult("o1", paid=False))
    assert not declined.refund  # a declined charge took nothing


def test_an_order_whose_lines_do_not_all_arrive_within_the_ttl_is_rejected_and_released() -> None:
    """A producer that sent fewer lines than its line_count: the lines that came hold
    stock, and nothing else would ever release it."""
    state = run(line("p1", quantity=2, line_count=3), line("p2", line_count=3, reserved=False))
    assert state.status is None
    assert not is_expired(state, T0 + TTL - 1, TTL)
    assert is_expired(state, T0 + TTL, TTL)
    transition = step(state, Expire("o1"), now_ms=T0 + TTL)
    assert transition.state is not None
    assert (transition.state.status, transition.state.reason) == (
        OrderStatus.REJECTED,
        RejectReason.INVALID,
    )
    assert transition.state.detail == f"only 2 of its 3 lines arrived within {TTL} ms"
    assert transition.release == (LineQuantity("p1", 2),)  # the rejected line held nothing
    [event] = transition.events
    assert (event.seq, event.status) == (1, OrderStatus.REJECTED)
    # The missing line, should it come after all, is released as it arrives.
    late = step(transition.state, line("p3", line_count=3))
    assert late.release == (LineQuantity("p3", 1),)


# Rule 4: expiry.


def test_expire_when_the_ttl_has_passed_releases_every_line() -> None:
    state = reserved_order(2)
    early = step(state, Expire("o1"), now_ms=T0 + TTL - 1)
    assert nothing_changed(early, state)
    assert early.ignored == "not due yet"
    due = step(state, Expire("o1"), now_ms=T0 + TTL)
    assert due.state is not None
    assert due.events == (
        OrderTransitionEvent("o1", 2, OrderStatus.EXPIRED, None, f"not paid within {TTL} ms"),
    )
    assert due.release == all_lines(2)


def test_is_expired_only_for_an_unpaid_or_incomplete_order_past_its_ttl() -> None:
    reserved = reserved_order(1)
    assert not is_expired(reserved, T0 + TTL - 1, TTL)
    assert is_expired(reserved, T0 + TTL, TTL)
    assert not is_expired(decided(OrderStatus.CONFIRMED), T0 + 10 * TTL, TTL)
    assembling = run(line("p1", line_count=2))
    assert not is_expired(assembling, T0 + TTL - 1, TTL)
    assert is_expired(assembling, T0 + TTL, TTL)
    # A state stored before the first line's time was kept: never expired by guess.
    assert not is_expired(assembling.model_copy(update={"first_line_at_ms": None}), T0 * 9, TTL)


def test_an_order_missing_lines_waits_the_lines_wait_and_a_lone_cancel_the_ttl() -> None:
    wait = TTL // 10
    assembling = run(line("p1", line_count=2))
    assert not is_expired(assembling, T0 + wait - 1, TTL, lines_wait_ms=wait)
    assert is_expired(assembling, T0 + wait, TTL, lines_wait_ms=wait)
    early = next_state(assembling, Expire("o1"), T0 + wait - 1, TTL, lines_wait_ms=wait)
    assert nothing_changed(early, assembling)
    due = next_state(assembling, Expire("o1"), T0 + wait, TTL, lines_wait_ms=wait)
    assert [(e.status, e.reason) for e in due.events] == [
        (OrderStatus.REJECTED, RejectReason.INVALID)
    ]
    assert due.events[0].detail == f"only 1 of its 2 lines arrived within {wait} ms"
    assert [line.product_id for line in due.release] == ["p1"]
    # A cancel kept for an order not seen yet is no order missing lines: it waits the TTL.
    waiting_cancel = step(None, Cancel("o1")).state
    assert waiting_cancel is not None
    assert not is_expired(waiting_cancel, T0 + wait, TTL, lines_wait_ms=wait)
    assert is_expired(waiting_cancel, T0 + TTL, TTL, lines_wait_ms=wait)


# Rule 5 and the table: forward only, stored as JSON.


def test_the_state_survives_json_with_its_lines_in_arrival_order() -> None:
    state = run(
        line("z", line_count=3), line("a", line_count=3, reserved=False), line("m", line_count=3)
    )
    restored = OrderState.model_validate_json(state.model_dump_json())
    assert restored == state
    assert list(restored.lines) == ["z", "a", "m"]
    assert restored.status is OrderStatus.REJECTED


def test_an_input_for_another_order_is_a_bug() -> None:
    with pytest.raises(ValueError, match="not for order 'o1'"):
        next_state(reserved_order(1), Cancel("o2"), T0, TTL)


# The property: random interleavings of every input over many orders.

# Every history an order may announce; a status never goes back and nothing follows a terminal.
HISTORIES = {
    (),
    (OrderStatus.REJECTED,),
    (OrderStatus.RESERVED, OrderStatus.PAID, OrderStatus.CONFIRMED),
    (OrderStatus.RESERVED, OrderStatus.CANCELLED),
    (OrderStatus.RESERVED, OrderStatus.EXPIRED),
    (OrderStatus.RESERVED, OrderStatus.CONFIRMED),  # an operator's override
}
RANK = {OrderStatus.RESERVED: 1, OrderStatus.PAID: 2} | {
    status: 3 for status in OrderStatus if status.is_terminal
}


def random_order_inputs(rng: random.Random, order_id: str) -> tuple[list[OrderInput], bool]:
    """Return one order's inputs, duplicates included, and whether all its lines are among them."""
    line_count = rng.randint(1, 3)
    products = [f"p{n}" for n in range(line_count)]
    if rng.random() < 0.1:
        products.append(f"p{line_count}")  # one line more than the order says
    if rng.random() < 0.05:
        products.pop(rng.randrange(len(products)))  # a line that never comes
    inputs: list[OrderInput] = []
    largest_count = 0
    for product in products:
        reserved = rng.random() < 0.85
        count = line_count + 1 if rng.random() < 0.03 else line_count  # a line that disagrees
        largest_count = max(largest_count, count)
        reason = (
            None
            if reserved
            else rng.choice([RejectReason.OUT_OF_STOCK, RejectReason.LIMIT_EXCEEDED])
        )
        currency = "USD" if rng.random() < 0.03 else "EUR"  # now and then: mixed currencies
        price = Decimal(rng.randint(0, 9999)) / 100
        outcome = LineOutcome(
            order_id,
            "u",
            product,
            rng.randint(1, 5),
            count,
            reserved,
            reason,
            None,
            price,
            currency,
        )
        inputs += [outcome] * rng.randint(1, 2)
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        paid = rng.random() < 0.7
        reason = (
            None
            if paid
            else rng.choice([RejectReason.PAYMENT_FAILED, RejectReason.PAYMENT_UNAVAILABLE])
        )
        inputs += [PaymentResult(order_id, paid, reason)] * rng.randint(1, 2)
    inputs += [Cancel(order_id)] * rng.choice([0, 0, 1, 2])
    inputs += [Expire(order_id)] * rng.choice([0, 0, 1, 2])
    status = rng.choice([OrderStatus.CONFIRMED, OrderStatus.CANCELLED])
    inputs += [Override(order_id, status, "operator")] * rng.choice([0, 0, 0, 1, 2])
    # Whichever line comes first fixes the order's line_count: with this many lines, it is decided.
    return inputs, len(products) >= largest_count


def test_random_interleavings_keep_every_invariant() -> None:
    rng = random.Random(20240607)
    commands: list[OrderInput] = []
    complete: set[str] = set()
    for n in range(400):
        inputs, all_lines_sent = random_order_inputs(rng, f"o{n}")
        commands += inputs
        if all_lines_sent:
            complete.add(f"o{n}")
    rng.shuffle(commands)

    states: dict[str, OrderState] = {}
    events: defaultdict[str, list[OrderTransitionEvent]] = defaultdict(list)
    held: dict[tuple[str, str], int] = {}  # (order, product) -> quantity the stock agent reserved
    moved: Counter[tuple[str, str, str]] = Counter()  # (order, product, "release" | "commit")
    refunds: Counter[str] = Counter()
    seen: Counter[str] = Counter()

    def apply(command: OrderInput, now_ms: int) -> None:
        before = states.get(command.order_id)
        if isinstance(command, LineOutcome) and command.reserved:
            held[command.order_id, command.product_id] = command.quantity
        transition = step(before, command, now_ms)
        after = transition.state
        seen[type(command).__name__ + (" ignored" if transition.ignored else "")] += 1
        if transition.ignored:
            assert nothing_changed(transition, before)
        if transition.forget:  # a cancel whose order never came, past the TTL
            assert before is not None
            assert before.status is None
            assert not before.lines
            del states[command.order_id]
            return
        if before is not None:
            assert after is not None
            assert after.seq == before.seq + len(transition.events)
            if before.status is not None and before.status.is_terminal:
                assert after.status is before.status
                assert (transition.events, transition.commit) == ((), ())
            ranks = [RANK.get(before.status, 0) if before.status else 0]
            ranks += [RANK[event.status] for event in transition.events]
            assert ranks == sorted(set(ranks)), (before, transition)
        if OrderStatus.EXPIRED in [event.status for event in transition.events]:
            assert before is not None
            assert before.reserved_at_ms is not None
            assert now_ms - before.reserved_at_ms >= TTL
        if transition.request_payment:
            assert [event.status for event in transition.events] == [OrderStatus.RESERVED]
        if transition.refund:
            assert isinstance(command, PaymentResult)
            voided = command.expired or command.reason is RejectReason.PAYMENT_UNAVAILABLE
            if not command.paid:  # a charge that may have gone through: voided
                assert voided
                assert before is not None
                assert before.status is OrderStatus.RESERVED
            else:
                assert before is None or before.status is not OrderStatus.RESERVED
            # An unknown order has no state to remember a refund in: the provider's
            # refund by order id is what makes a repeated one harmless.
            if before is not None:
                refunds[command.order_id] += 1
        if transition.request_payment:
            assert after is not None
            assert after.total() is not None  # every line priced, in one currency
        if isinstance(command, PaymentResult) and command.paid:
            # A charge is always accounted for: sold, refunded, or already one of those.
            confirmed = OrderStatus.CONFIRMED in [event.status for event in transition.events]
            assert confirmed or transition.refund or (before is not None and before.paid)
        for kind, lines in (("release", transition.release), ("commit", transition.commit)):
            for product_id, quantity in lines:
                assert held[command.order_id, product_id] == quantity
                moved[command.order_id, product_id, kind] += 1
        events[command.order_id] += transition.events
        if after is not None:
            states[command.order_id] = after

    now_ms = T0
    for command in commands:
        now_ms += rng.randint(0, 40)
        apply(command, now_ms)
    # The timer's last sweep: whatever is still reserved, expires.
    for order_id, state in list(states.items()):
        if is_expired(state, now_ms + TTL, TTL):
            apply(Expire(order_id), now_ms + TTL)

    for order_id, state in states.items():
        history = events[order_id]
        assert [event.seq for event in history] == list(range(1, len(history) + 1))
        assert tuple(event.status for event in history) in HISTORIES, (order_id, history)
        assert state.status is (history[-1].status if history else None)
        # Complete or not, every order ends: the timer's sweep turns down an order still
        # missing lines a TTL after its first.
        assert state.status is not None
        assert state.status.is_terminal, state
        assert refunds[order_id] <= 1
    for (order_id, product_id), _quantity in held.items():
        released = moved[order_id, product_id, "release"]
        committed = moved[order_id, product_id, "commit"]
        status = states[order_id].status
        if status is not None and status.is_terminal:
            assert released + committed == 1, (order_id, product_id, states[order_id])
        else:
            assert released + committed == 0
        if committed:
            assert status is OrderStatus.CONFIRMED
    # The interleavings reached every outcome, not just the easy ones.
    reached = {state.status for state in states.values()}
    assert reached == {status for status in OrderStatus if status.is_terminal}
    # Orders missing a line for good were turned down too, their reserved lines released.
    incomplete = set(states) - complete
    assert incomplete
    assert any(states[o].detail and "lines arrived within" in states[o].detail for o in incomplete)
    assert sum(refunds.values()) > 0
    assert any(state.extra_lines for state in states.values())
    assert {
        "LineOutcome ignored",
        "PaymentResult ignored",
        "Cancel ignored",
        "Expire ignored",
        "Override",
        "Override ignored",
    } <= set(seen)
    reasons = {state.reason for state in states.values()}
    assert {RejectReason.MIXED_CURRENCIES, RejectReason.ADMIN_OVERRIDE} <= reasons


# Prices, metadata and overrides.


def priced(product_id: str, price: str, quantity: int = 1, currency: str = "EUR") -> LineOutcome:
    return LineOutcome(
        "o1", "u1", product_id, quantity, 2, True, None, None, Decimal(price), currency
    )


def test_the_total_is_the_sum_of_quantity_times_the_price_each_line_was_decided_at() -> None:
    state = run(priced("p1", "19.99", 2), priced("p2", "0.01", 3))
    assert state.status is OrderStatus.RESERVED
    assert state.total() == (Decimal("40.01"), "EUR")


def test_lines_priced_in_different_currencies_reject_the_order_and_release_them() -> None:
    first = step(None, priced("p1", "1.00")).state
    transition = step(first, priced("p2", "1.00", currency="USD"))
    assert transition.state is not None
    assert (transition.state.status, transition.state.reason) == (
        OrderStatus.REJECTED,
        RejectReason.MIXED_CURRENCIES,
    )
    assert transition.state.detail == "its lines are priced in EUR, USD"
    assert set(transition.release) == {LineQuantity("p1", 1), LineQuantity("p2", 1)}
    assert not transition.request_payment


def test_an_unpriced_line_leaves_the_order_without_a_total() -> None:
    state = run(priced("p1", "1.00"), line("p2", line_count=2))
    assert state.status is OrderStatus.RESERVED
    assert state.total() is None


def test_the_first_metadata_an_order_sees_is_kept() -> None:
    notes = {"notes": "leave at the door"}
    with_notes = LineOutcome("o1", "u1", "p1", 1, 2, True, metadata=notes)
    other = LineOutcome("o1", "u1", "p2", 1, 2, True, metadata={"notes": "other"})
    assert run(with_notes, other).metadata == notes
    # A first line without any leaves the order's metadata to the next.
    assert run(line("p2", line_count=2), with_notes).metadata == notes


def test_an_override_confirms_a_reserved_order_commits_its_lines_and_names_the_operator() -> None:
    state = reserved_order()
    transition = step(
        state, Override("o1", OrderStatus.CONFIRMED, "alice", "paid by bank transfer")
    )
    assert transition.state is not None
    assert (transition.state.status, transition.state.reason) == (
        OrderStatus.CONFIRMED,
        RejectReason.ADMIN_OVERRIDE,
    )
    [event] = transition.events
    assert (event.seq, event.status, event.actor, event.detail) == (
        2,
        OrderStatus.CONFIRMED,
        "alice",
        "paid by bank transfer",
    )
    assert transition.commit == all_lines(2)
    assert transition.release == ()
    # A charge that still succeeds afterwards is given back.
    assert step(transition.state, PaymentResult("o1", True)).refund


def test_an_override_cancels_a_reserved_order_and_releases_its_lines() -> None:
    transition = step(reserved_order(), Override("o1", OrderStatus.CANCELLED, "bob"))
    [event] = transition.events
    assert (event.status, event.reason, event.actor) == (
        OrderStatus.CANCELLED,
        RejectReason.ADMIN_OVERRIDE,
        "bob",
    )
    assert transition.release == all_lines(2)


@pytest.mark.parametrize("status", [OrderStatus.CONFIRMED, OrderStatus.CANCELLED])
def test_an_override_of_an_order_not_reserved_changes_nothing(status: OrderStatus) -> None:
    cancelled = step(reserved_order(), Cancel("o1")).state
    transition = step(cancelled, Override("o1", status, "carol"))
    assert nothing_changed(transition, cancelled)
    assert nothing_changed(step(None, Override("o1", status, "carol")), None)
