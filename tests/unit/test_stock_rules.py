"""The stock rules, without Kafka: deciding a line, stock commands, and folding events."""

from __future__ import annotations

import random

import pytest

from orderstream.domain import (
    RECENT_COMMANDS,
    Committed,
    LineRequest,
    LineStatus,
    OrderStatus,
    RejectReason,
    Released,
    Reserved,
    SettleOutcome,
    StockAdded,
    StockEvent,
    StockLevel,
    StockOperation,
    StockSet,
    apply_stock_operation,
    evolve,
    fold_newer,
    reserve_line,
    settle_line,
    stock_command,
)

LIMIT = 10


def line(quantity: int = 1, line_count: int = 1) -> LineRequest:
    return LineRequest(product_id="p1", quantity=quantity, line_count=line_count)


def stocked(available: int) -> StockLevel:
    level = apply_stock_operation(None, StockOperation.SET, available, offset=0)
    assert level is not None
    return level


def figures(level: StockLevel) -> tuple[int, int, int, int]:
    return level.available, level.reserved, level.sold, level.total_in


# reserve_line


def test_reserve_returns_the_event_that_moves_available_to_reserved() -> None:
    before = stocked(5)
    decision, event = reserve_line(before, line(2), LIMIT)
    assert decision.status is OrderStatus.RESERVED
    assert (decision.reason, decision.detail) == (None, None)
    assert event == Reserved(quantity=2, version=before.version + 1)
    after = evolve(before, event)
    assert figures(after) == (3, 2, 0, 5)
    assert after.version == before.version + 1


def test_a_line_of_a_multi_line_order_is_decided_like_any_other() -> None:
    decision, event = reserve_line(stocked(5), line(2, line_count=3), LIMIT)
    assert decision.status is OrderStatus.RESERVED
    assert event == Reserved(quantity=2, version=stocked(5).version + 1)


def test_reserve_exactly_the_last_units() -> None:
    decision, event = reserve_line(stocked(3), line(3), LIMIT)
    assert decision.status is OrderStatus.RESERVED
    assert event is not None
    assert evolve(stocked(3), event).available == 0


@pytest.mark.parametrize(
    ("level", "request_line", "reason"),
    [
        pytest.param(stocked(2), line(3), RejectReason.OUT_OF_STOCK, id="out-of-stock"),
        pytest.param(None, line(), RejectReason.UNKNOWN_PRODUCT, id="unknown-product"),
        pytest.param(stocked(100), line(LIMIT + 1), RejectReason.LIMIT_EXCEEDED, id="over-limit"),
    ],
)
def test_a_rejection_carries_its_reason_and_no_event(
    level: StockLevel | None, request_line: LineRequest, reason: RejectReason
) -> None:
    decision, event = reserve_line(level, request_line, LIMIT)
    assert decision.status is OrderStatus.REJECTED
    assert decision.reason is reason
    assert event is None
    if reason is not RejectReason.OUT_OF_STOCK:
        assert decision.detail  # the producer is told what to change


def test_never_oversells_under_any_sequence_of_events() -> None:
    """Random reservations, releases, commits and restocks: stock stays conserved."""
    rng = random.Random(7)
    level = stocked(50)
    outstanding: list[int] = []  # quantities reserved and not yet released or committed
    sold = 0
    for offset in range(1, 3001):
        roll = rng.random()
        event: StockEvent | None
        if roll < 0.7:
            quantity = rng.randint(1, 4)
            decision, event = reserve_line(level, line(quantity), LIMIT)
            if event is None:
                assert decision.reason is RejectReason.OUT_OF_STOCK
                assert quantity > level.available
                continue
            assert quantity <= level.available
            outstanding.append(quantity)
        elif roll < 0.8 and outstanding:
            event = Released(outstanding.pop(rng.randrange(len(outstanding))), level.version + 1)
        elif roll < 0.9 and outstanding:
            quantity = outstanding.pop(rng.randrange(len(outstanding)))
            event = Committed(quantity, level.version + 1)
            sold += quantity
        else:
            operation = rng.choice([StockOperation.SET, StockOperation.ADD])
            event = stock_command(level, operation, rng.randint(1, 5), offset)
            assert event is not None  # every offset is new
        level = evolve(level, event)
        assert min(figures(level)) >= 0
        assert level.is_conserved
        assert level.reserved == sum(outstanding)
        assert level.sold == sold
    assert sold > 0  # the walk went through every kind of event


# evolve


START = StockLevel(available=10, reserved=4, sold=1, total_in=15, version=3, last_command_offset=7)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(Reserved(3, 4), (7, 7, 1, 15), id="reserved"),
        pytest.param(Released(3, 4), (13, 1, 1, 15), id="released"),
        pytest.param(Committed(3, 4), (10, 1, 4, 15), id="committed"),
        pytest.param(StockSet(2, 4, offset=9), (2, 4, 1, 7), id="set-lower"),
        pytest.param(StockSet(20, 4, offset=9), (20, 4, 1, 25), id="set-higher"),
        pytest.param(StockAdded(5, 4, offset=9), (15, 4, 1, 20), id="added"),
    ],
)
def test_evolve_applies_each_kind_of_event_and_conserves_stock(
    event: StockEvent, expected: tuple[int, int, int, int]
) -> None:
    after = evolve(START, event)
    assert figures(after) == expected
    assert after.is_conserved
    assert after.version == event.version


def test_only_stock_commands_move_the_last_command_offset() -> None:
    for event in (Reserved(1, 4), Released(1, 4), Committed(1, 4)):
        assert evolve(START, event).last_command_offset == START.last_command_offset
    assert evolve(START, StockSet(1, 4, offset=12)).last_command_offset == 12
    assert evolve(START, StockAdded(1, 4, offset=13)).last_command_offset == 13


def test_evolve_of_a_product_with_no_stock_starts_from_zero() -> None:
    level = evolve(None, StockAdded(5, 1, offset=0))
    assert figures(level) == (5, 0, 0, 5)
    assert (level.version, level.last_command_offset) == (1, 0)


@pytest.mark.parametrize(
    ("level", "event"),
    [
        pytest.param(START, Reserved(11, 4), id="reserve-more-than-available"),
        pytest.param(START, Released(5, 4), id="release-more-than-reserved"),
        pytest.param(START, Committed(5, 4), id="commit-more-than-reserved"),
        pytest.param(None, Reserved(1, 1), id="reserve-without-stock"),
    ],
)
def test_an_event_that_would_make_a_figure_negative_raises(
    level: StockLevel | None, event: StockEvent
) -> None:
    with pytest.raises(ValueError, match="cannot apply"):
        evolve(level, event)


# stock_command


def test_set_and_add_are_numbered_by_version_and_offset() -> None:
    created = stock_command(None, StockOperation.SET, 100, offset=4)
    assert created == StockSet(100, version=1, offset=4)
    level = evolve(None, created)
    assert (level.available, level.total_in, level.last_command_offset) == (100, 100, 4)
    added = stock_command(level, StockOperation.ADD, 5, offset=5)
    assert added == StockAdded(5, version=2, offset=5)


def test_set_after_reservations_keeps_them_and_counts_the_difference_in() -> None:
    _, reservation = reserve_line(stocked(10), line(4), LIMIT)
    assert reservation is not None
    restocked = apply_stock_operation(
        evolve(stocked(10), reservation), StockOperation.SET, 20, offset=1
    )
    assert restocked is not None
    assert figures(restocked) == (20, 4, 0, 24)


@pytest.mark.parametrize("operation", [StockOperation.SET, StockOperation.ADD])
def test_a_redelivered_command_is_applied_once(operation: StockOperation) -> None:
    once = apply_stock_operation(stocked(10), operation, 5, offset=7)
    assert once is not None
    assert stock_command(once, operation, 5, offset=7) is None
    assert stock_command(once, operation, 5, offset=3) is None
    assert apply_stock_operation(once, operation, 5, offset=7) is None


def test_a_command_that_lands_again_at_a_later_offset_is_applied_once_by_its_id() -> None:
    add = StockOperation.ADD
    first = stock_command(stocked(10), add, 5, offset=7, command_id="r-1")
    assert first is not None
    once = evolve(stocked(10), first)
    assert once.recent_commands == ("r-1",)
    assert stock_command(once, add, 5, offset=9, command_id="r-1") is None  # forwarded again
    # Another id, or none, at a later offset applies: an operator's second restock.
    assert stock_command(once, add, 5, offset=9, command_id="r-2") is not None
    assert stock_command(once, add, 5, offset=9) is not None
    # Orders do not touch the ids; they survive the snapshot's JSON (a restore).
    reserved = evolve(once, Reserved(1, once.version + 1))
    restored = StockLevel.model_validate_json(reserved.model_dump_json())
    assert restored.recent_commands == ("r-1",)
    assert stock_command(restored, add, 5, offset=11, command_id="r-1") is None


def test_a_product_remembers_its_last_recent_commands_ids() -> None:
    level = stocked(0)
    for n in range(RECENT_COMMANDS + 3):
        event = stock_command(level, StockOperation.ADD, 1, offset=n + 1, command_id=f"c-{n}")
        assert event is not None
        level = evolve(level, event)
    assert level.recent_commands == tuple(f"c-{n}" for n in range(3, RECENT_COMMANDS + 3))
    assert level.total_in == RECENT_COMMANDS + 3


@pytest.mark.parametrize(
    ("operation", "quantity"), [(StockOperation.SET, -1), (StockOperation.ADD, 0)]
)
def test_impossible_quantities_are_refused(operation: StockOperation, quantity: int) -> None:
    with pytest.raises(ValueError, match="stock"):
        stock_command(stocked(1), operation, quantity, offset=1)


@pytest.mark.parametrize("operation", [StockOperation.COMMIT, StockOperation.RELEASE])
def test_stock_command_refuses_an_operation_that_settles_a_line(operation: StockOperation) -> None:
    with pytest.raises(ValueError, match="settle_line"):
        stock_command(stocked(1), operation, 1, offset=1)


# settle_line

RESERVED_2 = evolve(stocked(10), Reserved(2, 2))


@pytest.mark.parametrize(
    ("operation", "event", "expected"),
    [
        pytest.param(StockOperation.COMMIT, Committed(2, 3), (8, 0, 2, 10), id="commit"),
        pytest.param(StockOperation.RELEASE, Released(2, 3), (10, 0, 0, 10), id="release"),
    ],
)
def test_settling_a_reserved_line_moves_its_quantity_with_the_next_version(
    operation: StockOperation, event: StockEvent, expected: tuple[int, int, int, int]
) -> None:
    outcome, settled = settle_line(RESERVED_2, operation, LineStatus.RESERVED, 2)
    assert (outcome, settled) == (SettleOutcome.APPLIED, event)
    assert figures(evolve(RESERVED_2, event)) == expected


@pytest.mark.parametrize(
    ("operation", "line", "outcome"),
    [
        pytest.param(StockOperation.COMMIT, None, SettleOutcome.NOT_RESERVED, id="commit-no-line"),
        pytest.param(
            StockOperation.RELEASE, None, SettleOutcome.NOT_RESERVED, id="release-no-line"
        ),
        pytest.param(
            StockOperation.COMMIT, LineStatus.REJECTED, SettleOutcome.NOT_RESERVED, id="rejected"
        ),
        pytest.param(
            StockOperation.COMMIT,
            LineStatus.COMMITTED,
            SettleOutcome.ALREADY_APPLIED,
            id="commit-twice",
        ),
        pytest.param(
            StockOperation.RELEASE,
            LineStatus.RELEASED,
            SettleOutcome.ALREADY_APPLIED,
            id="release-twice",
        ),
        pytest.param(
            StockOperation.RELEASE,
            LineStatus.COMMITTED,
            SettleOutcome.CONFLICTING,
            id="release-sold",
        ),
        pytest.param(
            StockOperation.COMMIT,
            LineStatus.RELEASED,
            SettleOutcome.CONFLICTING,
            id="commit-released",
        ),
    ],
)
def test_a_line_not_reserved_is_never_settled(
    operation: StockOperation, line: LineStatus | None, outcome: SettleOutcome
) -> None:
    assert settle_line(RESERVED_2, operation, line, 2) == (outcome, None)


@pytest.mark.parametrize("operation", [StockOperation.SET, StockOperation.ADD])
def test_settle_line_refuses_a_stock_level_command(operation: StockOperation) -> None:
    with pytest.raises(ValueError, match="does not settle"):
        settle_line(RESERVED_2, operation, LineStatus.RESERVED, 2)


# fold_newer


def test_fold_newer_applies_only_newer_events_in_version_order() -> None:
    level = StockLevel(available=0, reserved=2, total_in=2, version=2)
    # Applied in list order, v4 would reserve stock that only v3's release frees.
    events: list[StockEvent] = [
        Reserved(2, 4),
        Reserved(9, 1),  # older than the level: already in it
        Released(2, 3),
        Committed(2, 2),  # as old as the level: already in it
        Reserved(2, 4),  # the same event twice counts once
        StockAdded(1, 5, offset=0),
    ]
    for seed in range(5):
        shuffled = random.Random(seed).sample(events, len(events))
        folded, applied = fold_newer(level, shuffled)
        assert applied == 3
        assert figures(folded) == (1, 2, 0, 3)
        assert folded.version == 5


def test_fold_newer_of_nothing_newer_returns_the_level() -> None:
    level = stocked(3)
    assert fold_newer(level, [Reserved(1, level.version)]) == (level, 0)


def test_a_new_sale_starts_at_its_set_and_only_a_set_starts_one() -> None:
    level = evolve(None, StockSet(10, 1, offset=0))
    assert level.sale_started == 0
    reserved = evolve(level, Reserved(2, 2))
    event = stock_command(reserved, StockOperation.SET, 5, 1, new_sale=True)
    assert isinstance(event, StockSet)
    new_sale = evolve(reserved, event)
    assert (new_sale.sale_started, new_sale.available, new_sale.reserved) == (3, 5, 2)
    assert not new_sale.in_current_sale(2)  # the line reserved before it
    assert new_sale.in_current_sale(4)
    # Later changes keep the sale; a plain set does not begin another.
    assert evolve(new_sale, StockAdded(1, 4, offset=2)).sale_started == 3
    again = stock_command(new_sale, StockOperation.SET, 5, 3)
    assert again is not None
    assert evolve(new_sale, again).sale_started == 3
    with pytest.raises(ValueError, match="begins with a stock set"):
        stock_command(new_sale, StockOperation.ADD, 5, 4, new_sale=True)
