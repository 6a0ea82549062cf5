"""The stock rules, without Kafka."""

from __future__ import annotations

import random

import pytest

from orderstream.domain import (
    LineRequest,
    OrderStatus,
    RejectReason,
    StockLevel,
    StockOperation,
    apply_stock_operation,
    reserve_line,
)

LIMIT = 10


def line(quantity: int = 1, line_count: int = 1) -> LineRequest:
    return LineRequest(product_id="p1", quantity=quantity, line_count=line_count)


def stocked(available: int) -> StockLevel:
    level = apply_stock_operation(None, StockOperation.SET, available, offset=0)
    assert level is not None
    return level


def test_reserve_moves_quantity_from_available_to_reserved() -> None:
    decision, level = reserve_line(stocked(5), line(2), LIMIT)
    assert decision.status is OrderStatus.RESERVED
    assert decision.reason is None
    assert level is not None
    assert (level.available, level.reserved, level.sold, level.total_in) == (3, 2, 0, 5)
    assert level.is_conserved


def test_reserve_bumps_the_version() -> None:
    before = stocked(5)
    _, after = reserve_line(before, line(), LIMIT)
    assert after is not None
    assert after.version == before.version + 1


def test_reserve_exactly_the_last_units() -> None:
    decision, level = reserve_line(stocked(3), line(3), LIMIT)
    assert decision.status is OrderStatus.RESERVED
    assert level is not None
    assert level.available == 0


def test_out_of_stock_leaves_stock_unchanged() -> None:
    decision, level = reserve_line(stocked(2), line(3), LIMIT)
    assert decision.status is OrderStatus.REJECTED
    assert decision.reason is RejectReason.OUT_OF_STOCK
    assert level is None


def test_unknown_product_is_rejected_not_lost() -> None:
    decision, level = reserve_line(None, line(), LIMIT)
    assert decision.reason is RejectReason.UNKNOWN_PRODUCT
    assert level is None


def test_quantity_above_the_line_limit_is_rejected() -> None:
    decision, level = reserve_line(stocked(100), line(LIMIT + 1), LIMIT)
    assert decision.reason is RejectReason.LIMIT_EXCEEDED
    assert level is None


def test_multi_line_order_is_rejected_as_invalid_with_a_reason() -> None:
    decision, level = reserve_line(stocked(100), line(1, line_count=2), LIMIT)
    assert decision.reason is RejectReason.INVALID
    assert decision.detail
    assert level is None


def test_never_oversells_under_any_sequence_of_requests() -> None:
    rng = random.Random(7)
    level = stocked(50)
    reserved = 0
    for _ in range(2000):
        quantity = rng.randint(1, 4)
        decision, new_level = reserve_line(level, line(quantity), LIMIT)
        if new_level is not None:
            level = new_level
            reserved += quantity
            assert decision.status is OrderStatus.RESERVED
        assert level.available >= 0
        assert level.is_conserved
    assert reserved == level.reserved <= 50
    assert level.available < 4  # demand exceeded stock, so little is left


def test_set_creates_stock_and_counts_it_in() -> None:
    level = apply_stock_operation(None, StockOperation.SET, 100, offset=4)
    assert level is not None
    assert (level.available, level.total_in, level.last_command_offset) == (100, 100, 4)


def test_set_after_reservations_keeps_stock_conserved() -> None:
    _, level = reserve_line(stocked(10), line(4), LIMIT)
    assert level is not None
    restocked = apply_stock_operation(level, StockOperation.SET, 20, offset=1)
    assert restocked is not None
    assert (restocked.available, restocked.reserved, restocked.total_in) == (20, 4, 24)
    assert restocked.is_conserved


def test_set_lower_removes_stock() -> None:
    lowered = apply_stock_operation(stocked(10), StockOperation.SET, 3, offset=1)
    assert lowered is not None
    assert (lowered.available, lowered.total_in) == (3, 3)


def test_add_increases_available_and_total() -> None:
    level = apply_stock_operation(stocked(10), StockOperation.ADD, 5, offset=1)
    assert level is not None
    assert (level.available, level.total_in) == (15, 15)


def test_add_to_unknown_product_creates_it() -> None:
    level = apply_stock_operation(None, StockOperation.ADD, 5, offset=0)
    assert level is not None
    assert level.available == 5


def test_redelivered_command_is_applied_once() -> None:
    once = apply_stock_operation(stocked(10), StockOperation.ADD, 5, offset=7)
    assert once is not None
    assert apply_stock_operation(once, StockOperation.ADD, 5, offset=7) is None
    assert apply_stock_operation(once, StockOperation.ADD, 5, offset=3) is None


@pytest.mark.parametrize(
    ("operation", "quantity"), [(StockOperation.SET, -1), (StockOperation.ADD, 0)]
)
def test_impossible_quantities_are_refused(operation: StockOperation, quantity: int) -> None:
    with pytest.raises(ValueError, match="stock"):
        apply_stock_operation(stocked(1), operation, quantity, offset=1)
