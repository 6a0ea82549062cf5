"""How the sink folds a batch before writing: latest event per order, snapshot per product."""

from __future__ import annotations

from orderstream.codec import WireOrderEvent, WireStockChange, decode_event, decode_stock_change
from orderstream.domain import OrderStatus, RejectReason
from orderstream.sink.base import LocatedEvent
from orderstream.sink.rows import fold_orders, latest_per_product
from orderstream.topics import OrderEvent, StockChange


def event(order_id: str, seq: int, status: OrderStatus, offset: int) -> LocatedEvent:
    reason = RejectReason.OUT_OF_STOCK if status is OrderStatus.REJECTED else None
    return LocatedEvent(
        wire(
            OrderEvent(
                order_id=order_id,
                seq=seq,
                status=status,
                reason=reason,
                user_id="u",
                product_id="p",
                quantity=1,
                requested_at_ms=1,
                decided_at_ms=2,
            )
        ),
        partition=0,
        offset=offset,
    )


def wire(event: OrderEvent) -> WireOrderEvent:
    """The event as the sink decodes it from Kafka."""
    return decode_event(event.model_dump_json().encode())


def change(product_id: str, version: int, available: int) -> WireStockChange:
    return decode_stock_change(
        StockChange(
            product_id=product_id,
            available=available,
            reserved=10 - available,
            sold=0,
            total_in=10,
            version=version,
            changed_at_ms=1,
        )
        .model_dump_json()
        .encode()
    )


def test_highest_seq_wins_whatever_the_order() -> None:
    later = event("o1", 2, OrderStatus.CONFIRMED, offset=5)
    folded, _ = fold_orders(
        [event("o1", 1, OrderStatus.RESERVED, 4), later, event("o2", 1, OrderStatus.REJECTED, 6)]
    )
    assert [located.event.order_id for located in folded] == ["o1", "o2"]
    assert folded[0] is later
    # A replayed older event after the newer one does not win either.
    assert fold_orders([later, event("o1", 1, OrderStatus.RESERVED, 9)])[0][0] is later


def test_duplicates_keep_the_first_seen() -> None:
    first = event("o1", 1, OrderStatus.RESERVED, offset=1)
    assert fold_orders([first, event("o1", 1, OrderStatus.RESERVED, 2)])[0] == [first]


def test_highest_stock_version_wins() -> None:
    folded = latest_per_product(
        [change("p", 3, 7), change("p", 5, 5), change("p", 4, 6), change("q", 1, 9)]
    )
    assert {(c.product_id, c.version) for c in folded} == {("p", 5), ("q", 1)}
